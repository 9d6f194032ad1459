"""The donor anonymizer: each stranger gets the face of a synthetic person who does not exist.

A packed bank of aligned MobileStyleGAN faces (``edge_agent/assets/donor_bank.npz``, model card
``DONOR_BANK.md``) supplies real skin, eyes and hair-line detail that no small generator could
invent on a CPU. Per face (numpy / OpenCV only):

1. **Fit**: landmarks that do not describe a face inside its box (:func:`landmarks_fit`: the
   off-centre case, profiles) get the head out of focus (:class:`HeadBlur`): a donor pasted
   through them would land beside the face and leave the person's own features visible. A second
   detection of one head (:func:`shadowed`) gets the same, under the main face's donor.
2. **Donor**: once per track, chosen deterministically from the track's seed among the donors
   nearest in pose (yaw, pitch) and skin tone (mirrored donors double the poses); kept for the
   track's life, so one synthetic person per track (checked with the recogniser at the track's
   first frame and again after the head turned or neared). Donors with a fringe, cap or hat over the
   upper forehead are never chosen (:func:`forehead_cover`): pasted, that hair lands on the
   stranger's bare forehead.
3. **Warp**: the donor's aligned crop is warped onto the stranger's 5 landmarks in template space:
   an affine fit for small faces, a thin-plate spline for large ones (eyes, nose and mouth land on
   the stranger's own). Crop side per size class (:data:`SIZE_CLASSES`): 64 px under
   ``SMALL_FACE_PX``, 256 px from ``LARGE_FACE_PX`` (for the donors the bank holds at 256 px),
   else 128 px, resampled once into the frame. Every track picks among the donors with a 256 px
   crop: a person walking up to a camera is first seen small, and its close-up would otherwise be
   its donor's 128 px crop enlarged.
4. **Scene**: the donor takes the stranger's colour means and luminance spread (brightness, colour
   cast, contrast; smoothed per track, so no flicker), the stranger's shading at a scale set by the
   *degree* knob, then the frame's blur and noise (matched in frame pixels, where they are seen).
5. **Paste**: the head ellipse is first blurred (:func:`base_layer`: strongly under and around the
   new face, over the forehead from the face's own pixels only so the hairline does not smear
   into it, lightly over hair and ears, fading out at the ellipse's rim so no oval shows) and
   given grain where the blur took texture away (:func:`with_grain`), then the donor face is
   blended in two bands: its coarse shading over a wide feather, its fine detail over a narrow
   one. A donor's hair on its upper forehead, its neck or collar under its chin and its
   background beside its cheeks are left out of the paste (:func:`without_off_face`): the
   stranger's blurred head shows there. Every pixel of the face is new or strongly blurred.

Any problem raises, and the pipeline falls back to classical redaction (fail closed).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

from edge_agent.align import similarity_transform, template
from edge_agent.anonymize import apparent_age
from edge_agent.anonymize.apparent_sex import SURE, ApparentSex, clash, unsure_cost
from edge_agent.anonymize.base import Anonymizer, TrackedAnonymizer, face_ellipse, face_region
from edge_agent.anonymize.descriptors import appearance, eyes_and_span, lab_pixels, pose, skin_mask, tone_mask
from edge_agent.anonymize.diffusion import MARGIN, BudgetExceeded, _blur, aligned_crop, shrunk
from edge_agent.anonymize.identity_check import IdentityCheck, drifted
from edge_agent.faces import Face

BANK = Path(__file__).resolve().parent.parent / "assets" / "donor_bank.npz"
BANK_SIDE = 128  # aligned crop side of the packed donors
BIG_SIDE = 256  # ...and of the close-up crops the bank holds for some of them
SMALL_FACE_PX = 56.0  # narrower faces are rendered from a 64 px crop, wider ones from 128 px...
LARGE_FACE_PX = 160.0  # ...and from 256 px from this width (a 128 px crop would be enlarged 1.4x and more)
SIZE_CLASSES = (64, BANK_SIDE, BIG_SIDE)
BIG_CACHE = 64  # decoded close-up donors kept (256 KB each)
PASTE_REACH = (0.9, 0.85, 1.12)  # paste ellipse: brow and chin in eye-to-mouth spans, half width in eye distances
TURN_SHIFT = 1.39  # a turned face's middle lies this many eye distances per unit of yaw toward its near cheek...
TURN_WIDEN = 0.84  # ...and its half width is this many more per unit |yaw| (the bank's face-mesh hulls: face_hulls)
PASTE_EDGE = 2.0  # eye distances from the eyes' middle: the near side stays inside the aligned crop (2.12)
YAW_CACHE = 128  # masks kept per (size, yaw step): 3 sizes x 23 steps of turn() fit, so none is computed twice
NEAREST = 12  # donors close in pose and tone among which the track's seed picks...
UNLIKE = 0.5  # ...first among this share of them the recogniser finds least like the stranger (:meth:`DonorAnonymizer._unlike_first`)
TRIES = 3  # candidates a track renders and checks at once (each a render and an embedding)...
CHILD_TRIES = 6  # ...a child's track (children's faces stand closer together for the recogniser: more fail the check)...
RETRY_FRAMES = 15  # ...and, all too close to the person, the next ones this many frames later (up to NEAREST in all)
RESEX_GROWTH = 1.3  # a track's face this many times as wide as when its donor was drawn is scored for apparent sex and age again
POSE_SCALE = np.array([0.08, 0.06], np.float32)  # yaw, pitch units: a "close" pose
TONE_SCALE = np.array([14.0, 4.0, 4.0], np.float32)  # L*, a*, b* units: a "close" skin tone
GREY_WEIGHTS = np.array([0.114, 0.587, 0.299], np.float32)  # B, G, R: OpenCV's grey level
GREY_CHROMA = 2.0  # a crop whose mean |a*|, |b*| is under this is a grey (infrared) image
TONE_CAP = 4.0  # the most one tone component adds to a donor's distance (two "close" units: its 12th nearest lies ~2 away in all)
STAT_SMOOTHING = 0.35  # weight of the current frame in the per-track colour statistics
MIRROR = (1, 0, 2, 4, 3)  # landmark order after a horizontal flip
TPS_LATTICE = 33  # thin-plate spline evaluated on this many nodes a side
SHARPEN_MAX = 1.0  # unsharp-mask amount cap: past it JPEG blocks and donor skin turn to crinkles (the rest is grain)
MAX_YAW = 0.55  # |yaw| beyond this (nose past ~half an eye distance off-centre) is a profile
SETTLE_FRAMES = 3  # after landmarks that did not fit, a face gets its donor back once they fit this many frames in a row
RIM_WEIGHT = 0.5  # the base layer's least weight inside the head ellipse (at its rim)
GRAIN_SCALE = 1 / 16  # the grain follows the texture the blur removed, measured at this share of the region
GRAIN_MAX = 4.0  # grey levels: the most grain put back (past it, hair reads as sand)
STRONG_BLUR = 1 / 20  # the blur under and around the new face, as a share of the head region's side
LIGHT_BLUR = 1 / 80  # the blur over hair and ears, as a share of the head region's side (1/160 kept more strands but raised LFW re-ID)...
VEIL_BLUR = 1 / 20  # ...and on a track the recogniser check found too close (:attr:`_Track.veiled`): the outline is what carries the person
HEAD_BLUR = 1 / 6  # a turned head's features: the blur, as a share of the head region's side...
HEAD_CORE = (0.05, 0.3)  # ...full from this depth into the region (0 rim, 1 centre), none below the first
REFINE_MIN_PX = 64  # narrower faces are not refined (the refiner's crop; see _refine)
REUSE_SHIFT = 0.02  # a face whose landmarks moved less than this share of its width since its last render...
REUSE_FRAMES = 8  # ...gets that render replayed, for up to this many frames (then drawn anew: light changes)
REACH = 1.1  # a render writes within the head ellipse's bounding box grown this much (checked)
SHADOW_SHARE = 0.25  # a face with this share of its box inside a surer face's box: a second detection, or a face behind
MAX_STRETCH = 1.5  # a small face's affine warp stretching more along one axis than this: its similarity (landmark_affine)
GEOMETRY_SWAP = 0.6  # at degree 2, this share of the face's 5-point layout is the donor's
FOREHEAD_BAND = 0.6  # eye-to-mouth spans above the eyes: the forehead from there up to the paste's top edge...
FOREHEAD_MAX = 0.5  # ...a donor with more than this share of it hair or headwear is never chosen
HAIR_DL, HAIR_DAB = 15.0, 12.0  # L* darker than the donor's skin, or a*b* this far from it: not skin
HAIR_TEXTURE = 2.5  # ...nor, on the forehead, fine texture this many times the cheeks' (a blond fringe is as light as skin)...
HAIR_TEXTURE_MIN = 3.0  # ...and at least this many grey levels (a smooth, noiseless face's skin is not hair)
OFF_FACE_FADE = 32  # the paste fades out over a donor's hair, collar or background with a blur of the crop side / this...
HAIR_BAND = 0.45  # ...from this many eye-to-mouth spans above the eyes up (the eyebrows lie below)...
CHIN_BAND = 0.5  # ...from this many below the mouth down (the lower chin and under it)...
SIDE_BAND = 0.6  # ...and, below the eyes, past this share of the paste's half width (beside the cheeks)...
TEMPLE_BAND = 0.85  # ...and, above them, past this share (the temples, out beyond the eyebrows' tails)
FEATHER = 0.25  # the paste's feather, in ellipse radii: coarse shading meets the frame over it...
DETAIL_FEATHER = 0.08  # ...fine detail over this much (two-band blend, :func:`paste`)
OWN_BLUR_FROM = 0.5  # eye-to-mouth spans above the eyes: from there up the strong blur is of the face's own pixels (:func:`core_blur`)
ANGLES = np.linspace(0.0, np.pi, 24, endpoint=False)  # directions a scene's blur is looked for in
MOTION_FLOOR = 2.5  # a smear (match_smear): the original weaker against the donor along one direction than across it by this much...
OWN_FLOOR = 1.25  # ...and against its own coarser scale by this much...
MAX_APART = np.radians(20)  # ...in directions this close (either alone also fired on sharp faces, one face's features against another's)
SMEAR_MIN_PX = 48  # a smaller paste is not looked at for a smear (a few pixels of detail: it fired on sharp 40 px faces)
SMEAR_BLOCKS = 3  # the paste cut into this many blocks a side: the smear must show in...
SMEAR_SHARE = 0.7  # ...this share of them, against their own coarser scale (smeared_throughout)...
OWN_SCALE = 1 / 40  # ...taken at this share of the paste's side (at least 1.5 px; hair strands are a few px wide, features wider)
MOTION_SLACK = 1.3  # what of a smear is left unmatched (matched whole, a donor with glasses came out smeared past the scene)
ROUNDING_VAR = 1 / 12  # grey levels^2: the variance rounding to uint8 adds (a white noise: 20x that in the Laplacian's variance)
DETAIL_SIGMA = 1.5  # frame px: the split between the fine band and the coarse one


# -- geometry ----------------------------------------------------------------------------------
def paste_ellipse(size: int, yaw: float = 0.0) -> tuple[tuple[float, float], tuple[float, float]]:
    """(centre, semi-axes) of the pasted face in template space: brow to below the chin, cheek to
    cheek (the skin a viewer reads as the face), from the aligned template so it scales. ``yaw``:
    the face's turn (:func:`~edge_agent.anonymize.descriptors.pose`); in the aligned crop a turned
    face lies toward its near cheek and is wider (``TURN_SHIFT``, ``TURN_WIDEN``). Centred on the
    eyes, the paste left a turned stranger's near cheek beside the new face and laid the new face's
    far side, or its background, over what lies behind the far cheek: a pale glow."""
    t = template(size, MARGIN)
    eyes_y, span = eyes_and_span(size)
    top, bottom = eyes_y - PASTE_REACH[0] * span, eyes_y + (1.0 + PASTE_REACH[1]) * span
    eye_d = float(t[1, 0] - t[0, 0])
    # eye distances from the eyes' middle to each side: the near one stops inside the crop, the far
    # one never (it covers the far eye)
    far = PASTE_REACH[2] - (TURN_SHIFT - TURN_WIDEN) * abs(yaw)
    near = min(PASTE_REACH[2] + (TURN_SHIFT + TURN_WIDEN) * abs(yaw), PASTE_EDGE)
    left, right = (-near, far) if yaw >= 0 else (-far, near)
    return (float(t[:, 0].mean()) + (left + right) / 2 * eye_d, float(top + bottom) / 2), ((right - left) / 2 * eye_d, float(bottom - top) / 2)


@lru_cache(maxsize=YAW_CACHE)
def paste_masks(size: int, yaw: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(feathered alpha, sharp alpha, hard mask, inner skin mask) of the pasted face in template
    space (``yaw``: :func:`paste_ellipse`, rounded by :func:`turn`). The donor's coarse shading is
    blended over the wide feather (no seam), its fine detail over the sharp one (no soft ring of
    the blurred base showing through: see :func:`paste`)."""
    (cx, cy), (ax, ay) = paste_ellipse(size, yaw)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    alpha = np.clip((1.0 - r) / FEATHER, 0.0, 1.0).astype(np.float32)
    sharp = np.clip((1.0 - r) / DETAIL_FEATHER, 0.0, 1.0).astype(np.float32)
    inner = r <= 0.8
    return alpha, sharp, (r <= 1.0), inner


