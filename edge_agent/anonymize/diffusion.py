"""The diffusion anonymizer: a distilled few-step student (ONNX, onnxruntime only) that replaces a
stranger's face with a synthetic one of the same pose, expression, lighting and skin tone.

How one face is replaced (all numpy/OpenCV around one ONNX call):

1. The face is aligned by its 5 landmarks to a ``CROP`` x ``CROP`` crop (ArcFace template with
   ``MARGIN`` of context) and split into luminance Y and chroma (YCrCb).
2. Identity-free conditions are built from the crop (:func:`conditions`): the context ring
   *outside* the regenerated ellipse (slightly blurred), the ellipse mask, the face's luminance at
   4x4 cells only (lighting), pulled toward a mean face by the *degree* knob, and 5 landmark
   heat-maps (pose / expression). No pixel of the face interior reaches the generator.
3. The student maps (noise from the track's seed, conditions) to a new luminance crop. Within a
   track the generated face is cached and re-used between regenerations: it lives in aligned
   (template) space, so pasting it back through the *current* landmarks warps it onto the moving
   head for the cost of two ``warpAffine`` calls.
4. Paste-back: the original's very-low-frequency luminance (lighting) and chroma (skin tone) are
   put onto the generated detail, the whole ``face_region`` ellipse is first blurred (strongly in
   its centre, lightly at its rim, :func:`head_blur`: the part of the head the generator does not
   cover, hair and ears) and the generated face is blended in with a feathered mask. Every pixel
   of the region is therefore either generated or blurred, never raw.

Everything raises on a problem so the pipeline falls back to classical redaction (fail closed).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from edge_agent.align import similarity_transform, template
from edge_agent.anonymize.base import Anonymizer, TrackedAnonymizer, face_region
from edge_agent.anonymize.identity_check import IdentityCheck, drifted
from edge_agent.faces import Face

CROP = 64  # generator resolution (aligned crop side, pixels)
LAYER_SIDE = 128  # smooth layers over a head region (blurs, their masks) are computed at most this many pixels across
MARGIN = 0.25  # template margin: the face takes 75 % of the crop side, the rest is context
LOWFREQ_CELLS = 4  # the only appearance of the face interior the generator sees: 4x4 cells of Y
HEAT_SIGMA = 1.5  # landmark heat-map sigma (crop pixels)
CONTEXT_SIGMA = 1.2  # the context ring is blurred a little before it is shown to the generator
MATCH_SIGMA = 7.0  # lighting / chroma transfer scale (crop pixels) at paste-back
COND_CHANNELS = 8  # context, mask, low-frequency luminance, 5 landmark heat-maps

# A generic 4x4 luminance pattern of an aligned face (mean over LFW training crops, zero-mean,
# in [-1, 1] units); the model file carries its own copy in its metadata, this is the fallback.
DEFAULT_MEAN_PATTERN = np.zeros((LOWFREQ_CELLS, LOWFREQ_CELLS), np.float32)


class BudgetExceeded(TimeoutError):
    """Generating this face would overrun the frame's latency budget (caller falls back)."""


def gen_ellipse(size: int = CROP) -> tuple[tuple[float, float], tuple[float, float]]:
    """(centre, semi-axes) of the regenerated region in crop pixels: brow-line to chin, cheek to
    cheek, derived from the aligned template so it scales with ``size``."""
    t = template(size, MARGIN)
    eyes_y = (t[0, 1] + t[1, 1]) / 2
    mouth_y = (t[3, 1] + t[4, 1]) / 2
    span = mouth_y - eyes_y
    top, bottom = eyes_y - 1.0 * span, mouth_y + 0.75 * span
    cx = float(t[:, 0].mean())
    half_w = 1.12 * float(t[1, 0] - t[0, 0])
    return (cx, (top + bottom) / 2), (half_w, (bottom - top) / 2)


