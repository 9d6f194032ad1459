"""Calibration material from any folder of images or videos: detector input frames and
5-point aligned 112x112 faces for the embedder.

Sources are paths or glob patterns (files or folders, searched recursively). Videos are
sampled every ``video_stride`` frames. Faces are found by the FP32 detector and aligned exactly
as the agent aligns them, so the embedder is calibrated on what it will see.
Nothing here writes a frame or a face to disk: calibration data lives in memory only.
"""

from __future__ import annotations

import glob
import random
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
VIDEO_EXT = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".gif", ".mpg", ".mpeg", ".ts"}


class CalibrationError(Exception):
    """No usable calibration material (worded for the command line)."""


def expand_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Image and video files under ``sources`` (files, folders, glob patterns), sorted, unique."""
    files: list[Path] = []
    for source in sources:
        text = str(source)
        matches = [Path(p) for p in sorted(glob.glob(text))] if any(c in text for c in "*?[") else [Path(text)]
        if not matches:
            raise CalibrationError(f"calibration source {text!r} matches nothing")
        for path in matches:
            if path.is_dir():
                files.extend(p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_EXT | VIDEO_EXT)
            elif path.is_file():
                if path.suffix.lower() not in IMAGE_EXT | VIDEO_EXT:
                    raise CalibrationError(f"calibration source {path} is neither an image nor a video")
                files.append(path)
            else:
                raise CalibrationError(f"calibration source {path} does not exist")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise CalibrationError(f"no images or videos under {', '.join(map(str, sources))}")
    return unique


def _read_image(path: Path) -> np.ndarray | None:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return image


def iter_frames(files: Iterable[Path], video_stride: int = 15, max_per_video: int = 200) -> Iterator[tuple[str, np.ndarray]]:
    """(label, BGR frame) for every image and every ``video_stride``-th video frame."""
    for path in files:
        if path.suffix.lower() in IMAGE_EXT:
            image = _read_image(path)
            if image is not None:
                yield str(path), image
            continue
        capture = cv2.VideoCapture(str(path))
        try:
            index = taken = 0
            while taken < max_per_video:
                ok, frame = capture.read()
                if not ok:
                    break
                if index % video_stride == 0:
                    if frame.ndim == 2:
                        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
                    yield f"{path}#{index}", frame
                    taken += 1
                index += 1
        finally:
            capture.release()


def sample_frames(sources: Sequence[str | Path], limit: int, seed: int = 0, video_stride: int = 15) -> list[np.ndarray]:
    """Up to ``limit`` frames spread over all sources (reservoir sampling, deterministic)."""
    rng = random.Random(seed)
    reservoir: list[np.ndarray] = []
    for i, (_, frame) in enumerate(iter_frames(expand_sources(sources), video_stride)):
        if len(reservoir) < limit:
            reservoir.append(frame)
        else:
            j = rng.randint(0, i)
            if j < limit:
                reservoir[j] = frame
    if not reservoir:
        raise CalibrationError("the calibration sources hold no readable frame")
    return reservoir


def detector_canvas(frame: np.ndarray, max_side: int = 640) -> np.ndarray:
    """The detector's input for ``frame`` as the agent builds it: [1,3,H,W] float32 BGR 0-255,
    long side scaled to at most ``max_side``, padded to multiples of 32."""
    h, w = frame.shape[:2]
    scale = min(max_side / max(h, w), 1.0)
    ch = int(np.ceil(h * scale / 32) * 32)
    cw = int(np.ceil(w * scale / 32) * 32)
    resized = frame if scale == 1.0 else cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((ch, cw, 3), np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1)[None].astype(np.float32)


def fixed_canvas(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """[1,3,height,width] float32 BGR: ``frame`` scaled to fit (never up) and padded bottom/right,
    for TensorRT INT8 calibration, which runs at one shape (the profile's optimum)."""
    h, w = frame.shape[:2]
    scale = min(width / w, height / h, 1.0)
    resized = frame if scale == 1.0 else cv2.resize(frame, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1)[None].astype(np.float32)


def pad_to_common(blobs: list[np.ndarray]) -> list[np.ndarray]:
    """Zero-pad [1,3,H,W] blobs bottom/right to the largest H and W (the agent pads the same way)."""
    h = max(b.shape[2] for b in blobs)
    w = max(b.shape[3] for b in blobs)
    out = []
    for blob in blobs:
        padded = np.zeros((blob.shape[0], blob.shape[1], h, w), blob.dtype)
        padded[:, :, : blob.shape[2], : blob.shape[3]] = blob
        out.append(padded)
    return out


def aligned_faces(frames: Iterable[np.ndarray], detector, limit: int, min_face_px: int = 24, progress=None) -> np.ndarray:
    """Aligned BGR faces [N,112,112,3] uint8 found in ``frames`` by ``detector`` (a YuNet)."""
    from edge_agent.align import align

    crops: list[np.ndarray] = []
    for frame in frames:
        for face in detector.detect(frame):
            if min(face.width, face.height) < min_face_px:
                continue
            try:
                crops.append(align(frame, face.landmarks, 112)[0])
            except ValueError:
                continue
            if len(crops) >= limit:
                break
        if progress is not None:
            progress.update(1)
        if len(crops) >= limit:
            break
    if not crops:
        raise CalibrationError("no face found in the calibration sources for the embedder")
    return np.stack(crops)


def embedder_blob(crops: np.ndarray) -> np.ndarray:
    """The embedder's input for aligned BGR crops, preprocessed exactly as ArcFaceEmbedder does."""
    from edge_agent.models.arcface import MEAN, STD

    rgb = crops[..., ::-1].astype(np.float32) / 255.0
    return ((rgb - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32).copy()
