"""Turning photos of a consenting person into registry embeddings (local CLI and admin alike)."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from edge_agent.image_size import DEFAULT_MAX_PIXELS, image_size
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.loader import Detector


class EnrolError(Exception):
    """A photo that cannot be used, with the reason."""


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path``; refuse before decoding when its header says it exceeds ``max_pixels``
    (memory stays bounded) or when no size can be read from it."""
    path = Path(path)
    if not path.is_file():
        raise EnrolError(f"{path}: no such file")
    try:
        size = image_size(path)
    except (OSError, struct.error) as exc:
        raise EnrolError(f"{path}: not a readable image ({exc})") from None
    if size is None:
        raise EnrolError(f"{path}: not a readable image (PNG, JPEG, BMP, WebP or TIFF)")
    if size[0] * size[1] > max_pixels:
        raise EnrolError(f"{path}: {size[0]}x{size[1]} is {size[0] * size[1]:,} pixels, over the limit of {max_pixels:,} (pipeline.max_frame_pixels); refused, nothing written")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EnrolError(f"{path}: not a readable image")
    if image.shape[0] * image.shape[1] > max_pixels:  # a header that lied
        raise EnrolError(f"{path}: decodes to {image.shape[1]}x{image.shape[0]}, over the limit of {max_pixels:,} pixels; refused")
    return image


def embed_photos(
    paths: list[Path], detector: Detector, embedder: ArcFaceEmbedder, min_face_px: int, same_person_threshold: float, max_null_similarity: float = 0.35
) -> np.ndarray:
    """One embedding per photo; every photo must hold exactly one usable face, and all photos
    must look like the same person (a mixed-up photo would register a stranger)."""
    if not paths:
        raise EnrolError("give at least one photo")
    vectors = []
    for path in paths:
        image = read_image(path)
        faces = detector.detect(image)
        if len(faces) != 1:
            raise EnrolError(f"{path}: found {len(faces)} faces; a registration photo must show exactly one")
        face = faces[0]
        if min(face.width, face.height) < min_face_px:
            raise EnrolError(f"{path}: the face is {face.width:.0f}x{face.height:.0f} px, too small to register (min {min_face_px} px)")
        vector = embedder.embed(image, faces)[0]
        if float(embedder.null_similarity(vector[None])[0]) >= max_null_similarity:
            raise EnrolError(f"{path}: the face is too dark, blurred or covered to register")
        vectors.append(vector)
    matrix = np.stack(vectors)
    if len(vectors) > 1:
        sims = matrix @ matrix.T
        centre = matrix.mean(axis=0)
        centre /= np.linalg.norm(centre)
        worst = int(np.argmin(matrix @ centre))
        if (matrix[worst] @ centre) < same_person_threshold or sims.min() < same_person_threshold * 0.5:
            raise EnrolError(f"{paths[worst]}: does not look like the same person as the other photos")
    return matrix