def turn(landmarks: np.ndarray) -> float:
    """A face's yaw for :func:`paste_masks`: in steps of 0.05 (the masks are cached per step), within ``MAX_YAW``."""
    return float(np.clip(np.round(pose(landmarks)[0] * 20.0) / 20.0, -MAX_YAW, MAX_YAW))


@lru_cache(maxsize=YAW_CACHE)
def forehead_band(size: int, low: float = FOREHEAD_BAND, yaw: float = 0.0) -> np.ndarray:
    """The top of the pasted ellipse (template space; ``yaw``: :func:`paste_ellipse`) down to ``low``
    eye-to-mouth spans above the eyes: the upper forehead, where a donor's fringe, cap or hat would
    be pasted onto a stranger's bare forehead."""
    (cx, cy), (ax, ay) = paste_ellipse(size, yaw)
    eyes_y, span = eyes_and_span(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0) & (yy < eyes_y - low * span)


def not_skin(crop: np.ndarray, region: np.ndarray, shade_is_skin: bool = False) -> np.ndarray:
    """Bool mask of ``region`` (an aligned crop's template space) where the crop is not skin:
    darker than its cheeks' L* by ``HAIR_DL`` or ``HAIR_DAB`` away from their a*b* (hair, a cap,
    a collar, the background; a bald head's highlights stay skin). ``shade_is_skin``: brighter
    by ``HAIR_DL`` instead of darker (beside a cheek, where a turned face's shaded side is still
    its face and a background is as often bright)."""
    tone = appearance(crop)[:3]
    lab = lab_pixels(crop, region)
    out = np.zeros(region.shape, bool)
    lum = lab[:, 0] > tone[0] + HAIR_DL if shade_is_skin else lab[:, 0] < tone[0] - HAIR_DL
    out[region] = lum | (np.sqrt(((lab[:, 1:] - tone[1:]) ** 2).sum(1)) > HAIR_DAB)
    return out


def strands(crop: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Bool mask of ``region`` (template space) where the aligned crop has hair's fine texture:
    a local high-pass energy ``HAIR_TEXTURE`` times its cheeks' and more. A blond or light-brown
    fringe has the skin's lightness and nearly its colour, so :func:`not_skin` passes it; pasted
    onto a bare forehead it read as streaks (seen on a zoom-in clip of the deepface photos)."""
    side = crop.shape[0]
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    fine = grey - cv2.GaussianBlur(grey, (0, 0), side / 128)
    energy = np.sqrt(cv2.GaussianBlur(fine * fine, (0, 0), side / 64))
    floor = max(HAIR_TEXTURE * float(np.percentile(energy[tone_mask(side)], 25)), HAIR_TEXTURE_MIN)
    return region & (energy > floor)


def forehead_cover(crop: np.ndarray) -> float:
    """Share of an aligned crop's upper forehead (:func:`forehead_band`) that is hair or headwear."""
    band = forehead_band(crop.shape[0])
    return float((not_skin(crop, band) | strands(crop, band))[band].mean())


def clear_forehead(jpeg: np.ndarray) -> bool:
    """May the donor whose aligned crop these JPEG bytes hold be chosen: does it decode, and is
    its upper forehead at most ``FOREHEAD_MAX`` hair or headwear (:func:`forehead_cover`, scanned
    at half size)? The bank builder and :meth:`DonorBank.clear` apply the same rule."""
    small = cv2.imdecode(jpeg, cv2.IMREAD_REDUCED_COLOR_2)
    return small is not None and forehead_cover(small) <= FOREHEAD_MAX


@lru_cache(maxsize=YAW_CACHE)
def rim_bands(size: int, yaw: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The paste's (top and bottom, sides) in template space: the forehead from ``HAIR_BAND``
    eye-to-mouth spans above the eyes up and from ``CHIN_BAND`` spans below the mouth down, where
    a donor's fringe, or its neck shadow, collar or background under a chin that sits higher than
    the stranger's, would be pasted onto the stranger's forehead or chin; and below the eyes the
    outer part of each side (``SIDE_BAND``), where the background beside a cheek narrower or more
    turned than the stranger's would be pasted onto the stranger's cheek. ``yaw``: the paste's
    (:func:`paste_ellipse`)."""
    (cx, cy), (ax, ay) = paste_ellipse(size, yaw)
    eyes_y, span = eyes_and_span(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
    top_bottom = forehead_band(size, HAIR_BAND, yaw) | (inside & (yy > eyes_y + (1.0 + CHIN_BAND) * span))
    out = np.abs(xx - cx) / ax
    sides = inside & np.where(yy > eyes_y, out > SIDE_BAND, (yy > eyes_y - HAIR_BAND * span) & (out > TEMPLE_BAND)) & ~top_bottom
    return top_bottom, sides


def off_face(crop: np.ndarray, yaw: float = 0.0) -> np.ndarray:
    """Bool mask of an aligned donor crop's :func:`rim_bands` at the crop's own ``yaw``
    (:func:`turn`: the paste of a stranger turned as the donor is) that is not its face
    (:func:`not_skin`; on the forehead also a light fringe, :func:`strands`; beside the cheeks a
    shaded cheek is face)."""
    top_bottom, sides = rim_bands(crop.shape[0], yaw)
    fringe = strands(crop, forehead_band(crop.shape[0], HAIR_BAND, yaw))
    return not_skin(crop, top_bottom) | fringe | not_skin(crop, sides, shade_is_skin=True)


def without_off_face(alpha: np.ndarray, sharp: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paste's masks (template space) faded where the warped donor is not its face at the
    paste's top, bottom and sides (``off``: 0-1, :func:`off_face` warped with the donor): the
    stranger's strongly blurred head shows there instead. On close-ups a donor's fringe, cut off
    by the paste's top edge and pasted onto a bare forehead, read as a dark comb of streaks, a
    donor's collar under its chin as a coloured patch, and a turned donor's background beside its
    cheek as a white, green or orange crescent on the stranger's jaw."""
    size = alpha.shape[0]
    keep = 1.0 - np.clip(cv2.GaussianBlur(off, (0, 0), size / OFF_FACE_FADE) * 2.0, 0.0, 1.0)
    return alpha * keep, sharp * keep


def landmarks_fit(face: Face) -> bool:
    """Do the 5 landmarks describe a face that fills its box? False for the off-centre case (a
    small face-shaped constellation on the forehead of a big box), collapsed or crossed points,
    and profiles too steep for a frontal donor."""
    lm = np.asarray(face.landmarks, np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        return False
    x1, y1, x2, y2 = (float(v) for v in face.box)
    w, h = x2 - x1, y2 - y1
    if w <= 2 or h <= 2:
        return False
    yaw = abs(pose(lm)[0])
    if yaw > MAX_YAW:  # a profile: a frontal donor cannot be warped onto it
        return False
    turn = min(yaw / MAX_YAW, 1.0)  # a turned head's landmarks sit off its box's centre, and closer
    eye_d = float(np.hypot(*(lm[1] - lm[0])))
    if not (0.25 - 0.08 * turn) * w <= eye_d <= 0.75 * w:
        return False
    if lm[1, 0] <= lm[0, 0] or lm[4, 0] <= lm[3, 0]:  # eyes / mouth corners crossed
        return False
    # the pasted ellipse, mapped to the frame, must sit on the box
    t = template(BANK_SIDE, MARGIN)
    try:
        m = similarity_transform(lm.astype(np.float32), t)
    except ValueError:
        return False
    inv = cv2.invertAffineTransform(m)
    (cx, cy), (ax, ay) = paste_ellipse(BANK_SIDE)
    centre = inv @ np.array([cx, cy, 1.0])
    scale = float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))
    if abs(centre[0] - (x1 + x2) / 2) > (0.15 + 0.15 * turn) * w or abs(centre[1] - (y1 + y2) / 2) > 0.2 * h:
        return False
    if not 0.65 * w <= 2 * ax * scale <= 1.6 * w:
        return False
    # residual of the 5 points against the template (in eye distances): not a face layout
    fitted = lm @ m[:, :2].T + m[:, 2]
    resid = float(np.sqrt(((fitted - t) ** 2).sum(1)).max()) / float(t[1, 0] - t[0, 0])
    return resid <= 0.45


def shadowed(faces: Sequence[Face]) -> list[Face]:
    """The faces with ``SHADOW_SHARE`` of their box inside the box of a face the detector is surer
    of (or, equally sure, a larger one; a duplicate: the one listed first): one head, two
    detections, or a face half hidden behind another. On the demo clip a face-like constellation on
    a close-up's forehead (score 0.66) kept its track for frames after and got a second donor face
    over the head's hair, beside the first; and an out-of-focus face behind a laughing one, a third
    of its box hidden, got a dark, skull-like donor cut off by its neighbour's head."""
    if len(faces) < 2:
        return []
    boxes = np.array([np.asarray(f.box, np.float64)[:4] for f in faces])
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    x1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inside = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None) / area[:, None]  # [i, j]: share of i inside j
    score = np.array([float(f.score) for f in faces])
    # [i, j]: j is surer than i (a higher score; equal: larger; the same box: listed first)
    rank = np.lexsort((np.arange(len(faces)), -area, -score))
    order = np.empty(len(faces), int)
    order[rank] = np.arange(len(faces))
    surer = order[None, :] < order[:, None]
    np.fill_diagonal(inside, 0.0)
    return [f for f, hit in zip(faces, ((inside >= SHADOW_SHARE) & surer).any(axis=1)) if hit]


