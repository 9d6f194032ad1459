"""A camera in low light, for the evaluations' hard cases: the scene's light scaled in linear
light, the sensor's noise growing as the light falls, and (optionally) the camera's encoder."""

from __future__ import annotations

import cv2
import numpy as np


def darken(image: np.ndarray, gain: float, rng: np.random.Generator, jpeg_quality: int | None = None) -> np.ndarray:
    """``image`` (BGR uint8) at ``gain`` of its light (sRGB treated as gamma 2.2), plus Gaussian
    noise of 1.5 / sqrt(gain) grey levels (shot noise: a sensor's gain rises as the light falls),
    then JPEG-encoded at ``jpeg_quality`` when given (encoders smear the noise into blotches)."""
    lin = (image.astype(np.float32) / 255.0) ** 2.2 * gain
    out = np.clip(lin ** (1 / 2.2) * 255.0 + rng.normal(0, 1.5 / np.sqrt(gain), image.shape), 0, 255).astype(np.uint8)
    if jpeg_quality is None:
        return out
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)
