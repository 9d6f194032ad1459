"""Whole-frame change (a hard cut, a camera moved, another stream after a reconnect): the boxes of
the last frame say nothing about the faces in this one, so no track may carry over."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

THUMB = (32, 18)


class SceneCut:
    """Mean absolute difference of tiny grey thumbnails of consecutive frames, 0-255.

    People moving, light flicker and compression change a 32x18 thumbnail by a few levels; a cut
    to another scene changes it by tens (figures in the README, "Who may be shown")."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._last: Optional[np.ndarray] = None

    def change(self, frame: np.ndarray) -> float:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        thumb = cv2.resize(gray, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)
        last, self._last = self._last, thumb
        if last is None or last.shape != thumb.shape:
            return 0.0
        return float(np.abs(thumb - last).mean())

    def is_cut(self, frame: np.ndarray) -> bool:
        return self.change(frame) >= self.threshold
