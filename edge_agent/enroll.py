"""Turning photos of a consenting person into registry templates (local CLI and admin alike).

A camera sees a face at 25-60 px, blurred by motion, compressed, lit badly; an enrolment photo
is a sharp portrait. Each photo is therefore looked at the way a camera would see it: mirrored,
downscaled to 24-64 px, blurred, compressed, darkened and brightened. The views that measurably
help become templates (the others raise false accepts: see ``CAMERA_VIEWS``) and every view
checks the photo. Views whose embedding sits near the blank-face embedding carry no identity and
are never stored (they would match any featureless stranger).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edge_agent.image_size import DEFAULT_MAX_PIXELS, image_size
from edge_agent.evidence import face_quality
from edge_agent.faces import Face
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.loader import Detector

# A photo whose face is narrower than this gives camera-size views that are upscaled, not real.
GOOD_FACE_PX = 100
POOR_QUALITY = 0.5  # face_quality() of the photo below this: warn
ENROL_MIN_SCORE = 0.5  # detector confidence a registration face needs (YuNet's default threshold)
FLIP_ORDER = [1, 0, 2, 4, 3]  # landmark order after a mirror: eyes and mouth corners swap


class EnrolError(Exception):
    """A photo that cannot be used, with the reason."""


@dataclass
class Enrolment:
    """Templates for one person, in priority order per photo, and what the operator should know."""

    templates: np.ndarray  # [k, dim] unit rows
    per_photo: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


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


def _scaled(image: np.ndarray, face: Face, width_px: float) -> tuple[np.ndarray, Face]:
    """The whole image resized so that the face is ``width_px`` wide (what a camera gets)."""
    scale = min(width_px / max(face.width, 1.0), 1.0)
    size = (max(int(round(image.shape[1] * scale)), 1), max(int(round(image.shape[0] * scale)), 1))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small, Face(face.box * scale, face.landmarks * scale, face.score)


def _flipped(image: np.ndarray, face: Face) -> tuple[np.ndarray, Face]:
    w = image.shape[1]
    box = np.array([w - face.box[2], face.box[1], w - face.box[0], face.box[3]], np.float32)
    pts = face.landmarks.copy()
    pts[:, 0] = w - pts[:, 0]
    return cv2.flip(image, 1), Face(box, pts[FLIP_ORDER], face.score)


def _gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    lut = (255.0 * (np.arange(256) / 255.0) ** gamma).clip(0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else image


View = Callable[[np.ndarray, Face], tuple[np.ndarray, Face]]


def _at(width_px: float, degrade=None) -> View:
    def view(image: np.ndarray, face: Face) -> tuple[np.ndarray, Face]:
        small, moved = _scaled(image, face, width_px)
        return (degrade(small) if degrade else small), moved

    return view


# Every view is embedded; only those marked as templates are stored. Measured on LFW
# (reports/recognition/template_views.md): pooled small-face tracks
# already match the sharp views, while templates made at 24-40 px or with blur / JPEG raise the
# best impostor score far more than any genuine one. Those views still check the photo: one that
# loses its identity at camera size gets a warning. Priority order: when a person's template
# budget is short, the first templates of each photo stay.
CAMERA_VIEWS: list[tuple[str, View, bool]] = [
    ("photo", lambda image, face: (image, face), True),
    ("mirror", _flipped, True),
    ("64px", _at(64), True),
    ("48px", _at(48), True),
    ("40px dark", _at(40, lambda im: _gamma(im, 1.8)), True),
    ("40px bright", _at(40, lambda im: _gamma(im, 0.6)), True),
    ("32px", _at(32), False),
    ("24px", _at(24), False),
    ("40px blur", _at(40, lambda im: cv2.GaussianBlur(im, (0, 0), 1.0)), False),
    ("40px jpeg", _at(40, lambda im: _jpeg(im, 30)), False),
    ("mirror 32px", lambda image, face: _at(32)(*_flipped(image, face)), False),
]
TEMPLATE_VIEWS = [i for i, (_, _, stored) in enumerate(CAMERA_VIEWS) if stored]
CAMERA_SIZE_VIEWS = [i for i, (name, _, _) in enumerate(CAMERA_VIEWS) if name in ("32px", "24px", "mirror 32px")]
# A camera-size view of the photo less similar than this to the photo itself: hard to recognise small.
SMALL_VIEW_AGREEMENT = 0.5


def camera_views(image: np.ndarray, face: Face) -> list[tuple[str, np.ndarray, Face]]:
    """(name, image, face) for every view of one photo, in priority order."""
    return [(name, *view(image, face)) for name, view, _ in CAMERA_VIEWS]


def embed_photos(
    paths: list[Path],
    detector: Detector,
    embedder: ArcFaceEmbedder,
    min_face_px: int,
    same_person_threshold: float,
    max_null_similarity: float = 0.35,
    max_templates: int = 32,
) -> Enrolment:
    """Camera-scale templates from photos that each hold exactly one usable face and that all look
    like the same person (a mixed-up photo would register a stranger)."""
    if not paths:
        raise EnrolError("give at least one photo")
    if len(paths) > max_templates:
        raise EnrolError(f"{len(paths)} photos, but a person may hold at most {max_templates} templates")
    per_photo_budget = max(max_templates // len(paths), 1)
    originals, groups, warnings = [], [], []
    for path in paths:
        image = read_image(path)
        # The detector stack also reports weak candidates (profiles, heads cut by the border) so
        # that the filter hides them; a registration needs a clear face, so only confident ones count.
        faces = [f for f in detector.detect(image) if f.score >= ENROL_MIN_SCORE]
        if len(faces) != 1:
            raise EnrolError(f"{path}: found {len(faces)} faces; a registration photo must show exactly one")
        face = faces[0]
        if min(face.width, face.height) < min_face_px:
            raise EnrolError(f"{path}: the face is {face.width:.0f}x{face.height:.0f} px, too small to register (min {min_face_px} px)")
        views = camera_views(image, face)
        crops = np.stack([embedder.crops(im, [f])[0] for _, im, f in views])
        vectors = embedder.embed_crops(crops)
        null = embedder.null_similarity(vectors)
        if float(null[0]) >= max_null_similarity:
            raise EnrolError(f"{path}: the face is too dark, blurred or covered to register")
        keep = [i for i in TEMPLATE_VIEWS if null[i] < max_null_similarity][:per_photo_budget]
        originals.append(vectors[0])
        groups.append(vectors[keep])
        quality = face_quality(face, image, float(null[0]), max_null_similarity)
        if min(face.width, face.height) < GOOD_FACE_PX:
            warnings.append(f"{path}: the face is only {face.width:.0f} px wide; a photo with a face of {GOOD_FACE_PX} px or more "
                            "makes better templates")
        elif quality < POOR_QUALITY:
            warnings.append(f"{path}: a poor photo (blurred, turned away or badly lit: quality {quality:.2f} of 1); "
                            "a sharp frontal photo recognises better")
        small = vectors[CAMERA_SIZE_VIEWS] @ vectors[0]
        if float(small.min()) < SMALL_VIEW_AGREEMENT:
            warnings.append(f"{path}: at camera size (24-32 px) this face keeps little of its identity (cosine "
                            f"{float(small.min()):.2f} to the photo); add photos taken closer to how the camera sees the person")
        del image
    matrix = np.stack(originals)
    if len(originals) > 1:
        sims = matrix @ matrix.T
        centre = matrix.mean(axis=0)
        centre /= np.linalg.norm(centre)
        worst = int(np.argmin(matrix @ centre))
        if (matrix[worst] @ centre) < same_person_threshold or sims.min() < same_person_threshold * 0.5:
            raise EnrolError(f"{paths[worst]}: does not look like the same person as the other photos")
    return Enrolment(np.concatenate(groups).astype(np.float32), [len(g) for g in groups], warnings)


def merge_templates(existing: np.ndarray, added: Enrolment, same_person_threshold: float, max_templates: int) -> np.ndarray:
    """``--append``: the new photos must look like the registered person, and the sum must fit."""
    photos = added.templates[np.cumsum([0] + added.per_photo[:-1])]  # each photo's own template comes first
    if existing.size and float((photos @ existing.T).max(axis=1).min()) < same_person_threshold:
        raise EnrolError("the new photos do not look like the registered person; use --replace to start over")
    merged = np.concatenate([existing, added.templates]) if existing.size else added.templates
    if len(merged) > max_templates:
        raise EnrolError(f"the person would hold {len(merged)} templates, more than the limit of {max_templates}; "
                         "use --replace with all the photos to keep")
    return merged
