"""Per-face cost of the donor anonymizer by face size, beside pixelate, in the same run (`make bench`).

    python benchmarks/bench_donor.py [--shared DIR] [--repeats 30] [--json FILE]

A real photo (obama.jpg from $EDGE_AGENT_SHARED_DIR) is scaled so its face is 24-240 px wide; for
each size: a new track (donor choice + render) and a continuing track (render only), and
pixelate on the same face, taking turns so that all see the same machine load. Medians in ms.
First, the time the bank takes to load (part of the agent's start-up).

``--crowd``: a 1080p frame of 50 new faces (the photo, tiled) filtered frame after frame with the
agent's budgets and recogniser check, as the pipeline runs it (the frame's faces given to the
anonymizer, faces ordered by its priority, faces over the budget get the mosaic): time per frame, and frames until every face has
had its donor; without and with the refiner (when its model is there).
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
from edge_agent.anonymize.donor import DonorAnonymizer, HeadBlur, head_face  # noqa: E402
from edge_agent.models.yunet import YuNet  # noqa: E402

WIDTHS = (24, 40, 64, 128, 240)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("EDGE_AGENT_SHARED_DIR", "")))
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--crowd", type=int, default=0, help="also the crowd frame, for this many frames")
    a = p.parse_args()
    photo = a.shared / "faces/face_recognition/examples/obama.jpg"
    img0 = cv2.imread(str(photo))
    if img0 is None:
        sys.exit(f"edge-agent: error: cannot read {photo} (set EDGE_AGENT_SHARED_DIR or --shared)")
    det = YuNet(a.shared / "models/yunet/yunet_s_dynamic.onnx", threads=1)
    face0 = max(det.detect(img0), key=lambda f: f.width)
    t0 = time.perf_counter()
    donor = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    load_ms = (time.perf_counter() - t0) * 1000  # what the bank adds to the agent's start-up
    print(f"donor bank loaded in {load_ms:.0f} ms")
    pix, turned = Pixelate(), HeadBlur()
    rows = []
    for width in WIDTHS:
        s = width / face0.width
        img = cv2.resize(img0, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        faces = det.detect(img) if width >= 40 else []
        face = max(faces, key=lambda f: f.width) if faces else _scaled(face0, s)
        t_new, t_cont, t_pix, t_head = [], [], [], []
        for r in range(a.repeats + 2):
            for name, fn in (("new", lambda o: (donor.forget(1), donor.anonymize(o, face, 1))),
                             ("cont", lambda o: donor.anonymize(o, face, 1)), ("pix", lambda o: pix.anonymize(o, face, 1)),
                             ("head", lambda o: turned.anonymize(o, head_face(face), 1))):
                out = img.copy()
                t0 = time.perf_counter()
                fn(out)
                dt = (time.perf_counter() - t0) * 1000
                if r >= 2:
                    {"new": t_new, "cont": t_cont, "pix": t_pix, "head": t_head}[name].append(dt)
        row = {"face_px": round(face.width), "new_track_ms": float(np.median(t_new)), "continuing_ms": float(np.median(t_cont)),
               "pixelate_ms": float(np.median(t_pix)), "head_blur_ms": float(np.median(t_head))}
        rows.append(row)
        print(f"face {row['face_px']:4d} px: donor new track {row['new_track_ms']:6.2f} ms, continuing {row['continuing_ms']:6.2f} ms, "
              f"pixelate {row['pixelate_ms']:5.2f} ms ({row['continuing_ms'] / max(row['pixelate_ms'], 1e-6):.0f}x), "
              f"turned head (out of focus) {row['head_blur_ms']:5.2f} ms")
    result = {"bank_load_ms": load_ms, "per_face": rows}
    if a.crowd:
        from edge_agent.anonymize.refine import REFINER, Refiner

        result["crowd"] = [crowd(img0, face0, det, a, None)]
        if REFINER.is_file():
            result["crowd"].append(crowd(img0, face0, det, a, Refiner()))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1))


def crowd(img0: np.ndarray, face0, det, a, refiner) -> dict:
    from edge_agent.anonymize.diffusion import BudgetExceeded
    from edge_agent.models.arcface import ArcFaceEmbedder

    cols, rows = 10, 5
    tw, th = 1920 // cols, 1080 // rows
    x1, y1, x2, y2 = (int(v) for v in face0.box)
    cx, cy, half = (x1 + x2) // 2, (y1 + y2) // 2, int((x2 - x1) * 1.3)
    tile = cv2.resize(img0[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half], (tw, th), interpolation=cv2.INTER_AREA)
    frame0 = np.vstack([np.hstack([tile if (r + c) % 2 else tile[:, ::-1] for c in range(cols)]) for r in range(rows)])
    faces = det.detect(frame0)
    embedder = ArcFaceEmbedder(a.shared / "models/mobilefacenet/mobilefacenet.onnx", threads=1)
    anon, pix = DonorAnonymizer(embedder=embedder, refiner=refiner), Pixelate()
    first_donor: dict[int, int] = {}
    times, donors = [], []
    for n in range(a.crowd):
        frame = frame0.copy()
        t0 = time.perf_counter()
        anon.begin_frame(faces, frame)
        served = 0
        for k in sorted(range(len(faces)), key=anon.priority):
            try:
                anon.anonymize(frame, faces[k], k)
            except BudgetExceeded:
                pix.anonymize(frame, faces[k], k)
                continue
            if anon.donor_of(k) is not None:
                served += 1
                first_donor.setdefault(k, n + 1)
        anon.end_frame(frame)  # the due recogniser checks, on the finished frame, as the pipeline makes them
        times.append((time.perf_counter() - t0) * 1000)
        donors.append(served)
    everyone = len(first_donor) == len(faces)
    res = {"faces": len(faces), "frames": a.crowd, "ms_per_frame_median": float(np.median(times)),
           "ms_per_frame_p95": float(np.percentile(times, 95)), "donor_faces_per_frame_mean": float(np.mean(donors)),
           "frames_until_every_face_had_its_donor": max(first_donor.values()) if everyone else None,
           "faces_with_a_donor": len(first_donor), "refiner": bool(refiner), "stats": anon.stats}
    print(f"crowd: {res['faces']} faces of ~{np.median([f.width for f in faces]):.0f} px in a 1080p frame, {a.crowd} frames"
          f"{' with the refiner' if refiner else ''}: {res['ms_per_frame_median']:.1f} ms per frame (p95 {res['ms_per_frame_p95']:.1f}), "
          f"{res['donor_faces_per_frame_mean']:.1f} donor faces per frame; every face had its donor after "
          f"{res['frames_until_every_face_had_its_donor']} frames ({len(first_donor)} of {len(faces)} faces had one); {anon.stats}")
    return res


def _scaled(face, s):
    from edge_agent.faces import Face

    return Face(np.asarray(face.box) * s, np.asarray(face.landmarks) * s, face.score)


if __name__ == "__main__":
    main()
