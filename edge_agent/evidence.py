"""A track's pooled identity evidence: a running, quality-weighted template of its embeddings.

Per-frame cosines of a small, moving face scatter around the threshold; the mean of a track's
unit embeddings is far steadier (the same person's frames agree, a stranger's noise averages
away). Each frame adds its embedding with a weight for how much identity it can carry: face
size, sharpness, frontal pose, and distance from the blank-face embedding. The evidence knows
nothing about who is registered; ``decide.py`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from edge_agent.faces import Face

# A face this wide (px) or wider carries full weight; quality terms never go below their floor.
FULL_WEIGHT_PX = 64.0
SHARP_LAPLACIAN_VAR = 150.0


def sharpness(image: np.ndarray, face: Face) -> float:
    """Laplacian variance of the face box, resampled to a fixed size (so big faces do not win)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in np.clip(np.round(face.box[:4]), 0, [w, h, w, h]))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    gray = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image[y1:y2, x1:x2]
    return float(cv2.Laplacian(cv2.resize(gray, (48, 48), interpolation=cv2.INTER_AREA), cv2.CV_32F).var())


def face_quality(face: Face, image: np.ndarray, null_similarity: float, max_null_similarity: float) -> float:
    """How much identity one frame's embedding can carry, in [0, 1]; 0 for a blank-looking face."""
    size = float(np.clip(min(face.width, face.height) / FULL_WEIGHT_PX, 0.25, 1.0))
    sharp = float(np.clip(sharpness(image, face) / SHARP_LAPLACIAN_VAR, 0.2, 1.0))
    pts = np.asarray(face.landmarks, np.float32)
    eye_mid = (pts[0] + pts[1]) / 2
    eye_dist = max(float(np.linalg.norm(pts[1] - pts[0])), 1e-3)
    yaw = abs(float(pts[2, 0] - eye_mid[0])) / eye_dist  # nose off the eyes' centre: turned head
    pose = float(np.clip(1.0 - 1.5 * yaw, 0.1, 1.0))
    blank = float(np.clip(1.0 - null_similarity / max_null_similarity, 0.0, 1.0))
    return size * sharp * pose * blank


@dataclass
class TrackEvidence:
    """Embeddings gathered since the track's evidence last restarted."""

    dim: int = 128
    total: np.ndarray = field(default=None)  # weighted sum of unit embeddings
    weight: float = 0.0
    frames: int = 0
    last: Optional[np.ndarray] = None  # the newest embedding (for jumps in appearance)
    since_embedded: int = 0  # frames since the last embedding was added

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = np.zeros(self.dim, np.float32)

    def add(self, embedding: np.ndarray, weight: float) -> None:
        self.total += weight * embedding
        self.weight += weight
        self.frames += 1
        self.last = embedding
        self.since_embedded = 0

    def restart(self) -> None:
        self.total[:] = 0
        self.weight, self.frames, self.last = 0.0, 0, None

    def template(self) -> Optional[np.ndarray]:
        """The pooled unit template, or None before any weighted evidence."""
        norm = float(np.linalg.norm(self.total))
        return self.total / norm if self.weight > 0 and norm > 1e-6 else None

    def agreement(self, embedding: np.ndarray) -> float:
        """Cosine of a new embedding to the pool (1.0 when there is no pool yet)."""
        pooled = self.template()
        return 1.0 if pooled is None else float(embedding @ pooled)
