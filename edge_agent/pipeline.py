"""One camera's way through: detect -> track -> recognise (due tracks) -> decide -> anonymize.

Evidence per track lives in ``evidence.py``, who may be shown in ``decide.py``; this module
only wires them: it embeds the due tracks, weighs each embedding, and ends every track on a
scene cut or a source reconnect.

``FramePipeline.filter`` may raise; ``FailClosed`` is the only thing that hands frames out, and
it turns any exception or overrun into a fully redacted frame. A ``FilteredFrame`` is the
only type the frame buffer and the API accept, and only ``FailClosed`` makes one.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from edge_agent.anonymize.base import Anonymizer
from edge_agent.audit import AuditSink, NoAudit
from edge_agent.anonymize.classical import redact_frame
from edge_agent.config import Config
from edge_agent.decide import EvidencePolicy
from edge_agent.evidence import face_quality
from edge_agent.gallery import GalleryProvider
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.loader import Detector
from edge_agent.scene import SceneCut
from edge_agent.stats import CameraStats
from edge_agent.tracker import IouTracker, Track

log = logging.getLogger(__name__)


class FramePipeline:
    """Per-camera state (tracks, votes) around shared, thread-safe models."""

    def __init__(
        self,
        config: Config,
        detector: Detector,
        embedder: Optional[ArcFaceEmbedder],
        gallery: Optional[GalleryProvider],
        anonymizer: Anonymizer,
        fallback: Anonymizer,
        stats: CameraStats,
        still: bool = False,
        audit: Optional[AuditSink] = None,
    ) -> None:
        self.audit = audit or NoAudit()
        self.detector = detector
        self.embedder = embedder if config.recognition.enabled else None
        self.gallery = gallery
        self.anonymizer = anonymizer
        self.fallback = fallback
        self.stats = stats
        recognition = config.recognition
        self.max_null_similarity = recognition.max_null_similarity
        self.policy = EvidencePolicy(recognition, config.tracker.reverify_iou, still=still)
        self.tracker = IouTracker(config.tracker.iou_match, config.tracker.hold_frames)
        self.max_frame_pixels = config.pipeline.max_frame_pixels
        self.scene = SceneCut(config.tracker.scene_cut)
        self._gallery = None
        self._source_changed = threading.Event()
        self._ahead: Optional[ThreadPoolExecutor] = None

    def detect_ahead(self, frame: np.ndarray) -> Future:
        """Start detecting ``frame`` on the pipeline's own detection thread, to be handed to
        :meth:`filter` with that frame. A file's next frame is detected while this one is
        recognised and anonymized: on 2 cores the detector and the anonymizer each keep a core
        busy instead of taking turns. Detections depend on the raw frame only, so the result is
        the same as detecting inside :meth:`filter`; an exception surfaces there (fail closed)."""
        if self._ahead is None:
            self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"detect-{self.stats.name}")
        return self._ahead.submit(self._timed_detect, frame)

    def _timed_detect(self, frame: np.ndarray) -> list:
        with self.stats.timed("detect"):
            return self.detector.detect(frame)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.shutdown(wait=False, cancel_futures=True)

    def source_changed(self) -> None:
        """The source reconnected (called from the capture side): the next frame may show another
        scene, so it starts without tracks."""
        self._source_changed.set()

    def _scene_reset(self, frame: np.ndarray) -> bool:
        cut = self.scene.is_cut(frame)
        if self._source_changed.is_set():
            self._source_changed.clear()
            cut = True
        if cut:
            self.tracker.reset()
            self.stats.add("scene_resets")
        return cut

    def filter(self, frame: np.ndarray, detections: Optional[Future] = None) -> np.ndarray:
        """Anonymize ``frame`` in place and return it; raises if any stage fails. ``detections``:
        the frame's :meth:`detect_ahead`, when started before."""
        stats = self.stats
        if frame.shape[0] * frame.shape[1] > self.max_frame_pixels:  # FailClosed redacts it whole
            raise ValueError(f"frame {frame.shape[1]}x{frame.shape[0]} over pipeline.max_frame_pixels")
        if detections is None:
            faces = self._timed_detect(frame)
        else:
            with stats.timed("detect_wait"):
                faces = detections.result()
        with stats.timed("track"):
            self._scene_reset(frame)
            seen, coasting = self.tracker.update(faces)
            for ended in self.tracker.ended:
                self.anonymizer.forget(ended.seed)
        stats.add("faces_seen", len(faces))
        with stats.timed("recognise"):
            self._recognise(frame, seen)
        hide: list[Track] = []
        shown: list[Track] = []
        for track in seen:
            (hide if track.shown_as is None else shown).append(track)
        stats.add("faces_shown", len(shown))
        now = time.time()  # the audit trail: who is let through, where, when; never a pixel
        for track in shown:  # score: the pooled cosine to the person shown
            self.audit.shown(track.shown_as, stats.name, track.best_score, now)
        # A face the detector lost for a moment stays hidden where it was last seen; it is not
        # verified, so even a shown one is hidden (and re-verified when it comes back).
        for track in coasting:
            self.policy.restart(track, "coasting")
        hide.extend(coasting)
        with stats.timed("anonymize"):
            saved = self._protect(frame, shown, hide)
            self._anonymize(frame, hide)
            for (x1, y1, x2, y2), pixels in saved:
                frame[y1:y2, x1:x2] = pixels
        return frame

    @staticmethod
    def _protect(frame: np.ndarray, shown: list[Track], hide: list[Track]) -> list:
        """Copies of registered faces' boxes that only the *margin* of a hidden face's region
        reaches (hair, ears): restored after anonymizing. Where a hidden face's own box overlaps
        a registered face, hiding wins and nothing is restored."""
        h, w = frame.shape[:2]
        saved = []
        for track in shown:
            box = np.concatenate([np.floor(track.face.box[:2]), np.ceil(track.face.box[2:])])
            x1, y1, x2, y2 = (int(v) for v in np.clip(box, 0, [w, h, w, h]))
            overlaps = any(
                t.face.box[0] < x2 and t.face.box[2] > x1 and t.face.box[1] < y2 and t.face.box[3] > y1 for t in hide
            )
            if not overlaps and x2 > x1 and y2 > y1:
                saved.append(((x1, y1, x2, y2), frame[y1:y2, x1:x2].copy()))
        return saved

    def _recognise(self, frame: np.ndarray, tracks: list[Track]) -> None:
        if self.embedder is None or self.gallery is None:
            return  # nobody can be verified, so nobody is shown
        gallery = self.gallery.current()
        if gallery is not self._gallery:  # the registry changed: nobody keeps evidence gathered against the old one
            for track in self.tracker.tracks:
                self.policy.restart(track, "registry")
            self._gallery = gallery
        for track in tracks:
            self.policy.before_embedding(track)
        due = [t for t in tracks if self.policy.recognisable(t) and self.policy.due(t)]
        embedded = {id(t) for t in due}
        for track in tracks:
            if id(track) not in embedded:
                self.policy.not_embedded(track)
        if not due:
            return
        embeddings = self.embedder.embed(frame, [t.face for t in due])
        self.stats.add("recognitions", len(due))
        null = self.embedder.null_similarity(embeddings)
        for track, embedding, blank in zip(due, embeddings, null):
            weight = face_quality(track.face, frame, float(blank), self.max_null_similarity)
            self.policy.observe(track, embedding, weight, gallery.person_ids, gallery.person_scores)

    def _anonymize(self, frame: np.ndarray, tracks: list[Track]) -> None:
        self.anonymizer.begin_frame([t.face for t in tracks], frame)
        for track in sorted(tracks, key=lambda t: self.anonymizer.priority(t.seed, t.face)):
            try:
                self.anonymizer.anonymize(frame, track.face, track.seed)
            except Exception as exc:  # fall back for this face; the fallback itself must not fail
                if not isinstance(exc, TimeoutError):  # a spent time budget is routine, not an error
                    log.warning("anonymizer failed on a face (%s); using the fallback", type(exc).__name__)
                self.stats.add("face_fallbacks")
                self.fallback.anonymize(frame, track.face, track.seed)
            self.stats.add("faces_anonymized")
        try:
            self.anonymizer.end_frame(frame)
        except Exception as exc:  # the frame's checks could not be made: every hidden face gets the fallback
            log.warning("anonymizer checks failed (%s); every hidden face gets the fallback", type(exc).__name__)
            for track in tracks:
                self.fallback.anonymize(frame, track.face, track.seed)


