"""The anonymizer interface and the face region every anonymizer must cover."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import cv2
import numpy as np

from edge_agent.anonymize.descriptors import pose
from edge_agent.anonymize.identity_check import drifted
from edge_agent.faces import Face

# The detector's box runs roughly brow to chin; the ellipse is grown so that it covers the
# whole head outline a viewer would recognise (hair line, ears, chin).
ELLIPSE_SCALE_X = 0.68
ELLIPSE_SCALE_Y = 0.80
ELLIPSE_SHIFT_Y = -0.06
HOLD_FRAMES = 25  # a render that failed the check: the fallback until the face turns or nears, at most this many frames


class Anonymizer(ABC):
    """Replaces one face of a frame in place.

    ``seed`` is stable for one tracked person, so a generative anonymizer can keep the same
    synthetic face across frames. Implementations raise on any failure: the pipeline turns an
    exception into the fail-closed fallback, never into a raw face.
    """

    name: str = "anonymizer"

    @abstractmethod
    def anonymize(self, frame: np.ndarray, face: Face, seed: int) -> None:
        """Overwrite ``face`` in the BGR uint8 ``frame``."""

    def begin_frame(self, faces: Sequence[Face] | None = None, frame: np.ndarray | None = None) -> None:
        """A new frame starts (a per-frame time budget restarts here); ``faces``: every face the
        frame will hide, when the caller knows them (an engine may then reuse work on faces no
        other face comes near); ``frame``: the frame as it came, before any of its faces is
        anonymized (what an engine's recogniser check compares with: by a face's turn, a
        neighbour's redaction may already cover part of it)."""

    def end_frame(self, frame: np.ndarray) -> None:
        """The frame's faces are all done (``frame`` as it will leave): an engine may check them
        there and redact any it finds too close to the person."""

    def forget(self, seed: int) -> None:
        """Drop any state kept for ``seed`` (its track ended)."""

    def priority(self, seed: int, face: Face | None = None) -> float:
        """Order of a frame's faces (lowest first; ``face``: this frame's detection of ``seed``):
        with a per-frame budget, the faces served first get the engine, the rest its fallback for
        that frame."""
        return 0.0


class TrackedAnonymizer(Anonymizer):
    """A generative anonymizer that keeps one synthetic person per track (``_tracks``, keyed by
    seed) and a frame clock its per-frame budget counts from."""

    _tracks: dict
    _frame_no: int = 0
    _frame_start: float | None = None
    _original: np.ndarray | None = None
    check = None  # the engine's recogniser check (identity_check.IdentityCheck), when it has one

    def begin_frame(self, faces: Sequence[Face] | None = None, frame: np.ndarray | None = None) -> None:
        """Call once per frame before its faces: starts the frame's budget and the frame counter,
        and keeps a copy of ``frame`` as it came for the check (:meth:`original`)."""
        self._frame_no += 1
        self._frame_start = time.perf_counter()
        self._original = frame.copy() if frame is not None and self.check is not None else None
        self._pending = []

    def _recheck_later(self, face: Face, seed: int, track, person: np.ndarray) -> None:
        """A face drawn this frame whose check is due (:func:`identity_check.drifted`): made in
        :meth:`end_frame`, on the frame as it leaves."""
        self.__dict__.setdefault("_pending", []).append((face, seed, track, person))

    def end_frame(self, frame: np.ndarray) -> None:
        """The due checks, on the finished frame (a neighbour drawn after a face can change what is
        left of it): a face too close to the person gets ``small_faces`` over it; one that passes
        keeps what it passed at (``track.checked``)."""
        pending = self.__dict__.pop("_pending", [])
        self._original = None  # the raw frame is kept no longer than its frame
        for face, seed, track, person in pending:
            self.stats["rechecked"] += 1
            key = self.check.passed(person, frame, face, track.checked)
            if key is None:
                self.stats["recheck_failed"] += 1
                self.small_faces.anonymize(frame, face, seed)
                self._check_failed(track, face)
            else:
                track.checked = key

    def _check_failed(self, track, face: Face) -> None:
        """A track's face failed its check at :meth:`end_frame`: it keeps the fallback until it
        turned or neared (:meth:`_held`), and every later render of it is checked. Drawn again on
        the next frame, a face near the bound passed and failed by turns: on the demo clip a viewer
        saw it switch between a synthetic face and the mosaic every few frames."""
        yaw, pitch = pose(face.landmarks)
        track.held = ((yaw, pitch, float(face.width), False), self._frame_no)
        track.checked = (yaw, pitch, float(face.width), True)

    def _held(self, track, face: Face) -> bool:
        """Does the face keep the fallback this frame: its render failed the check (:meth:`_check_failed`)
        less than ``HOLD_FRAMES`` ago and it has not turned or neared since (``RECHECK_DRIFT``)?"""
        if track.held is None:
            return False
        key, since = track.held
        if self._frame_no - since < HOLD_FRAMES and not drifted(key, face):
            self.stats["held"] += 1
            return True
        track.held = None
        return False

    def original(self, frame: np.ndarray) -> np.ndarray:
        """The frame as it came (given to :meth:`begin_frame`), else ``frame`` itself. On the demo
        clip a check made on the frame as it stood, a neighbour's mosaic already over the face's
        forehead, passed a face at cosine 0.28 that stood at 0.39 to the person as filmed."""
        return self._original if self._original is not None and self._original.shape == frame.shape else frame

    def forget(self, seed: int) -> None:
        self._tracks.pop(int(seed), None)

    def reset(self) -> None:
        self._tracks.clear()


def face_ellipse(face: Face) -> tuple[tuple[float, float], tuple[float, float], float]:
    """(centre, semi-axes, angle in degrees) of the region that hides ``face``."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    w, h = x2 - x1, y2 - y1
    (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
    angle = float(np.degrees(np.arctan2(ry - ly, rx - lx)))
    if not np.isfinite(angle) or abs(angle) > 60:
        angle = 0.0
    centre = ((x1 + x2) / 2.0, (y1 + y2) / 2.0 + ELLIPSE_SHIFT_Y * h)
    axes = (max(w * ELLIPSE_SCALE_X, 2.0), max(h * ELLIPSE_SCALE_Y, 2.0))
    return centre, axes, angle


def face_region(face: Face, frame_shape: tuple[int, ...]) -> tuple[slice, slice, np.ndarray]:
    """Bounding rows/cols of the face ellipse, clipped to the frame, and its uint8 mask (255 inside).

    Raises ValueError when the region lies outside the frame (nothing to cover is suspicious)."""
    (cx, cy), (ax, ay), angle = face_ellipse(face)
    reach = max(ax, ay)
    rows, cols = frame_shape[:2]
    x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, cols)
    y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, rows)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("face region lies outside the frame")
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.ellipse(
        mask,
        (int(round(cx - x0)), int(round(cy - y0))),
        (int(np.ceil(ax)), int(np.ceil(ay))),
        angle, 0, 360, 255, thickness=-1,
    )
    return slice(y0, y1), slice(x0, x1), mask
