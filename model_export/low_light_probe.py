"""The choices behind the detector's low-light pass, measured side by side.

    python -m model_export.low_light_probe --config device_configs/x86-cpu.yaml --shared $SHARED

Crowd photos at full light and darkened (linear light, a sensor's noise, JPEG 60; reference:
the faces >= 20 px the single pass finds in the originals): the share found by the single pass,
the configured stack (single + denoised pass), the denoised pass alone, the single pass plus a
half-resolution denoised pass (a cheaper second pass), plus a denoised pass that keeps confident
boxes only (no border threshold), plus a denoised and brightened pass (gamma 0.5). Then every
clip under video/: how many frames trigger the pass, detections and detector ms a frame with and
without it, the boxes the denoised pass alone would miss, and how many of the faces the stack
finds in the clip are found again in a darkened copy (10 %, 3 %, 1 % light). Numbers only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_agent.config import load_config
from edge_agent.models.loader import load_detector
from edge_agent.models.tiling import DENOISE_SIGMA, TiledDetector, low_light
from edge_agent.tracker import box_iou
from model_export.low_light import darken

GAINS = (1.0, 0.03, 0.01)
GAMMA = (255 * (np.arange(256) / 255) ** 0.5).astype(np.uint8)


def _boxes(faces) -> list:
    return [f.box for f in faces]


def _variants(single: TiledDetector, stack: TiledDetector) -> dict:
    def denoised(im):
        return cv2.GaussianBlur(im, (0, 0), DENOISE_SIGMA)

    def half(im):
        small = cv2.resize(denoised(im), (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA)
        return [b * 2 for b in _boxes(single.detect(small))]

    threshold = single.yunet.score_threshold
    return {
        "single pass": lambda im: _boxes(single.detect(im)),
        "configured stack": lambda im: _boxes(stack.detect(im)),
        "denoised only": lambda im: _boxes(single.detect(denoised(im))),
        "single + half-res denoised": lambda im: _boxes(single.detect(im)) + half(im),
        "single + denoised, confident only": lambda im: _boxes(single.detect(im)) + [f.box for f in single.detect(denoised(im)) if f.score >= threshold],
        "single + denoised, gamma 0.5": lambda im: _boxes(single.detect(im)) + _boxes(single.detect(cv2.LUT(denoised(im), GAMMA))),
    }


def _found(refs: list, boxes: list) -> int:
    return sum(any(box_iou(r, b) >= 0.3 for b in boxes) for r in refs)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--shared", type=Path, required=True)
    p.add_argument("--frames", type=int, default=300, help="at most this many frames a clip")
    a = p.parse_args(argv)
    stack = load_detector(load_config(a.config))
    if not isinstance(stack, TiledDetector):
        raise SystemExit("low_light_probe: the configured detector is not the tiled YuNet stack")
    single = TiledDetector(stack.yunet, stack.min_face_px, stack.max_tiles, stack.tile_size, stack.batch, stack.border_threshold, low_light_pass=False)
    variants = _variants(single, stack)
    photos = [cv2.imread(str(q)) for q in sorted((a.shared / "faces/crowds").glob("*.jpg"))]
    refs = [[f.box for f in single.detect(ph) if f.width >= 20] for ph in photos]
    total = sum(map(len, refs))
    rng = np.random.default_rng(7)
    for gain in GAINS:
        found = dict.fromkeys(variants, 0)
        for photo, r in tqdm(list(zip(photos, refs)), desc=f"crowds at {gain:.0%} light", unit="img"):
            im = photo if gain == 1.0 else darken(photo, gain, rng, jpeg_quality=60)
            for name, fn in variants.items():
                found[name] += _found(r, fn(im))
        print(f"crowd photos at {gain:.0%} light ({total} faces): " + ", ".join(f"{k} {v / total:.3f}" for k, v in found.items()))
    for clip in sorted((a.shared / "video").glob("*.*")):
        cap = cv2.VideoCapture(str(clip))
        frames = triggered = with_pass = without = missed = 0
        t_with = t_without = 0.0
        while frames < a.frames:
            ok, f = cap.read()
            if not ok:
                break
            frames += 1
            triggered += low_light(f)
            t0 = time.perf_counter()
            both = _boxes(stack.detect(f))
            t1 = time.perf_counter()
            without += len(single.detect(f))
            t_with, t_without = t_with + t1 - t0, t_without + time.perf_counter() - t1
            with_pass += len(both)
            missed += len(both) - _found(both, variants["denoised only"](f))
        if frames:
            print(f"{clip.name}: {frames} frames, {triggered} trigger the pass; detections {without} single, {with_pass} with the pass "
                  f"({1000 * t_without / frames:.1f} vs {1000 * t_with / frames:.1f} ms a frame); the denoised pass alone misses {missed}")
            _darkened_clip(clip, stack, a.frames)


def _darkened_clip(clip: Path, stack: TiledDetector, limit: int) -> None:
    """The clip's faces as the stack finds them in full light (boxes off the frame border, where
    weak false positives sit), found again in a darkened copy of the same frames."""
    for gain in (0.1,) + GAINS[1:]:
        cap = cv2.VideoCapture(str(clip))
        rng = np.random.default_rng(7)
        refs = hits = frames = 0
        while frames < limit:
            ok, f = cap.read()
            if not ok:
                break
            frames += 1
            h, w = f.shape[:2]
            r = [x.box for x in stack.detect(f) if x.box[0] > 2 and x.box[1] > 2 and x.box[2] < w - 2 and x.box[3] < h - 2]
            if r:
                refs += len(r)
                hits += _found(r, _boxes(stack.detect(darken(f, gain, rng, jpeg_quality=60))))
        if refs:
            print(f"  darkened to {gain:.0%}: {hits} of {refs} full-light faces found")


if __name__ == "__main__":
    main()
