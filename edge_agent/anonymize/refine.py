"""The refiner: a distilled 1-step diffusion student that renders a donor composite into the scene.

The donor anonymizer (``donor.py``) pastes a synthetic face over a blurred head region; what gives
it away is the paste itself: the blurred ring of hair and ears around the new face, seams, a
colour or shading step at the ellipse. The refiner sees only that *composite* (the original face is
already gone from it: the network cannot put back what it is not shown) and the head-region mask,
at a 64 px aligned crop, and predicts the natural face of that scene. Its output is applied as a
correction (refined minus composite) inside the head region, upsampled to the face's size, so a
close-up keeps the donor's own fine detail and only the coarse mistakes are fixed. Outside the head
region no pixel changes.

Model card, training (self-composites of synthetic faces, teacher and distillation) and the
reproduce command: ``edge_agent/assets/REFINER.md``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_agent.anonymize.base import face_region
from edge_agent.anonymize.diffusion import aligned_crop
from edge_agent.faces import Face

REFINER = Path(__file__).resolve().parent.parent / "assets" / "face_refiner.onnx"
REFINE_CROP = 64  # the network's aligned crop side (pixels)


def _edge_taper(size: int = REFINE_CROP, ramp: int = 6) -> np.ndarray:
    r = np.clip((np.minimum(np.arange(size), np.arange(size)[::-1]) + 0.5) / ramp, 0.0, 1.0).astype(np.float32)
    return np.minimum(r[:, None], r[None, :])


_EDGE_TAPER = _edge_taper()


def head_weight(frame_shape: tuple[int, ...], face: Face, matrix: np.ndarray, size: int = REFINE_CROP) -> np.ndarray:
    """The head region (the ellipse every anonymizer covers) in template space, feathered:
    float32 [size, size] in 0..1; where it is 0 the refiner changes nothing."""
    rows, cols, region = face_region(face, frame_shape)
    shift = matrix.copy()
    shift[:, 2] += matrix[:, :2] @ np.array([cols.start, rows.start], np.float64)
    w = cv2.warpAffine((region > 0).astype(np.float32), shift, (size, size), flags=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(w, (0, 0), size / 48.0)


def seed_noise3(seed: int, size: int = REFINE_CROP) -> np.ndarray:
    """The track's fixed noise (float32 [1, 3, size, size]): one refinement per track, no flicker."""
    rng = np.random.default_rng(np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF))
    return rng.standard_normal((1, 3, size, size)).astype(np.float32)


def network_input(crop: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(composite in -1..1 as RGB, head weight) stacked: float32 [1, 4, size, size]."""
    rgb = crop[..., ::-1].astype(np.float32) / 127.5 - 1.0
    return np.concatenate([rgb.transpose(2, 0, 1), weight[None]], 0)[None].astype(np.float32)


class Refiner:
    """onnxruntime session of the exported student (``model_export.anonymizer refiner-export``)."""

    def __init__(self, path: str | Path = REFINER, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"refiner model not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        if shapes.get("cond") != [1, 4, REFINE_CROP, REFINE_CROP] or shapes.get("noise") != [1, 3, REFINE_CROP, REFINE_CROP]:
            raise ValueError(f"{path}: not a refiner graph (inputs {shapes})")

    def __call__(self, crop: np.ndarray, weight: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Refined crop, float32 BGR 0..255 [size, size, 3]."""
        y = self.session.run(None, {"noise": noise, "cond": network_input(crop, weight)})[0][0]
        return ((y.transpose(1, 2, 0)[..., ::-1] + 1.0) * 127.5).astype(np.float32)

    def refine(self, frame: np.ndarray, face: Face, seed: int) -> None:
        """Render the composite at ``face`` into the scene (in place): the refiner's correction,
        warped back to frame pixels, added inside the head region."""
        crop, matrix, _ = aligned_crop(frame, face, REFINE_CROP)
        weight = head_weight(frame.shape, face, matrix)
        # the head ellipse may run past the crop (hair): the correction fades out at the crop's edge
        delta = (self(crop, weight, seed_noise3(seed)) - crop.astype(np.float32)) * (weight * _EDGE_TAPER)[..., None]
        rows, cols, region = face_region(face, frame.shape)
        inv = cv2.invertAffineTransform(matrix)
        inv[:, 2] -= (cols.start, rows.start)
        ph, pw = region.shape
        # a smooth upsampling (cubic): the correction's 64 px grid must not print onto a close-up
        up = cv2.warpAffine(delta, inv, (pw, ph), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        up *= (region > 0)[..., None]  # the feathered weight reaches past the ellipse: cut there
        patch = frame[rows, cols]
        patch[:] = np.clip(patch.astype(np.float32) + up, 0, 255).astype(np.uint8)
