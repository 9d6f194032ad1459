"""Pose and skin-tone descriptors of a face, shared by the donor bank's builder and the agent
(a donor is matched to a stranger by these numbers alone)."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from edge_agent.align import template


def pose(landmarks: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) proxies of 5 landmarks, in any coordinates: the nose's offset from the eyes'
    midpoint along the eye line in eye distances (+ = toward the image-right eye), and its height
    between the eye line and the mouth line (about 0.55 frontal)."""
    lm = np.asarray(landmarks, np.float64)
    eyes = (lm[0] + lm[1]) / 2
    mouth = (lm[3] + lm[4]) / 2
    axis = lm[1] - lm[0]
    dist = max(float(np.hypot(*axis)), 1e-6)
    ux = axis / dist
    uy = np.array([-ux[1], ux[0]])
    rel = lm[2] - eyes
    span = max(float((mouth - eyes) @ uy), 1e-6)
    return float(rel @ ux) / dist, float(rel @ uy) / span


@lru_cache(maxsize=4)
def tone_mask(size: int, margin: float = 0.25) -> np.ndarray:
    """Cheeks and nose of an aligned crop (template space): skin, seldom hair, glasses or beard."""
    t = template(size, margin)
    m = np.zeros((size, size), np.uint8)
    r = max(1, int(round(0.09 * size)))
    below = 0.04 * size
    for x, y in ((t[0, 0], (t[0, 1] + t[2, 1]) / 2 + below), (t[1, 0], (t[1, 1] + t[2, 1]) / 2 + below), tuple(t[2])):
        cv2.circle(m, (int(round(x)), int(round(y))), r, 255, -1)
    return m > 0


COVERED_DE = 20.0  # L*a*b* distance between cheeks-and-nose and forehead-and-under-eyes past which...
WARMER = 8.0  # ...the upper face, this much warmer (a* + b*), is the skin and the lower face covered


def eyes_and_span(size: int, margin: float = 0.25) -> tuple[float, float]:
    """Template-space row of the eyes and the eye-to-mouth span of an aligned crop."""
    t = template(size, margin)
    eyes_y = (t[0, 1] + t[1, 1]) / 2
    return float(eyes_y), float((t[3, 1] + t[4, 1]) / 2 - eyes_y)


@lru_cache(maxsize=4)
def upper_skin_mask(size: int, margin: float = 0.25) -> np.ndarray:
    """The low forehead and just under the eyes of an aligned crop (template space): skin above a
    surgical mask or a scarf."""
    t = template(size, margin)
    eyes_y, span = eyes_and_span(size, margin)
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, (int(round((t[0, 0] + t[1, 0]) / 2)), int(round(eyes_y - 0.55 * span))), max(1, int(round(0.08 * size))), 255, -1)
    for x in (t[0, 0], t[1, 0]):
        cv2.circle(m, (int(round(x)), int(round(eyes_y + 0.2 * span))), max(1, int(round(0.045 * size))), 255, -1)
    return m > 0


def skin_mask(crop_bgr: np.ndarray) -> np.ndarray:
    """Where an aligned crop's skin colour is read: the cheeks and nose (:func:`tone_mask`), or,
    when they differ from the upper face by ``COVERED_DE`` and are colder by ``WARMER``, the upper
    face (:func:`upper_skin_mask`): under a surgical mask the donor took the mask's pale blue as
    its skin."""
    size = crop_bgr.shape[0]
    crop = np.clip(crop_bgr, 0, 255).astype(np.uint8)
    low = np.median(lab_pixels(crop, tone_mask(size)), 0)
    up = np.median(lab_pixels(crop, upper_skin_mask(size)), 0)
    covered = float(np.linalg.norm(low - up)) > COVERED_DE and (up[1] + up[2]) - (low[1] + low[2]) > WARMER
    return upper_skin_mask(size) if covered else tone_mask(size)


def lab_pixels(crop_bgr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[N, 3] L*a*b* of the masked pixels (L* in 0-100, a*/b* centred on 0)."""
    px = np.ascontiguousarray(crop_bgr[mask]).reshape(1, -1, 3)
    if px.shape[1] == 0:
        return np.zeros((0, 3), np.float32)
    px = cv2.cvtColor(px, cv2.COLOR_BGR2LAB)[0].astype(np.float32)  # only the masked pixels: a close-up's crop is 65k
    return px * np.array([100 / 255, 1, 1], np.float32) - np.array([0, 128, 128], np.float32)


def appearance(crop_bgr: np.ndarray) -> np.ndarray:
    """[L*, a*, b*, L* spread] of an aligned crop's skin (L* in 0-100, a*/b* centred on 0)."""
    px = lab_pixels(crop_bgr, tone_mask(crop_bgr.shape[0]))
    return np.array([*np.median(px, 0), np.std(px[:, 0])], np.float32)
