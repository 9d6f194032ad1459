"""5-point similarity alignment to the ArcFace template, at any square output size."""

from __future__ import annotations

import cv2
import numpy as np

# The standard ArcFace 112x112 template (insightface), image-left eye first.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def template(size: int, margin: float = 0.0) -> np.ndarray:
    """The template scaled to ``size`` pixels; ``margin`` shrinks it toward the centre so that
    more context (hair, chin, cheeks) fits in the crop (0.25 = the face takes 75 % of the side)."""
    pts = ARCFACE_TEMPLATE_112 / 112.0
    pts = (pts - 0.5) * (1.0 - margin) + 0.5
    return (pts * size).astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst; 2x3."""
    matrix, _ = cv2.estimateAffinePartial2D(
        src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS
    )
    if matrix is None:
        raise ValueError("landmarks are degenerate: no similarity transform")
    return matrix


def align(image: np.ndarray, landmarks: np.ndarray, size: int = 112, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``image`` so that ``landmarks`` land on the template; returns (crop, 2x3 matrix)."""
    matrix = similarity_transform(landmarks, template(size, margin))
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop, matrix
