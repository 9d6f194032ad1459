"""Per-face cost of the donor anonymizer by face size, beside pixelate, in the same run (`make bench`).

    python benchmarks/bench_donor.py [--shared DIR] [--repeats 30] [--json FILE]

A real photo (obama.jpg from $EDGE_AGENT_SHARED_DIR) is scaled so its face is 24-240 px wide; for
each size: a new track (donor choice + render) and a continuing track (render only), and
pixelate on the same face, taking turns so that all see the same machine load. Medians in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.anonymize.classical import Pixelate  # noqa: E402
from edge_agent.anonymize.donor import DonorAnonymizer  # noqa: E402
from edge_agent.models.yunet import YuNet  # noqa: E402

WIDTHS = (24, 40, 64, 128, 240)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("EDGE_AGENT_SHARED_DIR", "")))
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    photo = a.shared / "faces/face_recognition/examples/obama.jpg"
    img0 = cv2.imread(str(photo))
    if img0 is None:
        sys.exit(f"edge-agent: error: cannot read {photo} (set EDGE_AGENT_SHARED_DIR or --shared)")
    det = YuNet(a.shared / "models/yunet/yunet_s_dynamic.onnx", threads=1)
    face0 = max(det.detect(img0), key=lambda f: f.width)
    donor, pix = DonorAnonymizer(budget_ms=None), Pixelate()
    rows = []
    for width in WIDTHS:
        s = width / face0.width
        img = cv2.resize(img0, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        faces = det.detect(img) if width >= 40 else []
        face = max(faces, key=lambda f: f.width) if faces else _scaled(face0, s)
        t_new, t_cont, t_pix = [], [], []
        for r in range(a.repeats + 2):
            for name, fn in (("new", lambda o: (donor.forget(1), donor.anonymize(o, face, 1))),
                             ("cont", lambda o: donor.anonymize(o, face, 1)), ("pix", lambda o: pix.anonymize(o, face, 1))):
                out = img.copy()
                t0 = time.perf_counter()
                fn(out)
                dt = (time.perf_counter() - t0) * 1000
                if r >= 2:
                    {"new": t_new, "cont": t_cont, "pix": t_pix}[name].append(dt)
        row = {"face_px": round(face.width), "new_track_ms": float(np.median(t_new)), "continuing_ms": float(np.median(t_cont)),
               "pixelate_ms": float(np.median(t_pix))}
        rows.append(row)
        print(f"face {row['face_px']:4d} px: donor new track {row['new_track_ms']:6.2f} ms, continuing {row['continuing_ms']:6.2f} ms, "
              f"pixelate {row['pixelate_ms']:5.2f} ms ({row['continuing_ms'] / max(row['pixelate_ms'], 1e-6):.0f}x)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=1))


def _scaled(face, s):
    from edge_agent.faces import Face

    return Face(np.asarray(face.box) * s, np.asarray(face.landmarks) * s, face.score)


if __name__ == "__main__":
    main()