def tps_grid(dst_pts: np.ndarray, src_pts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Thin-plate spline remap grids: output pixel at ``dst_pts`` samples ``src_pts``; the crop's
    border is pinned so the warp stays local to the face. The spline is smooth, so it is evaluated
    on a 33x33 lattice and the maps are interpolated (a tenth of the cost of every pixel)."""
    edge = np.array([[0, 0], [size / 2, 0], [size, 0], [size, size / 2], [size, size], [size / 2, size], [0, size], [0, size / 2]], np.float64)
    p = np.vstack([dst_pts, edge]).astype(np.float64)
    q = np.vstack([src_pts, edge]).astype(np.float64)
    n = len(p)

    def u(r2):
        return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-12)), 0.0)

    k = u(((p[:, None] - p[None]) ** 2).sum(-1))
    pp = np.hstack([np.ones((n, 1)), p])
    a = np.zeros((n + 3, n + 3))
    a[:n, :n], a[:n, n:], a[n:, :n] = k, pp, pp.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = q
    coef = np.linalg.solve(a + np.eye(n + 3) * 1e-8, rhs)
    lattice = np.linspace(0.0, size - 1.0, TPS_LATTICE)
    yy, xx = np.meshgrid(lattice, lattice, indexing="ij")
    g = np.stack([xx.ravel(), yy.ravel()], 1)
    kg = u(((g[:, None] - p[None]) ** 2).sum(-1))
    out = (kg @ coef[:n] + coef[n] + g @ coef[n + 1:]).reshape(TPS_LATTICE, TPS_LATTICE, 2).astype(np.float32)
    # lattice node k sits at pixel k * (size - 1) / (TPS_LATTICE - 1): resize with aligned corners
    full = _aligned_resize(out, size)
    return full[..., 0], full[..., 1]


def _aligned_resize(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a [L, L, C] lattice whose corners are the image's corner pixels."""
    L = grid.shape[0]
    pos = np.arange(size, dtype=np.float32) * (L - 1) / (size - 1)
    m = np.stack(np.meshgrid(pos, pos, indexing="xy"), -1)
    return cv2.remap(grid, m[..., 0], m[..., 1], cv2.INTER_LINEAR)


# -- the bank ---------------------------------------------------------------------------------
_CLEAR_FOREHEAD: dict[str, np.ndarray] = {}  # bank sha256 -> per donor: 1 may be chosen, 0 not, -1 not scanned yet


class DonorBank:
    """The packed synthetic faces: descriptors in memory, crops decoded on first use. Some donors
    also have a 256 px crop (``big``), drawn for close-ups instead of enlarging the 128 px one."""

    def __init__(self, path: str | Path = BANK) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"donor bank not found: {path}")
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        with np.load(path, allow_pickle=False) as z:
            self.jpeg, self.offsets = z["jpeg"], z["offsets"]
            self.landmarks = z["landmarks"].astype(np.float32)
            yaw, pitch, tone = z["yaw"], z["pitch"], z["tone"][:, :3]
            big = z["big"].astype(np.int64) if "big" in z.files else np.zeros(0, np.int64)
            male = z["male"].astype(np.float32) if "male" in z.files else np.full(len(yaw), np.nan, np.float32)
            child = z["child"].astype(np.float32) if "child" in z.files else np.full(len(yaw), np.nan, np.float32)
            occluded = z["occluded"].astype(bool) if "occluded" in z.files else np.zeros(len(yaw), bool)
            if len(big):
                self.jpeg_big, self.offsets_big = z["jpeg_big"], z["offsets_big"]
                self.landmarks_big = z["landmarks_big"].astype(np.float32)
        n = len(self.landmarks)
        if n < 2 or len(self.offsets) != n + 1:
            raise ValueError(f"{path}: malformed donor bank")
        if len(big) and (big.min() < 0 or big.max() >= n or len(self.offsets_big) != len(big) + 1 or len(self.landmarks_big) != len(big)):
            raise ValueError(f"{path}: malformed close-up crops")
        # every donor twice: as generated and mirrored (yaw negated, same pitch and tone)
        self.pose = np.concatenate([np.stack([yaw, pitch], 1), np.stack([-yaw, pitch], 1)]).astype(np.float32)
        self.tone = np.concatenate([tone, tone]).astype(np.float32)
        if len(male) != n:
            raise ValueError(f"{path}: malformed apparent-sex scores")
        if len(child) != n:
            raise ValueError(f"{path}: malformed apparent-age scores")
        if len(occluded) != n:
            raise ValueError(f"{path}: malformed occluder flags")
        self.male = np.concatenate([male, male])  # P(male) per donor, mirrors included (NaN: not scored)
        self.child = np.concatenate([child, child])  # P(child) per donor, likewise
        self.size = n
        self._big = np.full(n, -1, np.int64)  # donor -> its row among the close-up crops
        self._big[big] = np.arange(len(big))
        self._with_big = np.tile(self._big >= 0, 2)  # per index of :meth:`nearest`, mirrors included
        self._decoded: OrderedDict[int, np.ndarray] = OrderedDict()
        self._decoded_big: OrderedDict[int, np.ndarray] = OrderedDict()
        self._clear = _CLEAR_FOREHEAD.setdefault(self.sha256, np.full(n, -1, np.int8))
        self._clear[occluded] = 0  # a hand on the chin, sunglasses: never drawn

    def person(self, i: int) -> int:
        """The synthetic person behind index ``i`` of :meth:`nearest` (a mirror is its donor's)."""
        return int(i) % self.size

    def has_big(self, i: int) -> bool:
        """Does donor ``i`` have a 256 px crop?"""
        return self._row(i, True) >= 0

    def _row(self, i: int, big: bool) -> int:
        """Donor ``i``'s row among the close-up crops when ``big`` and it has one, else -1."""
        return int(self._big[int(i) % self.size]) if big else -1

    def nearest(self, yaw: float, pitch: float, tone: np.ndarray, k: int = NEAREST, big: bool = False, male: float = np.nan,
                child: float = np.nan, worn: Collection[int] = ()) -> np.ndarray:
        """Indices (``>= size``: mirrored) of the ``k`` donors closest in pose and skin tone (a NaN
        component of ``tone`` is not compared), among
        those that may be chosen (:meth:`clear`; a bank with fewer such donors: among all).
        ``big``: among those with a 256 px crop, when the bank has any (a face that may come close).
        ``male``: the stranger's apparent-sex score; donors sure of the other sex are left out
        (:func:`~edge_agent.anonymize.apparent_sex.clash`), unless that leaves fewer than ``k``, and
        those of no sure sex count as farther (:func:`~edge_agent.anonymize.apparent_sex.unsure_cost`).
        ``child``: the stranger's P(child); a child draws among child donors, anyone else among
        the others (:func:`~edge_agent.anonymize.apparent_age.clash`), unless that leaves fewer
        than ``k``; a child's donor is not held to a sure sex (the children are labelled unsure),
        and for an adult a teenager counts as farther (:func:`~edge_agent.anonymize.apparent_age.unsure_cost`).
        ``worn``: donors (:meth:`person`) other faces wear; they and their mirrors are left out,
        unless that leaves fewer than ``k``."""
        # each tone component counts up to TONE_CAP: under a coloured stage light no donor's skin
        # is near the stranger's, and uncapped the colour outweighed the pose (a child turned to one
        # side was drawn onto a frontal face under green light, torn apart by the warp)
        d = (((self.pose - (yaw, pitch)) / POSE_SCALE) ** 2).sum(1) + np.nansum(np.minimum(((self.tone - tone[:3]) / TONE_SCALE) ** 2, TONE_CAP), 1)
        d = d + (0.0 if apparent_age.is_child(child) else unsure_cost(male, self.male) + apparent_age.unsure_cost(child, self.child))
        if big and self._with_big.any():
            d = np.where(self._with_big, d, np.inf)
        taken = np.isin(np.arange(len(d)) % self.size, np.fromiter(worn, np.int64))
        for other in (apparent_age.clash(child, self.child), clash(male, self.male), taken):
            if np.isfinite(np.where(other, np.inf, d)).sum() >= k:
                d = np.where(other, np.inf, d)
        order = np.argsort(d, kind="stable")
        picked = list(islice((i for i in order if np.isfinite(d[i]) and self.clear(i)), k))
        return np.array(picked if len(picked) == min(k, len(order)) else order[:k])

    def clear(self, i: int) -> bool:
        """May donor ``i`` be chosen? Not when a fringe, cap or hat covers its upper forehead
        (:func:`forehead_cover`): pasted, it would paint hair onto a bare forehead. Scanned at half
        size the first time a choice reaches the donor: the whole bank was scanned at every start.
        Nor when the bank flags it ``occluded`` (a hand on its chin, sunglasses)."""
        base = int(i) % self.size
        if self._clear[base] < 0:
            self._clear[base] = int(clear_forehead(self.jpeg[self.offsets[base]:self.offsets[base + 1]]))
        return bool(self._clear[base])

    def _decode(self, data: np.ndarray, side: int, landmarks: np.ndarray, what: str) -> np.ndarray:
        """BGRA: the crop, and what of its paste is not its face (:func:`off_face`) as alpha."""
        crop = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if crop is None or crop.shape != (side, side, 3):
            raise ValueError(f"{what} does not decode")
        return np.dstack([crop, off_face(crop, turn(landmarks)).astype(np.uint8) * 255])

    def _entry(self, i: int, big: bool) -> np.ndarray:
        base = int(i) % self.size
        row = self._row(i, big)
        cache, limit = (self._decoded_big, BIG_CACHE) if row >= 0 else (self._decoded, 256)
        entry = cache.get(base)
        if entry is None:
            if row >= 0:
                entry = self._decode(self.jpeg_big[self.offsets_big[row]:self.offsets_big[row + 1]], BIG_SIDE, self.landmarks_big[row],
                                     f"close-up donor {base}")
            else:
                entry = self._decode(self.jpeg[self.offsets[base]:self.offsets[base + 1]], BANK_SIDE, self.landmarks[base], f"donor {base}")
            cache[base] = entry
            while len(cache) > limit:
                cache.popitem(last=False)
        return entry if i < self.size else entry[:, ::-1]

    def donor(self, i: int, big: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(BGR uint8 [side, side, 3], landmarks [5, 2]) of donor ``i`` (mirrored when >= size):
        its 256 px crop when ``big`` and it has one, else its 128 px crop."""
        base = int(i) % self.size
        row = self._row(i, big)
        lm, side = (self.landmarks_big[row], BIG_SIDE) if row >= 0 else (self.landmarks[base], BANK_SIDE)
        if i >= self.size:
            lm = np.stack([side - 1 - lm[:, 0], lm[:, 1]], 1)[list(MIRROR)]
        return np.ascontiguousarray(self._entry(i, big)[..., :3]), lm.astype(np.float32)

    def off_face(self, i: int, big: bool = False) -> np.ndarray:
        """uint8 [side, side] (255: not its face) over donor ``i``'s forehead, under its chin and
        beside its cheeks, on the crop :meth:`donor` gives: what the paste leaves out (:func:`without_off_face`; the
        bands are the donor's own yaw's, so a mirror's, at the negated yaw, is the mirrored mask)."""
        return np.ascontiguousarray(self._entry(i, big)[..., 3])


# -- appearance -------------------------------------------------------------------------------
@dataclass
class ColourStats:
    """The skin's colour (per-channel BGR medians over cheeks and nose, or the upper face above a
    surgical mask: :func:`~edge_agent.anonymize.descriptors.skin_mask`) and the luminance spread
    over the inner face (contrast)."""

    mean: np.ndarray  # [3] B, G, R
    spread: float  # std of the grey level

    @classmethod
    def of(cls, bgr: np.ndarray, inner: np.ndarray, skin: np.ndarray | None = None) -> "ColourStats":
        """``skin``: where the skin's colour is read, when the caller has it (else :func:`skin_mask`)."""
        skin = bgr[skin_mask(bgr) if skin is None else skin].astype(np.float32)
        grey = bgr[inner].astype(np.float32) @ GREY_WEIGHTS
        return cls(np.median(skin, 0), max(float(grey.std()), 1.0))

    def blend(self, new: "ColourStats", weight: float) -> "ColourStats":
        return ColourStats(self.mean + weight * (new.mean - self.mean), self.spread + weight * (new.spread - self.spread))


def shading_sigma(degree: float, size: int) -> float:
    """Scale of the stranger's shading put onto the donor: 4 % of the crop at degree 0 (faithful,
    re-identifiable), 20 % at degree >= 1 (the light's direction only)."""
    return size * (0.04 + 0.16 * float(np.clip(degree, 0.0, 1.0)))


def skin_tone(crop: np.ndarray) -> np.ndarray:
    """[L*, a*, b*] of an aligned crop's skin for the donor choice; a*, b* NaN (not compared) on a
    grey image (an infrared camera): there every donor's colour was equally far, and the palest,
    mostly children's, came first."""
    tone = appearance(crop)[:3].copy()
    lab = cv2.cvtColor(crop, cv2.COLOR_BGR2LAB).astype(np.float32)
    if float(np.abs(lab[..., 1:] - 128.0).mean()) < GREY_CHROMA:
        tone[1:] = np.nan
    return tone


def _colourfulness(bgr: np.ndarray, inner: np.ndarray, cast: np.ndarray) -> float:
    """Mean distance of the pixels under ``inner`` from their grey level tinted by ``cast``."""
    px = bgr[inner].astype(np.float32)
    return float(np.linalg.norm(px - (px @ GREY_WEIGHTS)[:, None] * cast, axis=1).mean())


def transfer(donor: np.ndarray, original: np.ndarray, mask: np.ndarray, inner: np.ndarray,
             target: ColourStats, degree: float, original_skin: np.ndarray | None = None) -> np.ndarray:
    """Donor (float32 BGR) given the stranger's brightness and colour cast (channel medians of the
    skin, as per-channel gains), at most the stranger's colourfulness, contrast (one gain on all channels, so a dark, flat scene also
    mutes the donor's colours instead of over-saturating them) and, below degree 2, the
    stranger's low-frequency shading. ``original_skin``: :func:`skin_mask` of ``original``, when
    the caller has it."""
    # the cast and brightness as a per-channel gain (a light's colour scales each channel): shifted
    # instead, under a green or blue stage light a donor's beard and lips went below zero in the
    # other channels and came out as saturated green or blue blotches
    skin = skin_mask(donor)
    scaled = donor * (target.mean / np.maximum(ColourStats.of(donor, inner, skin).mean, 8.0))
    # no more colour than the scene shows around its cast: on an infrared (grey) camera the donor's
    # pink lips and ruddy cheeks stayed in colour on a grey face
    cast = target.mean / max(float(target.mean @ GREY_WEIGHTS), 1.0)
    neutral = (scaled @ GREY_WEIGHTS)[..., None] * cast
    keep = min(_colourfulness(original, inner, cast) / max(_colourfulness(scaled, inner, cast), 1e-3), 1.0)
    scaled = neutral + keep * (scaled - neutral)
    src = ColourStats.of(np.clip(scaled, 0, 255), inner, skin)
    gain = float(np.clip(target.spread / src.spread, 0.2, 1.3))
    # the contrast on the grey level only, each pixel's channels scaled alike: a shadow the gain
    # takes below black goes black, not to the colour of the channels that stayed above it
    grey = scaled @ GREY_WEIGHTS
    level = float(target.mean @ GREY_WEIGHTS)
    out = scaled * (np.maximum((grey - level) * gain + level, 0.0) / np.maximum(grey, 1.0))[..., None]
    shade = float(np.clip(2.0 - degree, 0.0, 1.0))
    if shade > 0:
        sig = shading_sigma(degree, donor.shape[0])
        m = mask.astype(np.float32)
        g_o = cv2.cvtColor(original, cv2.COLOR_BGR2GRAY).astype(np.float32)
        g_d = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY).astype(np.float32)
        lo = _blur(np.dstack([g_o * m, g_d * m, m]), sig)  # normalised blurs: the background stays out
        wsum = lo[..., 2] + 1e-4
        lo_o, lo_d = lo[..., 0] / wsum, lo[..., 1] / wsum
        delta = lo_o - lo_d
        delta -= np.median(delta[skin_mask(original) if original_skin is None else original_skin])  # the skin's level stays the target's
        out += (shade * delta)[..., None]
    return out


def _detail(gray: np.ndarray, mask: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_32F)[mask].std())


