"""The running agent: models loaded once, one capture + filter worker per camera, the registry,
and the buffers the API reads. Only ``FilteredFrame`` objects ever enter a buffer."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from edge_agent.anonymize import build_anonymizers
from edge_agent.audit import AuditLog
from edge_agent.consent import ConsentGate
from edge_agent.capture import LatestFrameSource, describe
from edge_agent.config import Config
from edge_agent.gallery import GalleryProvider
from edge_agent.models.loader import load_detector, load_embedder
from edge_agent.pipeline import FailClosed, FilteredFrame, FramePipeline
from edge_agent.registry import Registry
from edge_agent.stats import CameraStats

# A still photo has no frame rate to keep: a slow CPU (tiles of a large photo, a crowd's donors)
# must not turn it into a blank one. A failing stage still redacts it whole.
STILL_IMAGE_TIMEOUT_S = 60.0

log = logging.getLogger(__name__)


class FrameBuffer:
    """The newest filtered frame of one camera, with a sequence number for streaming."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.frame: Optional[FilteredFrame] = None
        self.seq = 0

    def publish(self, frame: FilteredFrame) -> None:
        if not isinstance(frame, FilteredFrame):  # the structural guard of the invariant
            raise TypeError("only filtered frames may be published")
        with self._cond:
            self.frame = frame
            self.seq += 1
            self._cond.notify_all()

    def latest(self) -> tuple[int, Optional[FilteredFrame]]:
        with self._cond:
            return self.seq, self.frame


class Models:
    """What every camera shares: the detector, the embedder and the registry view."""

    def __init__(self, config: Config, registry: Optional[Registry] = None) -> None:
        self.config = config
        self.detector = load_detector(config)
        self.embedder, self.model_sig = load_embedder(config) if config.recognition.enabled else (None, None)
        self.registry = registry or Registry(config.registry_path)
        mqtt = config.mqtt if config.mqtt is not None and config.mqtt.enabled else None
        self.gate = ConsentGate(mqtt.max_registry_age, mqtt.clock_skew_s) if mqtt else ConsentGate()
        a = config.audit
        self.audit = AuditLog(config.audit_path, a.retention_days, a.gap_s, a.flush_s) if a.enabled else None
        # The pipeline reads through its own connection: a long sync transaction on another
        # connection never blocks a camera thread (WAL readers see the last commit).
        self.gallery = GalleryProvider(Registry(config.registry_path), self.model_sig, gate=self.gate) if self.embedder else None
        if self.embedder and self.gallery:
            other = {sig: n for sig, n in self.registry.model_signatures().items() if sig != self.model_sig}
            if other:
                log.warning("registry holds embeddings of other models %s: those people cannot be recognised", other)

    def pipeline(self, stats: CameraStats, still: bool = False) -> FailClosed:
        anonymizer, fallback = build_anonymizers(self.config.anonymizer, self.embedder, still)
        frame_pipeline = FramePipeline(self.config, self.detector, self.embedder, self.gallery, anonymizer, fallback, stats, still,
                                       audit=self.audit)
        cfg = self.config.pipeline
        timeout_s = cfg.frame_timeout_ms / 1000.0
        if still:
            timeout_s = max(timeout_s, STILL_IMAGE_TIMEOUT_S)
        return FailClosed(frame_pipeline, timeout_s, self.config.anonymizer.frame_fallback, cfg.jpeg_quality, stats)


