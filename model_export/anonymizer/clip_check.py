"""`clip-check`: how close regenerated audience faces of the demo clip stay to their originals, by
face width (the measurement behind ``diffusion.min_face_px`` and ``max_similarity``), and what the
agent's diffusion anonymizer does over the clip with a given config (generated / re-used / small /
rejected as too similar)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_agent.anonymize.classical import Pixelate
from edge_agent.anonymize.diffusion import DiffusionAnonymizer
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.yunet import YuNet
from model_export.anonymizer.data import arcface_path, yunet_path

REGISTERED = ("lin-manuel-miranda.png", "alex-lacamoire.png")  # the clip's performers: not audience
BINS = ((0, 30), (30, 40), (40, 60), (60, 10_000))


def similarity_by_width(shared: Path, student: Path, seeds: int, every: int, threads: int) -> list[dict]:
    det, emb = YuNet(yunet_path(shared), threads=threads), ArcFaceEmbedder(arcface_path(shared), threads=threads)
    gen = DiffusionAnonymizer(student, threads=threads, budget_ms=None, min_face_px=0)
    performers = []
    for photo in REGISTERED:
        img = cv2.imread(str(Path(shared) / "faces/face_recognition/examples" / photo))
        performers.append(emb.embed(img, [max(det.detect(img), key=lambda f: f.width)])[0])
    performers = np.stack(performers)
    cap = cv2.VideoCapture(str(Path(shared) / "video/short_hamilton_clip.mp4"))
    rows = []  # (width, cosine generated, cosine pixelated)
    index = 0
    with tqdm(desc="clip frames", unit="frame") as bar:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            index += 1
            bar.update(1)
            if index % every:
                continue
            for face in det.detect(frame):
                original = emb.embed(frame, [face])[0]
                # identifiable audience faces only (the same rule as tests/test_video.py)
                if emb.null_similarity(original[None])[0] >= 0.25 or float((performers @ original).max()) >= 0.30:
                    continue
                pix = frame.copy()
                Pixelate().anonymize(pix, face, 0)
                p_cos = float(original @ emb.embed(pix, [face])[0])
                for seed in range(seeds):
                    out = frame.copy()
                    gen.forget(seed)
                    gen.anonymize(out, face, seed)
                    rows.append((face.width, float(original @ emb.embed(out, [face])[0]), p_cos))
    data = np.array(rows, np.float32).reshape(-1, 3)
    result = []
    for lo, hi in BINS:
        sel = data[(data[:, 0] >= lo) & (data[:, 0] < hi)]
        if len(sel):
            result.append({"width": f"{lo}-{hi if hi < 10_000 else ''}", "samples": int(len(sel)), "generated_max": float(sel[:, 1].max()),
                           "generated_mean": float(sel[:, 1].mean()), "pixelated_max": float(sel[:, 2].max())})
    return result


def agent_counts(shared: Path, config: Path) -> dict:
    """The configured pipeline over the whole clip, nobody registered: the diffusion anonymizer's counters."""
    from edge_agent.config import load_config
    from edge_agent.service import Models
    from edge_agent.stats import CameraStats

    cfg = load_config(config, env={"EDGE_AGENT_DATA_DIR": tempfile.mkdtemp(prefix="clip-check-")})
    guard = Models(cfg).pipeline(CameraStats("clip-check"))
    cap = cv2.VideoCapture(str(Path(shared) / "video/short_hamilton_clip.mp4"))
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            guard.filter_array(frame)
        return dict(getattr(guard.pipeline.anonymizer, "stats", {}))
    finally:
        guard.close()


def clip_check(args) -> None:
    for row in similarity_by_width(args.shared, args.student, args.seeds, args.every, args.threads):
        print(f"faces {row['width']:>7} px: {row['samples']:4d} generations, cosine to original max {row['generated_max']:.3f} "
              f"mean {row['generated_mean']:.3f}; pixelated max {row['pixelated_max']:.3f}")
    if args.config:
        print(f"agent with {args.config}:", agent_counts(args.shared, args.config))