def _noise(gray: np.ndarray, mask: np.ndarray) -> float:
    """Sensor-noise estimate: robust spread of the finest band (median filters out edges)."""
    hp = gray - cv2.medianBlur(gray, 3)
    return float(1.4826 * np.median(np.abs(hp[mask])))


def _gradient_tensor(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """2x2 mean outer product of the grey image's gradient over ``mask``."""
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)[mask], cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)[mask]
    xy = float(np.mean(gx * gy))
    return np.array([[np.mean(gx * gx), xy], [xy, np.mean(gy * gy)]], np.float64)


def blur_direction(t_o: np.ndarray, t_d: np.ndarray) -> tuple[float, float]:
    """(angle in radians, strength) of a directional blur of an image against a reference, from
    their :func:`_gradient_tensor` s over the same pixels: the direction in which the image's
    gradient energy falls furthest below the reference's (a motion blur wipes the gradients along
    the motion), and by how much more than in the direction where it falls least."""
    u = np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1)
    ratio = np.einsum("ni,ij,nj->n", u, t_o, u) / np.maximum(np.einsum("ni,ij,nj->n", u, t_d, u), 1e-6)
    k = int(np.argmin(ratio))
    return float(ANGLES[k]), float(ratio.max() / max(ratio[k], 1e-9))