class CameraWorker:
    def __init__(self, name: str, source, loop: bool, fps_cap: float, models: Models) -> None:
        self.name = name
        self.source_text = describe(source)
        self.stats = CameraStats(name)
        self.buffer = FrameBuffer()
        self.filter = models.pipeline(self.stats)
        self.source = LatestFrameSource(source, loop=loop, fps_cap=fps_cap, on_reconnect=self._reconnected)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)
        self.heartbeat: Optional[float] = None  # last turn of the worker loop (monotonic)

    def _reconnected(self) -> None:
        """A reopened source may show another scene: no track of the old one may carry over."""
        self.stats.add("source_reconnects")
        self.filter.pipeline.source_changed()

    def start(self) -> None:
        self.source.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.source.stop()
        self._thread.join(timeout=5)
        self.filter.close()

    def _run(self) -> None:
        dropped_seen = 0
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            frame = self.source.take(timeout=0.5)
            if self.source.dropped != dropped_seen:
                self.stats.add("frames_dropped", self.source.dropped - dropped_seen)
                dropped_seen = self.source.dropped
            if frame is None:
                if self.source.ended:
                    log.info("camera %s: source ended", self.name)
                    return
                continue
            try:
                filtered = self.filter(frame, time.time())
            except Exception as exc:  # the loop must survive anything; the frame is simply not published
                self.stats.add("errors")
                log.error("camera %s: frame dropped (%s)", self.name, type(exc).__name__)  # no message: it could quote data
                continue
            if filtered is not None:
                self.buffer.publish(filtered)

    def health(self) -> dict:
        last = self.stats.last_frame_at
        return {
            "connected": self.source.connected,
            "last_frame_age_s": None if last is None else round(time.monotonic() - last, 2),
            "error": self.source.last_error,
        }


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.models = Models(config)
        self.cameras: dict[str, CameraWorker] = {
            name: CameraWorker(name, cam.source, cam.loop, cam.fps_cap, self.models)
            for name, cam in config.cameras.items()
            if cam.enabled
        }
        self.sync = None
        mqtt = config.mqtt
        if mqtt is not None and mqtt.enabled:
            if self.models.model_sig is None:
                log.error("registry sync is off: no embedder, so no model signature to check embeddings against")
            else:
                from edge_agent.sync import RegistrySync

                self.sync = RegistrySync(mqtt, Registry(config.registry_path), self.models.model_sig,
                                         on_applied=self.models.gallery.refresh, gate=self.models.gate, audit=self.models.audit)

    @property
    def registry(self) -> Registry:
        return self.models.registry

    def start(self) -> None:
        if self.models.embedder is None:
            log.error("recognition is OFF: every face will be anonymized")
        if self.models.audit is not None:
            self.models.audit.start()
        for worker in self.cameras.values():
            log.info("camera %s: %s", worker.name, worker.source_text)
            worker.start()
        if self.sync is not None:
            self.sync.start()  # returns at once; a broker that is down is retried with backoff

    def stop(self) -> None:
        if self.sync is not None:
            self.sync.stop()
        for worker in self.cameras.values():
            worker.stop()
        if self.models.audit is not None:
            self.models.audit.stop()  # closes open intervals: they ended with the process

    def ready(self) -> bool:
        """systemd READY: every camera has published its first filtered frame, or has failed to
        open (a camera that is down must not hold the start back until TimeoutStartSec kills a
        service that restarting would not fix; the STATUS line names it). With no camera the
        agent is ready at once: it serves its health and page, which say how to add one."""
        return all(w.buffer.seq > 0 or w.source.last_error is not None for w in self.cameras.values())

    def status_line(self) -> str:
        """The systemd STATUS= text."""
        if not self.cameras:
            return "no camera configured: add one under cameras: in the config and restart"
        waiting = [name for name, w in self.cameras.items() if w.buffer.seq == 0]
        if not waiting:
            return f"filtering {len(self.cameras)} camera(s)"
        return f"filtering {len(self.cameras) - len(waiting)} of {len(self.cameras)} camera(s); no frame yet from {', '.join(waiting)}"

    def alive(self, max_stall_s: float = 10.0) -> bool:
        """No worker loop and no filter is stuck (the systemd watchdog asks this). A camera that
        is merely disconnected is alive: restarting the agent would not bring it back."""
        now = time.monotonic()
        return all(
            w.heartbeat is not None and now - w.heartbeat < max_stall_s and w.filter.stalled_for() < max_stall_s
            for w in self.cameras.values()
        )

    def healthy(self, max_age_s: float = 10.0) -> bool:
        """Every camera published a frame recently, and there is at least one (``/api/health``)."""
        now = time.monotonic()
        return bool(self.cameras) and all(
            w.stats.last_frame_at is not None and now - w.stats.last_frame_at < max_age_s for w in self.cameras.values()
        )

    def sync_counters(self) -> dict[str, int]:
        return self.sync.counters() if self.sync else {}

    def stats(self) -> dict:
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "recognition": self.models.embedder is not None,
            "anonymizer": self.config.anonymizer.mode,
            "cameras": {name: w.stats.snapshot() for name, w in self.cameras.items()},
            "registry": self.registry_info(),
            "sync": self.sync_counters(),
            "consent": self.consent(),
            "sync_status": self.sync_status(),
            "healthy": self.healthy(),
        }

    def consent(self) -> dict:
        """Why registered people are hidden, if they are (stale registry, reset clock, catching up)."""
        gallery = self.models.gallery
        if gallery is None:
            return {"registered_hidden": True, "reason": "recognition is off"}
        gallery.current()
        return gallery.status.as_dict()

    def sync_status(self) -> dict:
        """For the page: is the registry synced from the site admin, and is the broker reachable."""
        if self.sync is None:
            return {"enabled": False}
        return {"enabled": True, "connected": self.sync.wait_connected(0), "broker": f"{self.config.mqtt.host}:{self.config.mqtt.port}"}

    def registry_info(self) -> dict:
        return {
            "count": self.registry.count(),
            "version": self.registry.version,
            "model_signature": self.models.model_sig,
            "hash": self.registry.content_hash(),
        }