def gen_mask(size: int = CROP) -> np.ndarray:
    """Hard [size, size] float32 mask of the regenerated region (1 inside)."""
    (cx, cy), (ax, ay) = gen_ellipse(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return ((((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2) <= 1.0).astype(np.float32)


def feather_mask(size: int = CROP) -> np.ndarray:
    """Soft blending mask: the hard mask shrunk a little and feathered, inside the hard mask."""
    (cx, cy), (ax, ay) = gen_ellipse(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return np.clip((1.0 - r) / 0.18, 0.0, 1.0).astype(np.float32)


_MASK = gen_mask()
_FEATHER = feather_mask()


def heatmaps(landmarks: np.ndarray, size: int = CROP, sigma: float = HEAT_SIGMA) -> np.ndarray:
    """[5, size, size] Gaussian heat-maps of landmarks given in crop pixels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    out = np.empty((5, size, size), np.float32)
    for i, (x, y) in enumerate(np.asarray(landmarks, np.float32)):
        out[i] = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma * sigma))
    return out


def lowfreq(y: np.ndarray) -> np.ndarray:
    """4x4 cell means of a [-1, 1] luminance crop."""
    return cv2.resize(y, (LOWFREQ_CELLS, LOWFREQ_CELLS), interpolation=cv2.INTER_AREA)


def mix_lowfreq(cells: np.ndarray, pattern: np.ndarray, degree: float) -> np.ndarray:
    """The degree knob: move the face's 4x4 luminance layout toward a generic face's layout at the
    face's own mean brightness. 0 keeps it, 1 replaces it, >1 pushes past the mean (away)."""
    target = pattern - pattern.mean() + cells.mean()
    return (cells + degree * (target - cells)).astype(np.float32)


def conditions(y: np.ndarray, landmarks: np.ndarray, degree: float, pattern: np.ndarray) -> np.ndarray:
    """[COND_CHANNELS, CROP, CROP] float32 identity-free conditions of a [-1, 1] luminance crop
    and its landmarks (crop pixels)."""
    size = y.shape[0]
    mask = _MASK if size == CROP else gen_mask(size)
    ctx = cv2.GaussianBlur(y, (0, 0), CONTEXT_SIGMA) * (1.0 - mask)
    cells = mix_lowfreq(lowfreq(y), pattern, degree)
    low = cv2.resize(cells, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.concatenate([ctx[None], mask[None], low[None], heatmaps(landmarks, size)], 0).astype(np.float32)


def seed_noise(seed: int, size: int = CROP) -> np.ndarray:
    """The track's fixed generator noise, [1, 1, size, size] float32."""
    rng = np.random.default_rng(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    return rng.standard_normal((1, 1, size, size)).astype(np.float32)


def to_unit(y_u8: np.ndarray) -> np.ndarray:
    return y_u8.astype(np.float32) / 127.5 - 1.0


def match_sigma(degree: float) -> float:
    """Scale of the original's luminance kept at paste-back: ``MATCH_SIGMA`` (lighting only) at
    degree >= 1, down to 0.3 x that at degree 0 (more of the original's shading: faithful but
    re-identifiable). The second half of the degree knob."""
    return MATCH_SIGMA * float(np.clip(0.3 + 0.7 * degree, 0.3, 1.0))


@lru_cache(maxsize=16)
def _mask_blur(sigma: float, size: int = CROP) -> tuple[np.ndarray, np.ndarray]:
    mask = gen_mask(size)
    return mask, cv2.GaussianBlur(mask, (0, 0), sigma) + 1e-4


@lru_cache(maxsize=4)
def _feather_box(size: int = CROP) -> np.ndarray:
    ys, xs = np.nonzero(feather_mask(size) > 0)
    x0, x1, y0, y1 = xs.min() - 1, xs.max() + 2, ys.min() - 1, ys.max() + 2
    return np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float32)


def _blur(patch: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels, computed on a copy downscaled so that sigma is ~2 px
    there (a huge kernel at a fraction of the cost)."""
    ph, pw = patch.shape[:2]
    k = max(1.0, sigma / 2.0)
    small = cv2.resize(patch, (max(1, round(pw / k)), max(1, round(ph / k))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / k)
    return cv2.resize(small, (pw, ph), interpolation=cv2.INTER_LINEAR)


def shrunk(patch: np.ndarray, region: np.ndarray, side: int = LAYER_SIDE) -> tuple[np.ndarray, np.ndarray, float]:
    """``patch`` (area-averaged) and its ``region`` mask (nearest) at most ``side`` pixels across,
    and the scale: a smooth layer computed there and resized up looks the same at a fraction of
    the cost on a close-up."""
    ph, pw = patch.shape[:2]
    k = min(1.0, side / max(ph, pw))
    if k == 1.0:
        return patch, region, k
    size = (max(int(round(pw * k)), 1), max(int(round(ph * k)), 1))
    return cv2.resize(patch, size, interpolation=cv2.INTER_AREA), cv2.resize(region, size, interpolation=cv2.INTER_NEAREST), k


def head_blur(patch: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The layer under the generated face. Strong in the ellipse's centre (sigma a quarter of the
    head: should bad landmarks misplace the generated face, the face interior is still gone) and
    lighter toward the rim (sigma 1/32: hair, ears and background keep a soft outline instead of
    a flat oval). Both blurs are smooth: computed at most ``LAYER_SIDE`` across (:func:`shrunk`), a
    400 px close-up's layer costs a tenth of the full-resolution one and looks the same."""
    ph, pw = patch.shape[:2]
    small, inside, k = shrunk(patch, (region > 0).astype(np.uint8))
    side = max(small.shape[:2])
    strong, light = _blur(small, side / 4.0), _blur(small, side / 32.0)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    depth /= max(float(depth.max()), 1e-6)  # 0 on the rim, 1 in the centre
    w = np.clip((depth - 0.25) / 0.25, 0.0, 1.0).astype(np.float32)
    layer = cv2.blendLinear(strong, light, w, 1.0 - w)
    return cv2.resize(layer, (pw, ph), interpolation=cv2.INTER_LINEAR) if k < 1.0 else layer


def composite(
    frame: np.ndarray, face: Face, matrix: np.ndarray, crop_bgr: np.ndarray, gen_y: np.ndarray, degree: float = 1.0
) -> None:
    """Paste a generated [-1, 1] luminance crop back into ``frame`` (in place).

    Lighting comes from the original at :func:`match_sigma` (``degree``), skin tone at
    ``MATCH_SIGMA``; the whole ``face_region`` ellipse is blurred first so that anything the
    generated ellipse does not cover is redacted."""
    size = gen_y.shape[0]
    ycc = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    gen = (gen_y.astype(np.float32) + 1.0) * 127.5
    # Lighting / skin-tone transfer restricted to the face ellipse (normalised blurs, so the
    # background does not leak in).
    sig = round(match_sigma(degree), 2)
    mask, wl = _mask_blur(sig, size)
    _, wsum = _mask_blur(MATCH_SIGMA, size)
    lo_orig = cv2.GaussianBlur(ycc[..., 0] * mask, (0, 0), sig) / wl
    lo_gen = cv2.GaussianBlur(gen * mask, (0, 0), sig) / wl
    chroma = cv2.GaussianBlur(ycc[..., 1:] * mask[..., None], (0, 0), MATCH_SIGMA) / wsum[..., None]
    out = np.dstack([gen - lo_gen + lo_orig, chroma])
    out_bgr = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2BGR)

    rows, cols, region = face_region(face, frame.shape)
    # 1) the base layer: every pixel of the head ellipse blurred (hair, ears, anything the
    #    generated face does not cover).
    patch = frame[rows, cols]
    np.copyto(patch, head_blur(patch, region), where=(region > 0)[..., None])
    # 2) the generated face, feathered over it, inside the footprint of the feather mask
    inv = cv2.invertAffineTransform(matrix)
    corners = _feather_box(size) @ inv.T
    h, w = frame.shape[:2]
    x0, y0 = max(int(np.floor(corners[:, 0].min())), 0), max(int(np.floor(corners[:, 1].min())), 0)
    x1, y1 = min(int(np.ceil(corners[:, 0].max())) + 1, w), min(int(np.ceil(corners[:, 1].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("generated face lies outside the frame")
    roi = frame[y0:y1, x0:x1]
    shift = inv.copy()
    shift[:, 2] -= (x0, y0)
    rw, rh = x1 - x0, y1 - y0
    warped = cv2.warpAffine(out_bgr, shift, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(_FEATHER if size == CROP else feather_mask(size), shift, (rw, rh), flags=cv2.INTER_LINEAR)
    roi[:] = cv2.blendLinear(warped, roi, alpha, 1.0 - alpha)


def aligned_crop(frame: np.ndarray, face: Face, size: int = CROP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(BGR crop, 2x3 matrix, landmarks in crop pixels) of ``face``."""
    lm = np.asarray(face.landmarks, np.float32)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        raise ValueError("face has no usable landmarks")
    matrix = similarity_transform(lm, template(size, MARGIN))
    crop = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    crop_lm = lm @ matrix[:, :2].T + matrix[:, 2]
    return crop, matrix, crop_lm.astype(np.float32)


@dataclass
class _Track:
    gen_y: np.ndarray  # [CROP, CROP] generated luminance in [-1, 1], template space
    frame_no: int  # frame counter when it was generated
    landmarks: np.ndarray  # crop-space landmarks it was generated for
    safe: bool = True  # False: the check found it too similar to the person; classical instead
    checked: tuple[float, float, float, bool] | None = None  # its last passed check (IdentityCheck.passed)
    held: tuple[tuple[float, float, float, bool], int] | None = None  # (pose, frame) of a render that failed it


class DiffusionAnonymizer(TrackedAnonymizer):
    """Few-step diffusion student through onnxruntime; per-track seed and cache.

    Parameters
    ----------
    model_path: the student ONNX (``edge_agent/assets/face_student.onnx``).
    degree: identity change vs faithfulness. It moves the generator's 4x4 luminance condition
        from the face's own layout (0) to a generic face's at the same brightness (1) and past
        it (>1), and shrinks how much of the original's shading is put back at paste-back
        (0: down to sigma 2 px of the 64 px crop, faithful and re-identifiable; >= 1: lighting
        only). Default 1.
    regenerate_every: frames between regenerations of a track's face (0 = only once per track);
        in between the cached face is warped onto the current landmarks.
    regenerate_on_motion: also regenerate when the crop-space landmarks moved more than this many
        crop pixels from those the cached face was generated for (expression / pose change).
    budget_ms: per-frame time for *new generations*, counted from :meth:`begin_frame`; a face
        that needs a generation after the budget is spent raises :class:`BudgetExceeded` (the
        pipeline falls back to classical redaction for that face in that frame) unless a cached
        face exists, which is then re-used. ``None`` = no budget.
    min_face_px: faces narrower than this go to ``small_faces`` instead (default: pixelate).
        Below the generator's resolution the lighting, skin tone and outline that generation keeps
        are most of what a recogniser sees: on the demo clip (``python -m model_export.anonymizer
        clip-check``) regenerated faces under 30 px kept a mean cosine of 0.27 to their originals
        (max 0.37), faces from 60 px 0.04.
    small_faces: the anonymizer for those faces, and for tracks whose generated face failed the
        check below.
    embedder, max_similarity: the check, at each generation: the project's recogniser embeds the
        face before and after (:class:`~edge_agent.anonymize.identity_check.IdentityCheck`); at cosine >=
        ``max_similarity`` the generated face still looks too much like the person, so that track
        gets ``small_faces`` until its next regeneration. 0.35 = above every different-person pair
        of LFW measured at the threshold report. A re-used face whose head has turned or neared
        since its check is checked again; too close, ``small_faces`` goes over it for that frame.
        ``embedder=None`` skips the checks.
    backend, threads, cache_dir: passed to ``open_session``.
    max_tracks: cache size bound (least recently used dropped).
    """

    name = "diffusion"

    def __init__(
        self,
        model_path: str | Path,
        degree: float = 1.0,
        regenerate_every: int = 90,
        regenerate_on_motion: float = 4.0,
        budget_ms: float | None = 25.0,
        backend: str = "cpu",
        threads: int = 1,
        cache_dir: Path | None = None,
        max_tracks: int = 64,
        min_face_px: float = 40.0,
        small_faces: Anonymizer | None = None,
        embedder=None,
        max_similarity: float = 0.35,
    ) -> None:
        from edge_agent.anonymize.classical import Pixelate

        from edge_agent.models.runtime import open_session

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"diffusion student not found: {path}")
        self.session = open_session(path, backend, threads, cache_dir)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != {"noise", "cond"}:
            raise ValueError(f"unexpected student inputs {sorted(inputs)}")
        shape = inputs["noise"].shape
        if list(shape) != [1, 1, CROP, CROP] or list(inputs["cond"].shape) != [1, COND_CHANNELS, CROP, CROP]:
            raise ValueError(f"unexpected student input shapes {shape}, {inputs['cond'].shape}")
        meta = self.session.get_modelmeta().custom_metadata_map
        pattern = meta.get("mean_pattern")
        self.pattern = (
            np.array([float(v) for v in pattern.split(",")], np.float32).reshape(LOWFREQ_CELLS, LOWFREQ_CELLS)
            if pattern else DEFAULT_MEAN_PATTERN
        )
        self.steps = int(meta.get("steps", "1"))
        self.model_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.degree = float(degree)
        self.regenerate_every = int(regenerate_every)
        self.regenerate_on_motion = float(regenerate_on_motion)
        self.budget_ms = budget_ms
        self.max_tracks = int(max_tracks)
        self.min_face_px = float(min_face_px)
        self.small_faces = small_faces or Pixelate()
        self.check = None if embedder is None else IdentityCheck(embedder, max_similarity)
        self._tracks: dict[int, _Track] = {}
        self._frame_no = 0
        self._frame_start: float | None = None
        self.stats = {"generated": 0, "reused": 0, "over_budget": 0, "small": 0, "too_similar": 0, "rechecked": 0, "recheck_failed": 0, "held": 0}

    # -- generation ----------------------------------------------------------------------------
    def generate(self, noise: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """One student call: [1,1,C,C] noise + [1,8,C,C] conditions -> [C,C] luminance in [-1, 1]."""
        out = self.session.run(None, {"noise": noise, "cond": cond})[0]
        if out.shape != (1, 1, CROP, CROP) or not np.all(np.isfinite(out)):
            raise ValueError("diffusion student produced an invalid output")
        return np.clip(out[0, 0], -1.0, 1.0)

    def _needs_generation(self, track: _Track | None, crop_lm: np.ndarray) -> bool:
        if track is None:
            return True
        if self.regenerate_every > 0 and self._frame_no - track.frame_no >= self.regenerate_every:
            return True
        if self.regenerate_on_motion > 0:
            moved = float(np.abs(crop_lm - track.landmarks).max())
            if moved > self.regenerate_on_motion:
                return True
        return False

    def anonymize(self, frame: np.ndarray, face: Face, seed: int = 0) -> None:
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("anonymizer expects a BGR uint8 frame")
        if face.width < self.min_face_px:
            self.stats["small"] += 1
            self.small_faces.anonymize(frame, face, seed)
            return
        crop, matrix, crop_lm = aligned_crop(frame, face)
        seed = int(seed)
        track = self._tracks.get(seed)
        if self._needs_generation(track, crop_lm):
            over = (
                self.budget_ms is not None
                and self._frame_start is not None
                and (time.perf_counter() - self._frame_start) * 1000.0 > self.budget_ms
            )
            if over and track is None:
                self.stats["over_budget"] += 1
                raise BudgetExceeded("diffusion budget for this frame is spent")
            if not over:
                y = to_unit(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY))
                cond = conditions(y, crop_lm, self.degree, self.pattern)[None]
                gen_y = self.generate(seed_noise(seed), cond)
                key = None if self.check is None else self._checked(frame, face, matrix, crop, gen_y)
                track = _Track(gen_y=gen_y, frame_no=self._frame_no, landmarks=crop_lm,
                               safe=self.check is None or key is not None, checked=key)
                self._tracks.pop(seed, None)
                self._tracks[seed] = track
                self.stats["generated"] += 1
                while len(self._tracks) > self.max_tracks:
                    self._tracks.pop(next(iter(self._tracks)))
            else:
                self.stats["reused"] += 1
        else:
            self.stats["reused"] += 1
            self._tracks[seed] = self._tracks.pop(seed)  # LRU touch
        if not track.safe or self._held(track, face):
            self.small_faces.anonymize(frame, face, seed)
            return
        if self.check is not None and drifted(track.checked, face):
            self._recheck_later(face, seed, track, self.check.person(self.original(frame), face))
        composite(frame, face, matrix, crop, track.gen_y, self.degree)

    def _checked(self, frame: np.ndarray, face: Face, matrix: np.ndarray, crop: np.ndarray, gen_y: np.ndarray) -> tuple | None:
        """The check of a generated face: what it passed at (:meth:`IdentityCheck.passed`), None when
        it is too close to the person."""
        trial = frame.copy()
        composite(trial, face, matrix, crop, gen_y, self.degree)
        key = self.check.passed(self.check.person(self.original(frame), face), trial, face)
        if key is None:
            self.stats["too_similar"] += 1
        return key