def smear(img: np.ndarray, sigma: float, angle: float) -> np.ndarray:
    """A Gaussian blur of ``sigma`` px in direction ``angle`` only (a motion blur's look)."""
    r = int(np.ceil(3.0 * sigma))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    kernel = np.exp(-0.5 * ((u / sigma) ** 2 + (v / 0.5) ** 2))
    return cv2.filter2D(img, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def match_smear(donor: np.ndarray, g_o: np.ndarray, g_d: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(donor, its grey) smeared along the scene's motion blur until its gradients along the smear
    have fallen as far against those across it as the original's (less ``MOTION_SLACK``): the
    even blur of :func:`match_camera` alone matched the detail but kept the donor's eyes, brows and
    glasses crisp in a moving or panning shot. A smear is taken as one when the original is
    weaker along a direction against the donor (``MOTION_FLOOR``) and against its own coarser
    scale (``OWN_FLOOR``: one face's features against another's also differ by direction), the
    two directions agreeing (``MAX_APART``); else the donor is left as it is."""
    if mask.sum() < SMEAR_MIN_PX ** 2:
        return donor, g_d
    t_o = _gradient_tensor(g_o, mask)
    angle, strength = blur_direction(t_o, _gradient_tensor(g_d, mask))
    own_angle, own_strength = blur_direction(t_o, _gradient_tensor(cv2.GaussianBlur(g_o, (0, 0), 1.5), mask))
    apart = abs((angle - own_angle + np.pi / 2) % np.pi - np.pi / 2)
    if strength < MOTION_FLOOR or own_strength < OWN_FLOOR or apart > MAX_APART or not smeared_throughout(g_o, mask, angle):
        return donor, g_d
    u = np.array([np.cos(angle), np.sin(angle)])
    v = np.array([-u[1], u[0]])
    # the original's energy along / across, less what one face's features differ from another's
    want = MOTION_SLACK * (u @ t_o @ u) / max(v @ t_o @ v, 1e-9)

    def along_across(sigma: float) -> float:
        t = _gradient_tensor(smear(g_d, sigma, angle), mask)
        return (u @ t @ u) / max(v @ t @ v, 1e-9)

    lo, hi = 0.0, max(4.0, float(np.sqrt(mask.sum())) / 10.0)
    if along_across(hi) > want:
        lo = hi
    for _ in range(6):
        mid = (lo + hi) / 2
        if along_across(mid) > want:
            lo = mid
        else:
            hi = mid
    return smear(donor, hi, angle), smear(g_d, hi, angle)


def smeared_throughout(g_o: np.ndarray, mask: np.ndarray, angle: float) -> bool:
    """Is the original weaker along ``angle`` than across it, against its own coarser scale
    (``OWN_SCALE`` of the paste's side), in ``SMEAR_SHARE`` of the paste's blocks? A motion blur
    smears every part of a face; a sharp close-up's hair strands or a striped collar run one way in
    a few parts only, and alone they passed the whole-face tests (a 520 px face with long straight
    hair got its donor smeared down to blobs)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    coarse = cv2.GaussianBlur(g_o, (0, 0), max(1.5, float(np.sqrt(mask.sum())) * OWN_SCALE))
    agree = counted = 0
    for by in range(SMEAR_BLOCKS):
        for bx in range(SMEAR_BLOCKS):
            rows = slice(y0 + (y1 - y0) * by // SMEAR_BLOCKS, y0 + (y1 - y0) * (by + 1) // SMEAR_BLOCKS)
            cols = slice(x0 + (x1 - x0) * bx // SMEAR_BLOCKS, x0 + (x1 - x0) * (bx + 1) // SMEAR_BLOCKS)
            m = mask[rows, cols]
            if m.sum() < 0.5 * m.size:  # a block mostly outside the paste
                continue
            counted += 1
            a, strength = blur_direction(_gradient_tensor(g_o[rows, cols], m), _gradient_tensor(coarse[rows, cols], m))
            agree += strength >= OWN_FLOOR and abs((angle - a + np.pi / 2) % np.pi - np.pi / 2) <= MAX_APART
    return counted > 0 and agree >= SMEAR_SHARE * counted


def match_camera(donor: np.ndarray, original: np.ndarray, mask: np.ndarray, rng: np.random.Generator, upscale: float = 1.0) -> np.ndarray:
    """Donor (float32 BGR, frame pixels) blurred or sharpened so that its Laplacian detail matches
    the original's at the same pixels, then given the original's noise floor. ``upscale`` (frame
    pixels per crop pixel) sets the sharpening scale: an enlarged crop's finest detail is that much
    coarser."""
    if mask.sum() < 16:
        return donor
    g_o = cv2.cvtColor(original, cv2.COLOR_BGR2GRAY).astype(np.float32)
    # the original's detail and noise include its rounding to whole grey levels, which the paste's
    # uint8 output adds to the donor again: matched as measured, a defocused close-up's donor came
    # out more detailed than the scene (whose only fine detail is that rounding)
    target = np.sqrt(max(_detail(g_o, mask) ** 2 - 20.0 * ROUNDING_VAR, 0.0))
    g_d = cv2.cvtColor(np.asarray(donor, np.float32), cv2.COLOR_BGR2GRAY)
    out, g_d = match_smear(np.asarray(donor, np.float32), g_o, g_d, mask)
    have = _detail(g_d, mask)
    if have > target * 1.05:
        lo, hi = 0.0, 4.0
        # a close-up far out of focus needs more than 4 px: the bracket doubles while the blur at
        # its top still leaves the donor sharper, up to a tenth of the face's side
        limit = max(4.0, float(np.sqrt(mask.sum())) / 10.0)
        while hi < limit and _detail(cv2.GaussianBlur(g_d, (0, 0), hi), mask) > target:
            lo, hi = hi, min(2.0 * hi, limit)
        for _ in range(6):  # bisect the blur whose detail matches
            mid = (lo + hi) / 2
            if _detail(cv2.GaussianBlur(g_d, (0, 0), mid), mask) > target:
                lo = mid
            else:
                hi = mid
        if hi > 0.05:
            out = cv2.GaussianBlur(out, (0, 0), hi)
    elif have < target * 0.95 and have > 1e-3:
        amount = float(np.clip(2.0 * (target / have - 1.0), 0.0, SHARPEN_MAX))
        out = out + amount * (out - cv2.GaussianBlur(out, (0, 0), 0.8 * max(1.0, upscale)))
    g_now = cv2.cvtColor(np.asarray(out, np.float32), cv2.COLOR_BGR2GRAY)
    # the camera's noise floor, or the fine detail still missing after the capped sharpening
    # (an enlarged donor has none to sharpen; past the cap JPEG blocks turn to crinkles)
    missing = np.sqrt(max(target ** 2 - _detail(g_now, mask) ** 2, 0.0)) / np.sqrt(20.0)
    add = max(np.sqrt(max(_noise(g_o, mask) ** 2 - ROUNDING_VAR - _noise(g_now, mask) ** 2, 0.0)), min(missing, GRAIN_MAX))
    if add > 0.3:
        out = out + (add * rng.standard_normal(out.shape[:2], dtype=np.float32))[..., None]
    return out


# -- the anonymizer ---------------------------------------------------------------------------
@dataclass
class _Track:
    donor: int  # bank index (>= bank.size: mirrored)
    stats: ColourStats | None = None  # smoothed stranger colour statistics
    safe: bool = True  # False: the check found it too similar to the person; classical instead
    rendered: int = -1  # frame number of its last donor render
    shown: int = -1  # frame number it last showed its donor (rendered or replayed)
    replay: _Replay | None = None  # its last render, where no other face came near
    checked: tuple[float, float, float, bool] | None = None  # its last passed recogniser check (IdentityCheck.passed)
    held: tuple[tuple[float, float, float, bool], int] | None = None  # (pose, frame) of a render that failed it
    tried: tuple[int, ...] = ()  # donors the check found too close to the person (not tried again)
    retry_at: int = 0  # an unsafe track tries its next candidates from this frame on
    scored_width: float = 0.0  # face width (px) at its donor's draw or its last apparent-sex score
    veiled: bool = False  # its hair and ears under ``VEIL_BLUR``: a render of it failed the check with them lightly blurred


@dataclass
class _Replay:
    """The pixels a render wrote (``mask`` inside the ``box`` rows/cols), to write again while the
    face stays where it was: a still crowd then costs a copy per face, not a render."""

    landmarks: np.ndarray
    frame_shape: tuple[int, ...]
    frame_no: int
    rows: slice
    cols: slice
    pixels: np.ndarray
    mask: np.ndarray

    @classmethod
    def of(cls, face: Face, frame: np.ndarray, area: tuple[slice, slice], before: np.ndarray, frame_no: int) -> _Replay | None:
        """The render's changed pixels; None when any lies on an edge of the area inside the
        frame (it may have written beyond it, where another face could be)."""
        mask = np.any(frame[area] != before, axis=2)
        rows, cols = area
        h, w = frame.shape[:2]
        if ((rows.start > 0 and mask[0].any()) or (rows.stop < h and mask[-1].any())
                or (cols.start > 0 and mask[:, 0].any()) or (cols.stop < w and mask[:, -1].any())):
            return None
        return cls(np.asarray(face.landmarks, np.float32).copy(), frame.shape, frame_no, area[0], area[1], frame[area].copy(), mask)

    def fits(self, face: Face, frame_shape: tuple[int, ...]) -> bool:
        moved = float(np.abs(np.asarray(face.landmarks, np.float32) - self.landmarks).max())
        return frame_shape == self.frame_shape and moved <= REUSE_SHIFT * max(face.width, 1.0)

    def write(self, frame: np.ndarray) -> None:
        np.copyto(frame[self.rows, self.cols], self.pixels, where=self.mask[..., None])


def reach(face: Face, frame_shape: tuple[int, ...] | None = None) -> tuple[slice, slice]:
    """Rows/cols of the head ellipse's bounding box (grown by ``REACH``), clipped to ``frame_shape`` when
    given: where a render of ``face`` writes, and the hidden pixels another face's replay must
    not touch."""
    (cx, cy), (ax, ay), angle = face_ellipse(face)
    c, s = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
    hw, hh = REACH * np.hypot(ax * c, ay * s), REACH * np.hypot(ax * s, ay * c)
    h, w = frame_shape[:2] if frame_shape is not None else (1 << 30, 1 << 30)
    return (slice(max(int(cy - hh), 0), min(int(np.ceil(cy + hh)), h)),
            slice(max(int(cx - hw), 0), min(int(np.ceil(cx + hw)), w)))


def _overlap(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    return a[0].start < b[0].stop and b[0].start < a[0].stop and a[1].start < b[1].stop and b[1].start < a[1].stop


class DonorAnonymizer(TrackedAnonymizer):
    """Strangers become synthetic people from the donor bank (see the module docstring).

    Parameters
    ----------
    bank_path: the packed bank (``edge_agent/assets/donor_bank.npz``).
    degree: identity change vs faithfulness to the scene. Shading: 0 puts the stranger's shading
        onto the donor at 4 % of the crop (faithful, most re-identifiable), 1 at 20 % (the light's
        direction only, default), 2 only the face's mean brightness, contrast and colour cast.
        Geometry (:func:`geometry_kept`): the warp keeps the stranger's 5-point proportions fully
        up to 0.5, 80 % at 1, 40 % at 2 (the rest is the donor's own).
    min_face_px: narrower faces go to ``small_faces``.
    min_score: a new track whose detection the detector is less sure of also goes to
        ``small_faces`` (a synthetic face pasted on the back of a head, a hand or a logo is worse
        than a mosaic there); a track that has its donor keeps it through lower-scored frames.
    small_faces: the classical anonymizer for those faces and for tracks whose donor failed the
        check. Landmarks that do not fit a face get the head out of focus (:class:`HeadBlur`).
    embedder, max_similarity: the check at a track's first frame: the project's recogniser embeds
        the face before and after (:class:`~edge_agent.anonymize.identity_check.IdentityCheck`); at cosine >=
        ``max_similarity`` the next candidate donor is
        tried (up to 3), then ``small_faces``; the same recogniser puts the candidate donors least
        like the person first (:meth:`_unlike_first`). After the head turned or neared (:meth:`_drifted`)
        a render is checked again (in :meth:`end_frame`); one too close gets ``small_faces`` over
        it, and the face keeps ``small_faces`` until it moves (:meth:`_held`). ``embedder=None``
        skips both.
    budget_ms: per-frame time for *new* tracks (donor choice and check); later faces of a new
        track in that frame raise :class:`BudgetExceeded` (classical for that frame). A frame
        whose first render is a new track's always starts it: a crowd of new faces still moves.
    frame_budget_ms: per-frame time for all donor faces; faces after it raise
        :class:`BudgetExceeded` for that frame (the first face of a frame is always served).
        :meth:`priority` keeps donors where they are, then serves new and waiting faces. A face
        that barely moved since its render, with no other face of the frame near it (``faces``
        given to :meth:`begin_frame`), gets that render replayed (a copy) for up to
        ``REUSE_FRAMES`` frames, and past the budget: a still crowd fills with donors in turn.
    max_tracks: bound on remembered tracks (least recently used dropped).
    refiner: the distilled refiner (:class:`~edge_agent.anonymize.refine.Refiner`) that renders
        each composite of a face from ``REFINE_MIN_PX`` into the scene; it sees only the
        composite, and every refined face is checked with ``embedder`` (required with it): at
        ``max_similarity`` or above the refinement is undone. ``None``: composites as pasted.
    refine_budget_ms: per-frame time for refining; later faces of that frame keep the unrefined
        (already anonymized) composite.
    match_sex: a new track draws among donors of the stranger's apparent sex when the small
        classifier (:mod:`~edge_agent.anonymize.apparent_sex`) leans to one side.
    match_age: a new track the child-or-adult classifier (:mod:`~edge_agent.anonymize.apparent_age`)
        is sure is a child draws among child donors, any other among adults and teenagers.
    veil: every track's hair and ears under ``VEIL_BLUR`` (:attr:`_Track.veiled`); otherwise only
        a track whose render the check found too close. The agent veils every track when it has
        no recogniser to check with (:func:`~edge_agent.anonymize.donor_engine`): the outline is
        what carries the person (over 1,000 LFW identities the project's recogniser
        re-identified 2.4 % of plain renders, 0.6 % of veiled ones).
    """

    name = "donor"

    def __init__(
        self,
        bank_path: str | Path = BANK,
        degree: float = 1.0,
        min_face_px: float = 30.0,
        min_score: float = 0.65,
        small_faces: Anonymizer | None = None,
        embedder=None,
        max_similarity: float = 0.25,
        budget_ms: float | None = 25.0,
        frame_budget_ms: float | None = 60.0,
        max_tracks: int = 128,
        refiner=None,
        refine_budget_ms: float | None = 30.0,
        match_sex: bool = True,
        match_age: bool = True,
        veil: bool = False,
    ) -> None:
        from edge_agent.anonymize.classical import Pixelate

        if refiner is not None and embedder is None:
            raise ValueError("the donor refiner needs the embedder: each refined face is checked against the person")
        self.bank = DonorBank(bank_path)
        self.apparent_sex = ApparentSex() if match_sex else None
        self.apparent_age = apparent_age.ApparentAge() if match_age else None
        # Landmarks that do not fit a face, and a head's second detections: the head out of focus
        # (on the clips' identifiable turned heads the recogniser's worst cosine to the original,
        # over jittered points, was 0.285 for it, 0.270 for the flat classical blur, 0.284 for the
        # mosaic: python -m model_export.anonymizer misfit-check)
        self.misfit_redaction = HeadBlur()
        self.degree = float(degree)
        self.min_face_px = float(min_face_px)
        self.min_score = float(min_score)
        self.small_faces = small_faces or Pixelate()
        self.check = None if embedder is None else IdentityCheck(embedder, max_similarity)
        self.veil = bool(veil)
        self.budget_ms = budget_ms
        self.frame_budget_ms = frame_budget_ms
        self.max_tracks = int(max_tracks)
        self.refiner = refiner
        self.refine_budget_ms = refine_budget_ms
        self._refine_ms = 0.0
        self._frame_renders = 0
        self._frame_reach: list[tuple[slice, slice]] | None = None
        self._shadowed: list[Face] = []  # this frame's second detections of a head...
        self._shadow_done = True  # ...redacted at the frame's first face
        self._tracks: OrderedDict[int, _Track] = OrderedDict()
        self._embedded: dict[int, np.ndarray] = {}  # donor -> its face's embedding by the check's recogniser (:meth:`_donor_likeness`)
        self._settling: OrderedDict[int, int] = OrderedDict()  # seed -> frames its landmarks fit since they last did not
        self._frame_no = 0
        self._frame_start: float | None = None
        self.stats = {"rendered": 0, "new_tracks": 0, "small": 0, "unsure": 0, "misfit": 0, "shadowed": 0, "too_similar": 0, "retried": 0, "redrawn": 0, "rechecked": 0, "recheck_failed": 0, "veiled": 0, "over_budget": 0, "refined": 0, "refine_skipped": 0, "refine_undone": 0, "replayed": 0, "held": 0, "settling": 0}

    def priority(self, seed: int, face: Face | None = None) -> float:
        """Faces that get ``small_faces`` this frame (:meth:`_classical`) go first: a donor drawn
        after them is pasted over whatever of their region it overlaps (drawn last, the mosaic of a
        false detection beside a face cut its ellipse into the new face's cheek and ear: a 368 px
        detection scored 0.29 on the blurred background of a deepface portrait). Then faces that
        showed their donor last frame keep it (a face switching between donor and mosaic is worse
        to watch than either): first those with a recent render to replay (a copy), then those
        that must be drawn; then new tracks; then still faces whose render is due for a refresh
        (past the budget they replay it); then the longest-waiting faces."""
        t = self._tracks.get(int(seed))
        if face is not None and self._classical(face, t) is not None:
            return -5.0
        if t is None:
            return -2.0
        if t.shown == self._frame_no - 1:
            if t.replay is None:
                return -3.0
            return -4.0 if self._frame_no - t.replay.frame_no < REUSE_FRAMES else -1.0
        return float(t.shown)

    def _spent_ms(self) -> float:
        return 0.0 if self._frame_start is None else (time.perf_counter() - self._frame_start) * 1000.0

    def donor_of(self, seed: int) -> int | None:
        """The bank index given to track ``seed`` (None: not seen, or not anonymized by a donor)."""
        t = self._tracks.get(int(seed))
        return t.donor if t is not None and t.safe else None

    def worn(self, but: int | None = None) -> list[int]:
        """The synthetic people (:meth:`DonorBank.person`) that tracks other than ``but`` show. A
        new track draws among the others: drawn by pose, tone, sex and age alone, a third of the
        bright faces of crowd-reid's 4K crowd and nearly two thirds of the dark ones wore the face
        of another person of the same frame."""
        return [self.bank.person(t.donor) for s, t in self._tracks.items() if s != but and t.safe]

    # -- per face ------------------------------------------------------------------------------
    def anonymize(self, frame: np.ndarray, face: Face, seed: int = 0) -> None:
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("anonymizer expects a BGR uint8 frame")
        shadow = any(face is s for s in self._shadowed)
        self._redact_shadowed(frame)  # before any donor of the frame: its paste then covers the blur
        if shadow:
            return
        seed = int(seed)
        track = self._tracks.get(seed)
        classical = self._classical(face, track)
        if classical is not None:
            self.stats[classical] += 1
            self.small_faces.anonymize(frame, face, seed)
            return
        fits = landmarks_fit(face)
        if not self._settled(seed, fits):
            self.stats["misfit" if not fits else "settling"] += 1
            self.misfit_redaction.anonymize(frame, head_face(face), seed)
            return
        area = reach(face, frame.shape)
        alone = self._frame_reach is not None and sum(_overlap(area, r) for r in self._frame_reach) <= 1
        over = self.frame_budget_ms is not None and self._frame_renders > 0 and self._spent_ms() > self.frame_budget_ms
        replay = track.replay if track is not None and track.safe and alone else None
        if replay is not None and replay.fits(face, frame.shape) and (over or self._frame_no - replay.frame_no < REUSE_FRAMES):
            replay.write(frame)
            track.shown = self._frame_no
            self._tracks.move_to_end(seed)
            self.stats["replayed"] += 1
            return
        if over:
            self.stats["over_budget"] += 1
            raise BudgetExceeded("donor budget for this frame is spent")
        if track is None:
            track = self._new_track(frame, face, seed)
        else:
            self._tracks.move_to_end(seed)
            track = self._redraw_when_read(frame, face, seed, self._retry(frame, face, seed, track))
        if not track.safe or self._held(track, face):
            self.small_faces.anonymize(frame, face, seed)
            return
        before = frame[area].copy() if alone else None
        person = self.check.person(self.original(frame), face) if self._drifted(track, face) else None
        self.render(frame, face, track, seed, person)
        if person is not None:
            self._recheck_later(face, seed, track, person)
        track.rendered = track.shown = self._frame_no
        # kept only where no other face's render could have reached: a replay then writes back
        # nothing but this face's own anonymized pixels
        track.replay = None if before is None else _Replay.of(face, frame, area, before, self._frame_no)
        self._frame_renders += 1
        self.stats["rendered"] += 1

    def _classical(self, face: Face, track: _Track | None) -> str | None:
        """Why ``face`` gets ``small_faces`` (its stat), None if it may get its donor: narrower than
        ``min_face_px``, or a new (or unsafe) track the detector is less sure of than ``min_score``.
        Only a new track needs a sure detection: one that has its donor keeps it through a frame
        the detector scores lower (a microphone, a turn), rather than flicker to the mosaic."""
        if face.width < self.min_face_px:
            return "small"
        if face.score < self.min_score and (track is None or not track.safe):
            return "unsure"
        return None

    def _settled(self, seed: int, fits: bool) -> bool:
        """May the face get its donor this frame: its landmarks fit and, if they did not on an
        earlier frame of the track, have fit on ``SETTLE_FRAMES`` frames in a row since. A head
        turning near ``MAX_YAW``, or whose landmarks jump, switched between its donor and the
        out-of-focus head every frame or two. Only the way back to the donor waits: a misfit is
        redacted at once."""
        if not fits:
            self._settling[seed] = 0
            self._settling.move_to_end(seed)
            while len(self._settling) > self.max_tracks:
                self._settling.popitem(last=False)
            return False
        run = self._settling.get(seed)
        if run is None:
            return True
        if run + 1 >= SETTLE_FRAMES:
            del self._settling[seed]
            return True
        self._settling[seed] = run + 1
        return False

    def forget(self, seed: int) -> None:
        super().forget(seed)
        self._settling.pop(int(seed), None)

    def reset(self) -> None:
        super().reset()
        self._settling.clear()

    def _new_track(self, frame: np.ndarray, face: Face, seed: int) -> _Track:
        if self._new_track_budget_spent():
            self.stats["over_budget"] += 1
            raise BudgetExceeded("donor budget for this frame is spent")
        track = self._redraw(frame, face, seed, ())
        self.stats["new_tracks"] += 1
        while len(self._tracks) > self.max_tracks:
            self._tracks.popitem(last=False)
        return track

    def _new_track_budget_spent(self) -> bool:
        """Is the frame's time for drawing donors (``budget_ms``) spent? The frame's first draw always goes."""
        return self.budget_ms is not None and self._frame_renders > 0 and self._spent_ms() > self.budget_ms

    def _apparent(self, frame: np.ndarray, face: Face) -> tuple[np.ndarray, float, float]:
        """(the aligned crop the donor is chosen by, its P(male) and P(child); NaN with
        ``match_sex`` or ``match_age`` off)."""
        crop, _, _ = aligned_crop(self.original(frame), face, min(crop_size(face), BANK_SIDE))
        male = self.apparent_sex.score(crop) if self.apparent_sex is not None else np.nan
        return crop, male, self.apparent_age.score(crop) if self.apparent_age is not None else np.nan

    def _redraw(self, frame: np.ndarray, face: Face, seed: int, tried: tuple[int, ...], scored=None) -> _Track:
        """The seed's track drawn (:meth:`_draw`) and kept; ``scored``: :meth:`_apparent` of
        this face, when the caller has it."""
        track = self._draw(frame, face, seed, tried, scored)
        track.scored_width = float(face.width)
        self._tracks[seed] = track
        return track

    def _draw(self, frame: np.ndarray, face: Face, seed: int, tried: tuple[int, ...], scored=None) -> _Track:
        """A track's donor: the seed's order over the ``NEAREST`` donors closest in pose, skin tone
        (and apparent sex and age) that no other track wears, those least like the person first
        (:meth:`_unlike_first`), the first of the next ``TRIES`` (``CHILD_TRIES`` for a child)
        not in ``tried`` whose render passes the recogniser check; none passing, an unsafe track (the fallback) that remembers them and
        tries its next candidates ``RETRY_FRAMES`` later (:meth:`_retry`)."""
        crop, male, child = self._apparent(frame, face) if scored is None else scored
        yaw, pitch = pose(face.landmarks)
        # every face may come close (a person walking up to a camera is first seen small): its
        # donor is one with a close-up crop
        near = self.bank.nearest(yaw, pitch, skin_tone(crop), big=True, male=male, child=child, worn=self.worn(but=seed))
        rng = np.random.default_rng(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
        order = [int(near[j]) for j in rng.permutation(len(near)) if int(near[j]) not in tried]
        if self.check is None or not order:
            return _Track(donor=order[0] if order else int(near[0]), safe=self.check is None, tried=tried, veiled=self.veil)
        person = self.check.person(self.original(frame), face)
        order = self._unlike_first(order, person)
        tries = CHILD_TRIES if apparent_age.is_child(child) else TRIES
        trials = [_Track(donor=donor, veiled=self.veil) for donor in order[:tries]]
        if not self.veil:  # then the first of them with its outline veiled
            trials.append(_Track(donor=order[0], veiled=True))
        for trial in trials:
            out = frame.copy()
            self.render(out, face, trial, seed, person)
            key = self.check.passed(person, out, face)
            if key is not None:
                trial.checked = key
                trial.tried = tried
                return trial
            self.stats["too_similar"] += 1
            if trial.donor not in tried:
                tried += (trial.donor,)
        return _Track(donor=order[0], safe=False, tried=tried, retry_at=self._frame_no + RETRY_FRAMES)

    def _unlike_first(self, order: list[int], person: np.ndarray) -> list[int]:
        """``order`` (the seed's) with the donors the recogniser finds least like the person
        first (the ``UNLIKE`` share of each apparent sex among them), in the seed's order among
        themselves. A render keeps the stranger's outline and hair, and a donor face already close
        to the stranger's stood closer after the paste too. Per sex: the recogniser sees sex, so
        the least like of a mixed set (a stranger the sex classifier cannot read) lean to the
        stranger's other sex. A random pick among them, not the least like: the same person seen again
        draws another face, not a pseudonym that links the visits."""
        likeness = self._donor_likeness(order, person)
        male = self.bank.male[order]
        side = np.where(np.isfinite(male), male > 0.5, 2)
        unlike: set[int] = set()
        for s in np.unique(side):
            group = np.flatnonzero(side == s)
            keep = int(np.ceil(len(group) * UNLIKE))
            unlike.update(order[j] for j in group[np.argsort(likeness[group], kind="stable")[:keep]])
        return [d for d in order if d in unlike] + [d for d in order if d not in unlike]

    def _donor_likeness(self, donors: list[int], person: np.ndarray) -> np.ndarray:
        """Cosine of each donor's own face (its 128 px crop) to ``person`` (:meth:`IdentityCheck.person`),
        by the check's recogniser; each donor is embedded once, all missing ones in one call."""
        missing = [d for d in dict.fromkeys(donors) if d not in self._embedded]
        if missing:
            crops, faces = [], []
            for k, d in enumerate(missing):
                crop, lm = self.bank.donor(d)
                lm = lm + (k * BANK_SIDE, 0)
                crops.append(crop)
                faces.append(Face(np.concatenate([lm.min(0), lm.max(0)]).astype(np.float32), lm.astype(np.float32), 1.0))
            for d, e in zip(missing, self.check.embedder.embed(np.hstack(crops), faces)):
                self._embedded[d] = e
        return np.array([float(np.max(person @ self._embedded[d])) for d in donors], np.float32)

    def _retry(self, frame: np.ndarray, face: Face, seed: int, track: _Track) -> _Track:
        """An unsafe track whose wait is over, with time left in the frame's new-track budget and
        candidates it has not tried: its next candidates (:meth:`_draw`). A person whose first
        three candidates all stood too close kept the mosaic for the track's life: on the demo
        clip, the performer."""
        if (track.safe or self.check is None or self._frame_no < track.retry_at or len(track.tried) >= NEAREST
                or self._new_track_budget_spent()):
            return track
        self.stats["retried"] += 1
        return self._redraw(frame, face, seed, track.tried)

    def _redraw_when_read(self, frame: np.ndarray, face: Face, seed: int, track: _Track) -> _Track:
        """A track whose face has grown ``RESEX_GROWTH`` times since its donor was drawn is scored
        again; now sure of a sex its donor is not sure of, it draws again (one look change, while
        the face still comes closer). A donor is drawn once, at the face's first sure detection,
        often small and soft: in `make run` the demo clip's performer, whose track begins in a
        wide shot at about 50 px, wore a woman's face through his song (the net is sure of him
        from 80 px on). Likewise a child's track with an adult's donor, or the reverse."""
        if ((self.apparent_sex is None and self.apparent_age is None) or not track.safe
                or face.width < track.scored_width * RESEX_GROWTH or self._new_track_budget_spent()):
            return track
        track.scored_width = float(face.width)
        scored = self._apparent(frame, face)
        _, male, child = scored
        other_sex = abs(male - 0.5) >= SURE and unsure_cost(male, self.bank.male[[track.donor]])[0] > 0
        if not other_sex and not apparent_age.clash(child, self.bank.child[[track.donor]])[0]:
            return track
        self.stats["redrawn"] += 1
        return self._redraw(frame, face, seed, (), scored)

    def _drifted(self, track: _Track, face: Face) -> bool:
        """Has the face turned or neared since its donor last passed the recogniser check
        (:func:`~edge_agent.anonymize.identity_check.drifted`)?"""
        return self.check is not None and drifted(track.checked, face)

    def _check_failed(self, track: _Track, face: Face) -> None:
        """Its render failed the check in the finished frame (which then showed ``small_faces``): it
        is never replayed. The first time, the track keeps its donor with its outline veiled
        (``VEIL_BLUR``), checked on every frame; failing so, it is held
        (:meth:`~edge_agent.anonymize.base.TrackedAnonymizer._check_failed`). Held at once, the
        demo clip's performer showed the mosaic for 15-25 frames at a time: his renders stand at
        cosine 0.05-0.4 to him from frame to frame, and the hair and ears carry most of it (over
        his and the audience's faces and 12 candidate donors each, veiling them took the mean
        cosine from 0.17 to 0.12; a degree of 2 or none of his proportions kept, 0.17)."""
        track.replay = None
        if not track.veiled:
            track.veiled = True
            track.checked = (*pose(face.landmarks), float(face.width), True)
            self.stats["veiled"] += 1
            return
        super()._check_failed(track, face)

    def render(self, frame: np.ndarray, face: Face, track: _Track, seed: int, person: np.ndarray | None = None) -> None:
        """Warp the track's donor onto ``face``, match the scene, paste (in place). ``person``: the
        face's embedding before the paste, when the caller already has it."""
        # a close-up whose donor has no 256 px crop is drawn from its 128 px one, enlarged in the frame
        big = crop_size(face) == BIG_SIDE and self.bank.has_big(track.donor)
        size = BIG_SIDE if big else min(crop_size(face), BANK_SIDE)
        scene = self.original(frame)
        crop, matrix, crop_lm = aligned_crop(scene, face, size)
        donor, donor_lm = self.bank.donor(track.donor, big)
        # what of the donor is not its face (a 4th channel) travels with it through the warp
        donor = np.dstack([donor, self.bank.off_face(track.donor, big)])
        scale = size / donor.shape[0]
        if size != donor.shape[0]:
            donor = cv2.resize(donor, (size, size), interpolation=cv2.INTER_AREA)
        donor_lm = donor_lm * scale
        target = target_landmarks(crop_lm, donor_lm, self.degree)
        # geometry: output (template space, ``target`` ~ the stranger's landmarks) samples the donor
        if size >= 128:
            mx, my = tps_grid(target, donor_lm, size)
            warped = cv2.remap(donor, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        else:
            warped = cv2.warpAffine(donor, landmark_affine(donor_lm, target), (size, size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
        warped, off = warped[..., :3], warped[..., 3].astype(np.float32) / 255.0
        alpha, sharp, hard, inner = paste_masks(size, turn(crop_lm))
        under = alpha  # the strong blur goes under the whole paste, the donor's face or not
        if off.any():
            alpha, sharp = without_off_face(alpha, sharp, off)
        skin = skin_mask(crop)
        now = ColourStats.of(crop, inner, skin)
        track.stats = now if track.stats is None else track.stats.blend(now, STAT_SMOOTHING)
        new_bgr = transfer(warped.astype(np.float32), crop, hard, inner, track.stats, self.degree, skin)
        refine = self._may_refine(face)
        t0 = time.perf_counter()
        # the person, embedded before the paste removes them: what the refined face is checked against
        if refine and person is None:
            person = self.check.person(scene, face)
        self._refine_ms += (time.perf_counter() - t0) * 1000.0
        paste(frame, face, matrix, new_bgr, alpha, sharp, np.random.default_rng([seed & 0xFFFFFFFF, self._frame_no]), scene, under,
              VEIL_BLUR if track.veiled else None)
        if refine:
            self._refine(frame, face, seed, person)

    def _may_refine(self, face: Face) -> bool:
        """Is ``face`` refined this frame: a refiner, the face at least its crop wide (on a 38 px
        audience face of the demo clip its correction, trained to restore a scene, brought the face
        back to cosine 0.45 to the original), and refine time left in the frame."""
        if self.refiner is None or face.width < REFINE_MIN_PX:
            return False
        if self.refine_budget_ms is not None and self._refine_ms > self.refine_budget_ms:
            self.stats["refine_skipped"] += 1
            return False
        return True

    def _refine(self, frame: np.ndarray, face: Face, seed: int, person: np.ndarray) -> None:
        """The refiner over the pasted composite, checked on every render against ``person`` (the
        original's embedding): the refiner is trained to restore a scene, and in one CI run it
        brought a 65 px audience face back to cosine 0.43 to its original, from a composite that had
        passed its check. A refinement at ``max_similarity`` or above is undone: the composite stays,
        itself checked in turn (it passed at the track's first frame, not at this pose); a composite
        that is too close also gets ``small_faces`` over it."""
        t0 = time.perf_counter()
        rows, cols, _ = face_region(face, frame.shape)
        composite = frame[rows, cols].copy()
        self.refiner.refine(frame, face, seed)
        if self.check.too_close(person, frame, face):
            frame[rows, cols] = composite
            self.stats["refine_undone"] += 1
            if self.check.too_close(person, frame, face):
                self.small_faces.anonymize(frame, face, seed)
        else:
            self.stats["refined"] += 1
        self._refine_ms += (time.perf_counter() - t0) * 1000.0

    def _redact_shadowed(self, frame: np.ndarray) -> None:
        """Second detections of a head (:func:`shadowed`) get the head out of focus (:class:`HeadBlur`), once,
        before the frame's first donor: the donor of the head's main face is pasted over it."""
        if self._shadow_done:
            return
        self._shadow_done = True
        if self._shadowed and self._original is None:
            self._original = frame.copy()
        for face in self._shadowed:
            self.stats["shadowed"] += 1
            self.misfit_redaction.anonymize(frame, head_face(face), 0)

    def begin_frame(self, faces: Sequence[Face] | None = None, frame: np.ndarray | None = None) -> None:
        super().begin_frame(faces, frame)
        self._shadowed = [] if faces is None else shadowed(faces)
        self._shadow_done = False
        self._refine_ms = 0.0
        self._frame_renders = 0  # the first face of a frame is always served: a crowd still moves
        self._frame_reach = None if faces is None else [reach(f) for f in faces]
        if self._original is None and frame is not None and faces is not None and any(
                self._classical(f, None) for f in faces):
            # such faces get their mosaic first (:meth:`priority`): a donor's colour, tone and
            # apparent sex are still read from the face as filmed (:meth:`original`)
            self._original = frame.copy()


def geometry_kept(degree: float) -> float:
    """Share of the stranger's own face proportions (the 5 points' layout beyond position, size and
    roll) the warp keeps: all of it up to degree 0.5, 80 % at 1, 40 % at 2; the rest is the donor's."""
    return 1.0 - GEOMETRY_SWAP * float(np.clip((degree - 0.5) / 1.5, 0.0, 1.0))


def target_landmarks(crop_lm: np.ndarray, donor_lm: np.ndarray, degree: float) -> np.ndarray:
    """Where the donor's 5 points go (template space): the stranger's, pulled toward the donor's own
    layout placed by a similarity on the stranger's (the degree knob's geometric half)."""
    m = similarity_transform(donor_lm, crop_lm)
    placed = donor_lm @ m[:, :2].T + m[:, 2]
    return (placed + geometry_kept(degree) * (crop_lm - placed)).astype(np.float32)


def stretch(matrix: np.ndarray) -> float:
    """How much an affine (2x3) stretches along one axis against the other: its linear part's
    largest over smallest singular value (1: none; inf: flattened)."""
    sv = np.linalg.svd(np.asarray(matrix, np.float64)[:, :2], compute_uv=False)
    return float(sv[0] / sv[1]) if sv[1] > 1e-9 else float("inf")


def landmark_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares affine (2x3) taking the 5 points ``src`` to ``dst``, or their similarity
    where it would stretch the face more than ``MAX_STRETCH`` (:func:`stretch`). A robust fit
    (LMEDS) fits three of five points exactly, which leaves a median error of zero whatever the
    other two do: on crowds/20.jpg one 51 px face's donor came out squashed to a third across and
    torn into diagonal streaks."""
    a = np.linalg.lstsq(np.hstack([src, np.ones((len(src), 1), np.float32)]).astype(np.float64), dst.astype(np.float64), rcond=None)[0].T
    if not np.isfinite(a).all() or stretch(a) > MAX_STRETCH:
        return similarity_transform(src, dst)
    return a.astype(np.float32)


def crop_size(face: Face) -> int:
    return SIZE_CLASSES[0] if face.width < SMALL_FACE_PX else SIZE_CLASSES[2] if face.width >= LARGE_FACE_PX else SIZE_CLASSES[1]


def head_face(face: Face, grow: float = 1.15) -> Face:
    """The face's box grown, with level landmarks: redaction of the whole head region,
    independent of landmarks that cannot be trusted."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * grow / 2, (y2 - y1) * grow / 2
    level = np.array([[cx - hw / 2, cy], [cx + hw / 2, cy], [cx, cy], [cx - hw / 3, cy + hh / 2], [cx + hw / 3, cy + hh / 2]], np.float32)
    return Face(np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32), level, face.score)


def head_layer(patch: np.ndarray, region: np.ndarray, strong_share: float, core_at, own_at=None,
               light_share: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(layer, weight) over a head region: a strong blur (``strong_share`` of the region's side)
    where ``core_at(k, (w, h), depth)`` is 1, a light one (``light_share``, else ``LIGHT_BLUR``) elsewhere; the weight
    fades toward the ellipse's rim to ``RIM_WEIGHT`` (hair, ears and background keep their strands
    and outline and meet the frame without a visible oval), but every pixel of the region is
    redrawn, as every anonymizer's region is. The strong blur and the masks are smooth: computed
    at a smaller size (:func:`~edge_agent.anonymize.diffusion.shrunk`, scale ``k``; ``depth``: 0 at
    the rim, 1 at the centre, at that size) and resized up; the light blur keeps hair strands, so
    it is computed at the frame's resolution."""
    ph, pw = patch.shape[:2]
    side = max(ph, pw)
    inside = (region > 0).astype(np.uint8)
    small, inside_small, k = shrunk(patch, inside)
    sh, sw = small.shape[:2]
    depth = cv2.distanceTransform(inside_small, cv2.DIST_L2, 3)
    depth /= max(float(depth.max()), 1e-6)
    core = np.asarray(core_at(k, (sw, sh), depth), np.float32)
    weight = np.maximum(core, RIM_WEIGHT + (1.0 - RIM_WEIGHT) * np.clip(depth / 0.35, 0.0, 1.0)).astype(np.float32)
    strong = np.asarray(_blur(small, side * k * strong_share), np.float32)
    if own_at is not None:  # there the strong blur takes the core's own pixels only (:func:`core_blur`)
        own = np.asarray(own_at(k, (sw, sh)), np.float32)[..., None]
        strong = strong * (1.0 - own) + core_blur(small, core, strong, side * k * strong_share) * own
    if k < 1.0:
        strong = cv2.resize(strong, (pw, ph), interpolation=cv2.INTER_LINEAR)
        core = cv2.resize(core, (pw, ph), interpolation=cv2.INTER_LINEAR)
        weight = cv2.resize(weight, (pw, ph), interpolation=cv2.INTER_LINEAR)
    light = _blur(patch, max(1.2, side * (LIGHT_BLUR if light_share is None else light_share))).astype(np.float32)
    layer = cv2.blendLinear(np.ascontiguousarray(strong), light, core, 1.0 - core)
    return layer, (weight * inside).astype(np.float32)


def core_blur(small: np.ndarray, core: np.ndarray, plain: np.ndarray, sigma: float) -> np.ndarray:
    """The strong blur of the pixels under ``core`` only (a normalised blur; ``plain`` where the
    core is too far to say): over the forehead (:func:`forehead_ramp`) the stranger's face spreads
    to its own skin's tone instead of mixing in the hair above it. Mixed in, the hairline smeared
    into the forehead over the paste's top edge as a dark arc on every close-up. Only there: at
    the sides and chin the mix is what blurs the stranger's outline."""
    both = _blur(np.dstack([small.astype(np.float32) * core[..., None], core]), sigma)
    norm = both[..., -1:]
    return np.where(norm > 0.05, both[..., :-1] / np.maximum(norm, 1e-6), plain).astype(np.float32)


def base_layer(frame: np.ndarray, face: Face, inv: np.ndarray, alpha: np.ndarray, light_share: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(layer, weight) under the new face over the head ellipse (:func:`head_layer`): blurred at
    1/20 of the head where the new face goes (under its feathered rim nothing sharp of the original
    shows; the features themselves lie inside the rim, under the opaque donor), lightly blurred
    over the rest of the head."""
    rows, cols, region = face_region(face, frame.shape)

    def to_region(k: float) -> np.ndarray:  # template -> the head region at scale k
        shift = inv.copy() * k
        shift[:, 2] -= (cols.start * k, rows.start * k)
        return shift

    def under_the_face(k: float, size: tuple[int, int], depth: np.ndarray) -> np.ndarray:
        core = cv2.warpAffine((alpha > 0).astype(np.float32), to_region(k), size, flags=cv2.INTER_LINEAR)
        return np.minimum(cv2.GaussianBlur(core, (0, 0), max(1.0 * k, max(region.shape) * k / 60.0)) * 2.0, 1.0)

    def above_the_eyes(k: float, size: tuple[int, int]) -> np.ndarray:
        return cv2.warpAffine(forehead_ramp(alpha.shape[0]), to_region(k), size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    return head_layer(frame[rows, cols], region, STRONG_BLUR, under_the_face, above_the_eyes, light_share)


@lru_cache(maxsize=4)
def forehead_ramp(size: int) -> np.ndarray:
    """Template space: 1 from ``OWN_BLUR_FROM`` eye-to-mouth spans above the eyes up, 0 from the
    eyes down (a linear ramp between): where the strong blur takes the face's own pixels only."""
    eyes_y, span = eyes_and_span(size)
    yy = np.arange(size, dtype=np.float32) + 0.5
    col = np.clip((eyes_y - yy) / (OWN_BLUR_FROM * span), 0.0, 1.0)
    return np.ascontiguousarray(np.repeat(col[:, None], size, 1))


def paste(frame: np.ndarray, face: Face, matrix: np.ndarray, new_bgr: np.ndarray, alpha: np.ndarray, sharp: np.ndarray,
          rng: np.random.Generator, scene: np.ndarray | None = None, under: np.ndarray | None = None,
          light_share: float | None = None) -> None:
    """Blur the head ellipse, then blend the new face (template space, ``matrix`` maps frame to
    template) into it, after matching the frame's blur and noise where it lands. Two bands: the
    coarse one over ``alpha``'s wide feather, the fine one (under ``DETAIL_SIGMA``) over
    ``sharp``'s narrow one, so the face keeps its skin texture up to its outline (a one-band
    feather left a quarter of the face half blurred: detail ratio 0.5 there). ``scene``: what the
    blur and noise are matched to, when not ``frame`` itself (:meth:`~edge_agent.anonymize.base.TrackedAnonymizer.original`);
    ``under``: where the strong blur goes (template space), when wider than ``alpha``; ``light_share``:
    the blur over the rest of the head (:func:`head_layer`)."""
    inv = cv2.invertAffineTransform(matrix)
    ys, xs = np.nonzero(alpha > 0)
    box = np.array([[xs.min() - 1, ys.min() - 1, 1], [xs.max() + 2, ys.min() - 1, 1],
                    [xs.min() - 1, ys.max() + 2, 1], [xs.max() + 2, ys.max() + 2, 1]], np.float32) @ inv.T
    h, w = frame.shape[:2]
    x0, y0 = max(int(np.floor(box[:, 0].min())), 0), max(int(np.floor(box[:, 1].min())), 0)
    x1, y1 = min(int(np.ceil(box[:, 0].max())) + 1, w), min(int(np.ceil(box[:, 1].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the new face lies outside the frame")
    shift = inv.copy()
    shift[:, 2] -= (x0, y0)
    rw, rh = x1 - x0, y1 - y0
    warped = cv2.warpAffine(new_bgr, shift, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    a = cv2.warpAffine(alpha, shift, (rw, rh), flags=cv2.INTER_LINEAR)
    a_fine = cv2.warpAffine(sharp, shift, (rw, rh), flags=cv2.INTER_LINEAR)
    original = (frame if scene is None else scene)[y0:y1, x0:x1]
    warped = match_camera(warped, original, a > 0.5, rng, float(np.sqrt(abs(np.linalg.det(inv[:, :2])))))
    base, base_w = base_layer(frame, face, inv, alpha if under is None else under, light_share)
    rows, cols, _ = face_region(face, frame.shape)
    patch = frame[rows, cols]
    base = with_grain(base, patch, base_w, rng)
    # everything is computed: now write (an exception above leaves the frame untouched)
    patch[:] = _blend(base, patch, base_w)
    roi = frame[y0:y1, x0:x1]
    under = roi.astype(np.float32)
    fine = (warped - cv2.GaussianBlur(warped, (0, 0), DETAIL_SIGMA)) - (under - cv2.GaussianBlur(under, (0, 0), DETAIL_SIGMA))
    roi[:] = np.clip(_blend(warped, roi, a) + (np.maximum(a_fine - a, 0.0))[..., None] * fine, 0, 255).astype(np.uint8)


class HeadBlur(Anonymizer):
    """An out-of-focus head for faces no donor can go on (turned past ``MAX_YAW``, landmarks that do
    not fit, a head's second detection): the features under a strong blur (``HEAD_BLUR`` of the
    head region), the outer head (hair, ears, the outline) under the donor's light blur, the two
    feathered into each other and to the region's rim, with the camera's grain back. A flat blur
    of the whole ellipse (the classical ``blur``) read as a brown sticker on every turned head."""

    name = "head-blur"

    def anonymize(self, frame: np.ndarray, face: Face, seed: int = 0) -> None:
        rows, cols, region = face_region(face, frame.shape)
        patch = frame[rows, cols]
        ph, pw = patch.shape[:2]
        # nothing of an out-of-focus head needs the frame's resolution but its grain: the layer and
        # the grain's strength are computed at a smaller size (a 250 px close-up: 14 -> 4 ms)
        small, small_region, k = shrunk(patch, region)

        def features(k: float, size: tuple[int, int], depth: np.ndarray) -> np.ndarray:
            return np.clip((depth - HEAD_CORE[0]) / (HEAD_CORE[1] - HEAD_CORE[0]), 0.0, 1.0)

        layer, weight = head_layer(small, small_region, HEAD_BLUR, features)
        amount = grain_amount(layer, small, weight)
        if k < 1.0:
            layer = cv2.resize(layer, (pw, ph), interpolation=cv2.INTER_LINEAR)
            weight = cv2.resize(weight, (pw, ph), interpolation=cv2.INTER_LINEAR)
            amount = None if amount is None else cv2.resize(amount, (pw, ph), interpolation=cv2.INTER_LINEAR)
        weight *= region > 0
        if amount is not None:
            layer += (np.random.default_rng(int(seed) & 0xFFFFFFFF).standard_normal((ph, pw), dtype=np.float32) * amount)[..., None]
        patch[:] = _blend(layer, patch, weight)


def with_grain(layer: np.ndarray, original: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The blurred layer given grain back (:func:`grain_amount`): a blur wipes the sensor noise and
    the fine texture of hair and skin, and a smooth ring around the new face reads as a pasted,
    plastic patch (the donor itself gets its grain in :func:`match_camera`). Random, so it carries
    nothing of the person beyond where the blurred layer already shows texture."""
    amount = grain_amount(layer, original, weight)
    if amount is None:
        return layer
    return layer + (rng.standard_normal(layer.shape[:2], dtype=np.float32) * amount)[..., None]


def grain_amount(layer: np.ndarray, original: np.ndarray, weight: np.ndarray) -> np.ndarray | None:
    """Per-pixel grain sigma for ``layer`` blended over ``original`` at ``weight`` (None: too small
    a region): the larger of the camera's noise and the fine texture energy the blur took away
    there (measured at ``GRAIN_SCALE`` of the region, capped at ``GRAIN_MAX``), scaled for the
    blend so that layer and original mixed keep that level: sigma * sqrt(1 - (1 - w)^2) / w."""
    mask = weight > 0.5
    if mask.sum() < 16:
        return None
    g_o = cv2.cvtColor(original, cv2.COLOR_BGR2GRAY).astype(np.float32)
    g_l = cv2.cvtColor(np.clip(layer, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY).astype(np.float32)
    scale = max(1.0, max(g_o.shape) * GRAIN_SCALE)
    lost = _blur(cv2.Laplacian(g_o, cv2.CV_32F) ** 2 - cv2.Laplacian(g_l, cv2.CV_32F) ** 2, scale)
    # white noise of sigma gives a Laplacian std of sqrt(20) sigma (the 3x3 kernel's energy)
    sigma = np.maximum(np.minimum(np.sqrt(np.maximum(lost, 0.0) / 20.0), GRAIN_MAX), _noise(g_o, mask))
    w = np.clip(weight, 0.05, 1.0)
    return (sigma * np.sqrt(1.0 - (1.0 - w) ** 2) / w).astype(np.float32)


def _blend(top: np.ndarray, under: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``top * weight + under * (1 - weight)`` as uint8, in one OpenCV pass (a close-up's region
    is a million values: numpy's temporaries cost more than the rest of the paste)."""
    top = np.clip(top, 0, 255).astype(np.uint8) if top.dtype != np.uint8 else top
    w = np.ascontiguousarray(weight, np.float32)
    return cv2.blendLinear(top, np.ascontiguousarray(under), w, 1.0 - w)
