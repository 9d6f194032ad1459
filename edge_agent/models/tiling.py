"""Resolution-aware detection: one downscaled whole-frame pass for large faces plus overlapping
tiles at the scale the smallest stated face needs, merged with NMS.

Why: YuNet finds a face reliably only when it spans about ``RELIABLE_PX`` canvas pixels
(measured on faces/crowds: recall 0.94 at 16 px, 0.97 at 20 px, ~1.0 from 26 px), but misses
very large faces at full resolution. Scaling a 4K frame to 640 px loses every face under
~120 px; tiles at full (or higher) resolution find the small ones, the whole-frame pass the
large ones. The tile overlap is wider than any face the whole-frame pass can miss, so every
such face lies entirely inside at least one tile; a copy cut by a tile edge loses to it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.faces import Face
from edge_agent.models.yunet import YuNet

log = logging.getLogger(__name__)

RELIABLE_PX = 20.0  # canvas face width at which YuNet's recall levels off (see module docstring)
MAX_UPSCALE = 2.0  # tiles are never enlarged more than this (interpolation invents no detail)
DARK_LUMA = 50.0  # a frame whose median grey level is at most this is dark (the demo clip: 9-27)...
NOISY_SIGMA = 3.0  # ...or whose sensor noise (grey levels) is at least this: a second, denoised pass
DENOISE_SIGMA = 1.5  # Gaussian sigma (frame px) of that pass (see TiledDetector)
DARK_SAMPLE_PX = 480  # the darkness test reads a nearest-neighbour copy this wide (any frame size costs the same)


@dataclass(frozen=True)
class TilePlan:
    """How one frame size is covered. Coordinates are frame pixels; ``tiles`` are (x0, y0, x1, y1)."""

    width: int
    height: int
    whole_scale: float
    tile_scale: float
    tiles: tuple[tuple[int, int, int, int], ...]
    canvas: tuple[int, int]  # (height, width) of every tile canvas, multiples of 32
    smallest_face_px: float  # the smallest face this plan detects reliably
    min_face_px: float  # what the operator asked for

    @property
    def met(self) -> bool:
        return self.smallest_face_px <= self.min_face_px + 1e-6

    def describe(self) -> str:
        if not self.tiles:
            return f"{self.width}x{self.height}: whole frame at scale {self.whole_scale:.2f}, smallest face {self.smallest_face_px:.0f} px"
        return (
            f"{self.width}x{self.height}: whole frame at scale {self.whole_scale:.2f} + {len(self.tiles)} tiles of "
            f"{self.canvas[1]}x{self.canvas[0]} at scale {self.tile_scale:.2f}, smallest face {self.smallest_face_px:.0f} px"
        )


def _split(length: float, tile: int, overlap: int) -> tuple[int, int]:
    """(count, size) of equal tiles covering ``length`` canvas px with at least ``overlap`` shared."""
    if length <= tile:
        return 1, int(math.ceil(length / 32) * 32)
    count = int(math.ceil((length - overlap) / (tile - overlap)))
    size = int(math.ceil((length + (count - 1) * overlap) / count / 32) * 32)
    return count, min(size, tile)


def plan_tiles(width: int, height: int, min_face_px: float, max_side: int, tile_size: int, max_tiles: int) -> TilePlan:
    """The cheapest cover of a ``width`` x ``height`` frame that detects faces of ``min_face_px``,
    within ``max_tiles``; when the budget cannot reach ``min_face_px``, the tile scale drops
    until it fits and ``smallest_face_px`` says what is really detected."""
    whole = min(max_side / max(width, height), 1.0)
    whole_min = RELIABLE_PX / whole
    target = min(RELIABLE_PX / min_face_px, MAX_UPSCALE)
    if whole_min <= min_face_px or max_tiles == 0 or target <= whole:
        return TilePlan(width, height, whole, 0.0, (), (0, 0), whole_min, min_face_px)
    # Faces up to 1.25x what the whole pass misses must fit entirely inside one tile.
    scale = target
    while True:
        overlap = min(int(math.ceil(whole_min * 1.25 * scale)), tile_size // 2)
        nx, tw = _split(width * scale, tile_size, overlap)
        ny, th = _split(height * scale, tile_size, overlap)
        if nx * ny <= max_tiles or scale <= whole * 1.05:
            break
        scale *= 0.95
    if nx * ny > max_tiles:  # even the lowest useful tile scale does not fit: whole frame only
        return TilePlan(width, height, whole, 0.0, (), (0, 0), whole_min, min_face_px)
    fw, fh = tw / scale, th / scale  # tile size in frame px
    tiles = []
    for j in range(ny):
        y0 = 0.0 if ny == 1 else j * (height - fh) / (ny - 1)
        for i in range(nx):
            x0 = 0.0 if nx == 1 else i * (width - fw) / (nx - 1)
            x0i, y0i = int(round(max(x0, 0))), int(round(max(y0, 0)))
            tiles.append((x0i, y0i, min(int(round(x0i + fw)), width), min(int(round(y0i + fh)), height)))
    return TilePlan(width, height, whole, scale, tuple(tiles), (th, tw), min(RELIABLE_PX / scale, whole_min), min_face_px)


def merge(boxes: np.ndarray, scores: np.ndarray, cut: np.ndarray, nms_threshold: float, cover: float = 0.5) -> np.ndarray:
    """Indices kept by greedy NMS that prefers whole detections: boxes not cut by a tile edge go
    first (then by score), and a cut box is also dropped when ``cover`` of it (or of the kept box)
    lies inside a kept one, since its IoU with its whole self is small."""
    order = np.lexsort((-scores, cut))
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            ix = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None)
            iy = np.clip(np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None)
            inter = ix * iy
            iou = inter / np.maximum(area[k] + area[i] - inter, 1e-6)
            nested = inter / np.maximum(np.minimum(area[k], area[i]), 1e-6)
            if np.any(iou > nms_threshold) or np.any((cut[k] | cut[i]) & (nested > cover)):
                continue
        kept.append(int(i))
    return np.asarray(kept, int)


def low_light(frame: np.ndarray) -> bool:
    """Is the frame dark (median grey level of a ``DARK_SAMPLE_PX``-wide sample <= ``DARK_LUMA``) or
    noisy (:func:`noise_sigma` >= ``NOISY_SIGMA``)? A camera that exposes for a dim room gives a
    bright but noisy frame; one that does not, a dark one. It runs on every frame, so it reads a
    small sample and histograms, never the whole frame sorted."""
    h, w = frame.shape[:2]
    k = min(1.0, DARK_SAMPLE_PX / w)
    small = cv2.resize(frame, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_NEAREST)
    if _median_bin(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)) <= DARK_LUMA:
        return True
    return noise_sigma(frame) >= NOISY_SIGMA


NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)  # cancels flat and sloped areas
NOISE_STEP = 0.25  # grey levels: the resolution of the noise filter's median (a histogram's bin; 255 bins
# reach sigma ~16, far past NOISY_SIGMA: noisier frames read ~16)


def noise_sigma(frame: np.ndarray, side: int = 512) -> float:
    """Sensor noise (grey levels) from the centre ``side`` x ``side`` of the frame: the robust
    spread of a second-difference filter, whose response to white noise of sigma is 6 sigma
    (Immerkaer's estimator, with a median so that edges do not count; taken from a histogram of
    ``NOISE_STEP`` bins, far faster than sorting). Clean photos: 0.3-2.2."""
    h, w = frame.shape[:2]
    y0, x0 = max((h - side) // 2, 0), max((w - side) // 2, 0)
    centre = cv2.cvtColor(np.ascontiguousarray(frame[y0:y0 + side, x0:x0 + side]), cv2.COLOR_BGR2GRAY).astype(np.float32)
    if min(centre.shape) < 3:
        return 0.0
    response = cv2.filter2D(centre, -1, NOISE_KERNEL)[1:-1, 1:-1]
    return 1.4826 * _median_bin(cv2.convertScaleAbs(response, alpha=1.0 / NOISE_STEP)) * NOISE_STEP / 6.0


def _median_bin(image: np.ndarray) -> int:
    """Median of a uint8 image, from its histogram."""
    counts = cv2.calcHist([image], [0], None, [256], [0, 256]).ravel()
    return int(np.searchsorted(np.cumsum(counts), (image.size + 1) // 2))


class TiledDetector:
    """YuNet over a frame at the resolution its faces need (see the module docstring).

    Candidates whose box reaches the frame border are kept down to ``border_score_threshold``:
    a head cut by the border (often in profile) scores 0.2-0.45 where YuNet gives a whole face
    0.5-0.9 (demo clip, frames 52-61), and a stray redaction at the border costs little.

    ``low_light_pass``: a dark or noisy frame (:func:`low_light`) is also searched denoised
    (Gaussian, ``DENOISE_SIGMA``), and the candidates of both passes are merged: on the crowd
    photos darkened to 1 % of
    their light with a sensor's noise and JPEG 60 the stack found 0.676 of the faces, with this
    pass 0.936 (``model_export recall``, set "dark 1% light"). It costs 2-3x the detector's time
    on such frames."""

    def __init__(self, yunet: YuNet, min_face_px: float, max_tiles: int, tile_size: int, batch: int,
                 border_score_threshold: float | None = None, low_light_pass: bool = True) -> None:
        if yunet.fixed is not None:
            raise ValueError("tiling needs a dynamic-shape YuNet export (e.g. yunet_s_dynamic.onnx)")
        self.yunet = yunet
        self.min_face_px = min_face_px
        self.max_tiles = max_tiles
        self.tile_size = tile_size
        self.batch = batch
        self.border_threshold = min(yunet.score_threshold, border_score_threshold or yunet.score_threshold)
        self.low_light_pass = low_light_pass
        self._plans: dict[tuple[int, int], TilePlan] = {}

    def plan(self, width: int, height: int) -> TilePlan:
        """The plan for a frame size, made and logged once (a camera's first frame)."""
        plan = self._plans.get((width, height))
        if plan is None:
            plan = plan_tiles(width, height, self.min_face_px, self.yunet.max_side, self.tile_size, self.max_tiles)
            if plan.met:
                log.info("detector plan %s", plan.describe())
            else:
                log.warning(
                    "detector: faces of %.0f px cannot be found at %dx%d within max_tiles=%d; smallest face detected: %.0f px (%s)",
                    self.min_face_px, width, height, self.max_tiles, plan.smallest_face_px, plan.describe(),
                )
            self._plans[(width, height)] = plan
        return plan

    def detect(self, frame: np.ndarray) -> list[Face]:
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("detector expects a BGR uint8 image")
        h, w = frame.shape[:2]
        plan = self.plan(w, h)
        images = [frame]
        if self.low_light_pass and low_light(frame):
            images.append(cv2.GaussianBlur(frame, (0, 0), DENOISE_SIGMA))
        parts = []
        for image in images:
            parts += [self._whole(image, plan)] + (self._tiles(image, plan) if plan.tiles else [])
        boxes = np.concatenate([p[0] for p in parts])
        if not len(boxes):
            return []
        landmarks = np.concatenate([p[1] for p in parts])
        scores = np.concatenate([p[2] for p in parts])
        cut = np.concatenate([p[3] for p in parts])
        kept = merge(boxes, scores, cut, self.yunet.nms_threshold)
        faces = []
        for i in self._without_weak_overlaps(boxes, scores, kept):
            b = np.clip(boxes[i], 0, [w, h, w, h])
            if b[2] - b[0] >= 2 and b[3] - b[1] >= 2:
                faces.append(Face(box=b.astype(np.float32), landmarks=landmarks[i].astype(np.float32), score=float(scores[i])))
        return faces

    def _without_weak_overlaps(self, boxes: np.ndarray, scores: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """Drops border-only (low-score) boxes that touch a confident face: there they are an
        echo of it, and their redaction would spill over a registered person beside them."""
        confident = kept[scores[kept] >= self.yunet.score_threshold]
        out = [i for i in kept if scores[i] >= self.yunet.score_threshold]
        for i in kept[scores[kept] < self.yunet.score_threshold]:
            c = boxes[confident]
            touches = (c[:, 0] < boxes[i, 2]) & (c[:, 2] > boxes[i, 0]) & (c[:, 1] < boxes[i, 3]) & (c[:, 3] > boxes[i, 1])
            if not touches.any():
                out.append(int(i))
        return np.asarray(out, int)

    def _accepted(self, plan: TilePlan, boxes, landmarks, scores):
        """Frame-pixel candidates over the score threshold, or over the border one at the border; NMS."""
        at_border = (boxes[:, 0] <= 2) | (boxes[:, 1] <= 2) | (boxes[:, 2] >= plan.width - 2) | (boxes[:, 3] >= plan.height - 2)
        keep = (scores >= self.yunet.score_threshold) | (at_border & (scores >= self.border_threshold))
        boxes, landmarks, scores = boxes[keep], landmarks[keep], scores[keep]
        if not len(scores):
            return boxes, landmarks, scores
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.border_threshold, self.yunet.nms_threshold), int).reshape(-1)
        return boxes[keep], landmarks[keep], scores[keep]

    def _whole(self, frame: np.ndarray, plan: TilePlan):
        canvas, scale = self.yunet._canvas(frame)
        boxes, landmarks, scores = self.yunet.raw(canvas[None], self.border_threshold)[0]
        boxes, landmarks, scores = self._accepted(plan, boxes / scale, landmarks / scale, scores)
        return boxes, landmarks, scores, np.zeros(len(scores), bool)

    def _tiles(self, frame: np.ndarray, plan: TilePlan) -> list:
        th, tw = plan.canvas
        s = plan.tile_scale
        # One resize of the whole frame, then crops: cheaper than resizing overlapping tiles.
        if abs(s - 1.0) < 1e-3:
            scaled = frame
        else:
            size = (round(plan.width * s), round(plan.height * s))
            scaled = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if s < 0.7 else cv2.INTER_LINEAR)
        canvases = np.zeros((len(plan.tiles), th, tw, 3), np.uint8)
        for n, (x0, y0, _, _) in enumerate(plan.tiles):
            cx, cy = int(round(x0 * s)), int(round(y0 * s))
            crop = scaled[cy : cy + th, cx : cx + tw]
            canvases[n, : crop.shape[0], : crop.shape[1]] = crop
        raw = []
        for start in range(0, len(canvases), self.batch):
            raw.extend(self.yunet.raw(canvases[start : start + self.batch], self.border_threshold))
        margin = 2.0 / s + 1.0
        out = []
        for (x0, y0, x1, y1), (boxes, landmarks, scores) in zip(plan.tiles, raw):
            ox, oy = round(x0 * s) / s, round(y0 * s) / s  # the crop's true origin in frame px
            boxes, landmarks, scores = self._accepted(plan, boxes / s + [ox, oy, ox, oy], landmarks / s + [ox, oy], scores)
            if not len(scores):
                continue
            cut = (
                ((x0 > 0) & (boxes[:, 0] <= x0 + margin))
                | ((y0 > 0) & (boxes[:, 1] <= y0 + margin))
                | ((x1 < plan.width) & (boxes[:, 2] >= x1 - margin))
                | ((y1 < plan.height) & (boxes[:, 3] >= y1 - margin))
            )
            out.append((boxes, landmarks, scores, cut))
        return out
