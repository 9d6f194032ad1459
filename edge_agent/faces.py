"""The one record that flows from the detector through tracking, recognition and anonymization."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Face:
    """A detected face in frame pixel coordinates.

    ``box`` is ``[x1, y1, x2, y2]``; ``landmarks`` is ``[5, 2]`` in the ArcFace order
    (right eye, left eye, nose tip, right mouth corner, left mouth corner, as seen in the image:
    image-left eye first).
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])