@dataclass(frozen=True)
class FilteredFrame:
    """A frame that went through the filter (or its fail-closed redaction), JPEG-encoded once."""

    jpeg: bytes
    width: int
    height: int
    redacted: bool
    captured_at: float


class FailClosed:
    """Runs a pipeline with a deadline. An exception, a time-out, or a pipeline still stuck on an
    earlier frame all give a fully redacted frame: never the raw one."""

    def __init__(self, pipeline: FramePipeline, timeout_s: float, frame_fallback: str, jpeg_quality: int, stats: CameraStats) -> None:
        self.pipeline = pipeline
        self.timeout_s = timeout_s
        self.frame_fallback = frame_fallback
        self.jpeg_params = [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality]
        self.stats = stats
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"filter-{stats.name}")
        self._busy: Optional[object] = None
        self._busy_since = 0.0
        self._last_warning = -1e9
        self._lock = threading.Lock()

    def stalled_for(self) -> float:
        """Seconds the pipeline has been stuck on one frame (0 when idle or on time)."""
        busy = self._busy
        return time.monotonic() - self._busy_since if busy is not None and not busy.done() else 0.0

    def _redacted(self, frame: np.ndarray, reason: str) -> np.ndarray:
        self.stats.add("frames_redacted")
        now = time.monotonic()
        if now - self._last_warning >= 10.0:  # a stalled stage would otherwise log every frame
            log.warning("frame fully redacted: %s (%d frames redacted so far)", reason, self.stats.counters["frames_redacted"])
            self._last_warning = now
        return redact_frame(frame, self.frame_fallback)

    def filter_array(self, frame: np.ndarray, detections: Optional[Future] = None) -> tuple[np.ndarray, bool]:
        """(the frame that may leave, whether it was fully redacted). ``detections``: the frame's
        :meth:`FramePipeline.detect_ahead`; waiting for it counts toward the deadline."""
        self.stats.add("frames_in")
        with self._lock:
            if self._busy is not None and not self._busy.done():
                return self._redacted(frame, "pipeline still busy with an earlier frame"), True
            start = time.perf_counter()
            future = self._executor.submit(self.pipeline.filter, frame, detections)
            self._busy, self._busy_since = future, time.monotonic()
        try:
            out = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            return self._redacted(frame, f"filtering took longer than {self.timeout_s:.2f}s"), True
        except Exception as exc:
            self.stats.add("errors")
            return self._redacted(frame, f"{type(exc).__name__} in the pipeline"), True
        finally:
            self.stats.stage_ms["total"].add((time.perf_counter() - start) * 1000.0)
        if out is not frame or out.shape != frame.shape:
            return self._redacted(frame, "pipeline returned an unexpected frame"), True
        return out, False

    def __call__(self, frame: np.ndarray, captured_at: Optional[float] = None) -> Optional[FilteredFrame]:
        """Filter and encode; None only when even encoding fails (the frame is dropped)."""
        out, redacted = self.filter_array(frame)
        with self.stats.timed("encode"):
            ok, buf = cv2.imencode(".jpg", out, self.jpeg_params)
        if not ok:
            self.stats.add("frames_dropped")
            return None
        self.stats.frame_published()
        return FilteredFrame(buf.tobytes(), out.shape[1], out.shape[0], redacted, captured_at or time.time())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.pipeline.close()
