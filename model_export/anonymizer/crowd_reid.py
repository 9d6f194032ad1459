"""`crowd-reid`: can a recogniser pick a crowd's anonymized faces out of the crowd as filmed?

    python -m model_export.anonymizer crowd-reid --shared $SHARED

A 3840x2160 frame tiled from six of the shared crowd photos (about 140 faces of 40-100 px), and
a dark, noisy copy of it, go through the agent's still-photo pipeline once per mode (the
config's anonymizer, then the classical ones), nobody registered. Each identifying face the
agent's detector finds (from 30 px; not close to a blank face, as in tests/test_video.py) is
embedded by the project's recogniser (FP32) in the original and in the output at the agent's own
landmarks, and by dlib's (fitted on the original; when requirements/eval.txt is installed): rank-1 is the share of anonymized faces whose closest original is their own, among
all the frame's identifying faces (chance: one over their number). LFW's re-ID asks the same over
1,000 strangers in separate photos; here the gallery is the crowd the face stood in, with its
hair, outline and clothes around it. Track seeds, hence the donors drawn, are random as in the
agent; ``--seed`` fixes them, so that two revisions run with the same seeds differ only by what
changed (the run-to-run spread of random seeds is larger than most changes). For the donor mode it
also counts the faces whose synthetic person another face of the frame already shows.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import cv2
import numpy as np

from model_export.anonymizer.realism import IDENTIFYING_NULL_SIMILARITY

TILES = (3, 2)  # crowd photos across, down
TILE = (1280, 1080)  # each resized to this (a 3840x2160 frame)
DARK = (0.45, 6.0)  # the dark copy: gain, sensor-noise sigma (grey levels)
MIN_PX = 30.0
CLASSICAL = ("pixelate", "blur", "solid")


def crowd_frames(shared: Path) -> dict[str, np.ndarray]:
    """The tiled frame as photographed and its dark, noisy copy (seeded)."""
    files = sorted((Path(shared) / "faces/crowds").glob("*.jpg"))[: TILES[0] * TILES[1]]
    if len(files) < TILES[0] * TILES[1]:
        raise SystemExit(f"crowd-reid: {Path(shared) / 'faces/crowds'} has fewer than {TILES[0] * TILES[1]} photos")
    tiles = [cv2.resize(cv2.imread(str(f)), TILE, interpolation=cv2.INTER_AREA) for f in files]
    frame = np.vstack([np.hstack(tiles[r * TILES[0]:(r + 1) * TILES[0]]) for r in range(TILES[1])])
    noise = np.random.default_rng(0).normal(0.0, DARK[1], frame.shape)
    return {"bright": frame, "dark": np.clip(frame.astype(np.float32) * DARK[0] + noise, 0, 255).astype(np.uint8)}


def identifying(faces, frame: np.ndarray, emb) -> list:
    """The faces from ``MIN_PX`` whose embedding is not close to that of their box filled flat."""
    out = []
    for f in faces:
        if f.width < MIN_PX:
            continue
        x1, y1, x2, y2 = (int(v) for v in f.box)
        x1, y1 = max(x1, 0), max(y1, 0)
        blank = frame.copy()
        blank[y1:y2, x1:x2] = np.median(frame[y1:y2, x1:x2].reshape(-1, 3), 0)
        if float(emb.embed(frame, [f])[0] @ emb.embed(blank, [f])[0]) < IDENTIFYING_NULL_SIMILARITY:
            out.append(f)
    return out


def rank1(original: np.ndarray, anonymized: np.ndarray, faces: list, emb, dlib=None, shapes=None) -> dict:
    """Rank-1 of the anonymized faces among the originals, and their similarity to their own; with
    ``dlib`` (and its ``shapes``, fitted on the originals), dlib's rank-1 by distance too."""
    e0 = np.stack([emb.embed(original, [f])[0] for f in faces])
    e1 = np.stack([emb.embed(anonymized, [f])[0] for f in faces])
    sim = e1 @ e0.T
    own = np.diag(sim)
    out = {"faces": len(faces), "rank1": float((sim.argmax(1) == np.arange(len(faces))).mean()),
           "own_mean": float(own.mean()), "own_p90": float(np.percentile(own, 90)), "own_max": float(own.max())}
    if dlib is not None:
        from model_export.anonymizer.independent import pairwise

        d0 = np.stack([dlib.embed(original, s) for s in shapes])
        d1 = np.stack([dlib.embed(anonymized, s) for s in shapes])
        out["dlib_rank1"] = float((pairwise(d1, d0).argmin(1) == np.arange(len(faces))).mean())
    return out


def crowd_reid(args) -> None:
    from edge_agent.config import load_config
    from edge_agent.models.arcface import ArcFaceEmbedder
    from edge_agent.service import Models
    from edge_agent.stats import CameraStats
    from model_export.anonymizer.data import arcface_path

    emb = ArcFaceEmbedder(arcface_path(args.shared), threads=args.threads)
    cfg = load_config(args.config, env={"EDGE_AGENT_DATA_DIR": tempfile.mkdtemp(prefix="crowd-reid-")})
    if args.max_similarity is not None:
        cfg.anonymizer.donor.max_similarity = args.max_similarity
        cfg.anonymizer.diffusion.max_similarity = args.max_similarity
    models = Models(cfg)
    try:
        from model_export.anonymizer.independent import DlibCheck

        dlib = DlibCheck()
    except ImportError:
        dlib = None
        print("dlib is not installed (requirements/eval.txt): the project's recogniser only")
    modes = [cfg.anonymizer.mode] + [m for m in CLASSICAL if m != cfg.anonymizer.mode]
    for light, frame in crowd_frames(args.shared).items():
        faces = identifying(models.detector.detect(frame), frame, emb)
        shapes = None if dlib is None else [dlib.shape(frame, f.box) for f in faces]
        print(f"{light} crowd ({frame.shape[1]}x{frame.shape[0]}): {len(faces)} identifying faces from {MIN_PX:.0f} px, chance {1 / len(faces):.1%}")
        for mode in modes:
            cfg.anonymizer.mode = mode  # the loaded models' config: its next pipeline takes this mode
            guard = models.pipeline(CameraStats("crowd-reid"), still=True)
            guard.timeout_s = 600.0
            if args.seed is not None:  # the same track seeds, hence donors, for every revision compared
                guard.pipeline.tracker._rng = random.Random(args.seed)
            try:
                out, redacted = guard.filter_array(frame.copy())
                engine = guard.pipeline.anonymizer
                drawn = {k: engine.stats[k] for k in ("rendered", "too_similar") if k in getattr(engine, "stats", {})}
                worn = engine.worn() if hasattr(engine, "worn") else []  # the synthetic person each donor face shows
            finally:
                guard.close()
            if redacted:
                print(f"  {mode}: the frame was redacted whole")
                continue
            r = rank1(frame, out, faces, emb, dlib, shapes)
            print(f"  {mode}: rank-1 {r['rank1']:.1%} ({round(r['rank1'] * r['faces'])} of {r['faces']}), "
                  f"own similarity mean {r['own_mean']:.3f}, p90 {r['own_p90']:.3f}, max {r['own_max']:.3f}"
                  + (f"; dlib rank-1 {r['dlib_rank1']:.1%}" if "dlib_rank1" in r else "")
                  + (f"; {drawn['rendered']} faces drawn, {drawn['too_similar']} candidate donors too similar" if drawn else "")
                  + (f"; {len(worn) - len(set(worn))} of {len(worn)} donor faces repeat another's donor" if worn else ""))
