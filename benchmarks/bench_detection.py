"""Per-frame cost of the detector stack at 1080p and 4K (issue 11), beside YuNet at 640 px.

    python benchmarks/bench_detection.py [--config device_configs/x86-cpu.yaml] [--rounds 5]

Frames are mosaics of the shared crowd photos (EDGE_AGENT_SHARED_DIR), built in memory; without
the data, uniform noise frames (cost only: the tile count does not depend on content). Each
frame size runs the plain and the tiled detector alternately, round by round, so both see the
same load; the median of each is reported with the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import load_config
from edge_agent.models.loader import load_detector
from edge_agent.models.tiling import TiledDetector

SIZES = {"1080p": (1920, 1080), "4K": (3840, 2160)}


def frames(shared: str | None) -> dict[str, np.ndarray]:
    photos = sorted(Path(shared, "faces/crowds").glob("*.jpg")) if shared else []
    out = {}
    for name, (w, h) in SIZES.items():
        if not photos:
            out[name] = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
            continue
        canvas = np.zeros((h, w, 3), np.uint8)
        cols, rows = (4, 3) if w < 2000 else (6, 5)
        cw, ch = w // cols, h // rows
        for cell in range(cols * rows):
            image = cv2.imread(str(photos[cell % len(photos)]))
            canvas[(cell // cols) * ch : (cell // cols + 1) * ch, (cell % cols) * cw : (cell % cols + 1) * cw] = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_AREA)
        out[name] = canvas
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="agent config whose detector stack is measured (default: built-in defaults)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    stack = load_detector(config)
    if not isinstance(stack, TiledDetector):
        raise SystemExit("the configured detector is not the tiled YuNet stack")
    det = config.models.detector
    plain = TiledDetector(stack.yunet, det.min_face_px, 0, det.tile_size, det.tile_batch, det.border_score_threshold)
    print(f"## Detector stack per frame ({os.cpu_count()} CPUs, median of {args.rounds} alternating rounds, backend {det.backend})\n")
    print("| frame | plan | YuNet at 640 px ms | stack ms | stack / 640 px | faces 640 px / stack |")
    print("|---|---|---|---|---|---|")
    for name, frame in frames(os.environ.get("EDGE_AGENT_SHARED_DIR")).items():
        times: dict[str, list[float]] = {"plain": [], "stack": []}
        counts = {}
        for detector in (plain, stack):  # warm-up (first-frame plan, allocations)
            detector.detect(frame)
        for _ in range(args.rounds):
            for key, detector in (("plain", plain), ("stack", stack)):
                start = time.perf_counter()
                counts[key] = len(detector.detect(frame))
                times[key].append((time.perf_counter() - start) * 1000)
        p, s = statistics.median(times["plain"]), statistics.median(times["stack"])
        plan = stack.plan(frame.shape[1], frame.shape[0])
        print(f"| {name} | {len(plan.tiles)} tiles at {plan.tile_scale:.2f}, smallest face {plan.smallest_face_px:.0f} px | {p:.1f} | {s:.1f} | {s / p:.1f}x | {counts['plain']} / {counts['stack']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
