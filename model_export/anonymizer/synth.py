"""Synthetic training / donor faces: MobileStyleGAN images, found and aligned by the project's YuNet.

``python -m model_export.anonymizer synth --n N --seed S --out data/anonymizer/synth`` works in
chunks of ``CHUNK`` faces: the generator (its own virtualenv, ``make gen-venv``; see
:mod:`model_export.anonymizer.stylegan`) writes a chunk's images under ``out/raw/``, then this
process detects the face in each, aligns it with the agent's own template (``aligned_crop``,
64 and 128 px), and writes ``out/chunk_XXXX.npz``. A chunk whose npz exists is skipped, a
generated image that exists is not generated again: an interrupted run resumes where it stopped.

Each face keeps its landmarks (crop pixels), pose (yaw / pitch proxies from the 5 points) and
appearance descriptors (median L*, a*, b* of the cheeks and nose; L* spread) so that a donor can
be matched to a stranger without looking at anything but those numbers.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_agent.anonymize.descriptors import appearance, pose
from edge_agent.anonymize.diffusion import aligned_crop
from edge_agent.faces import Face
from edge_agent.models.yunet import YuNet

CHUNK = 100
SIZES = (64, 128)
HELDOUT_EVERY = 8  # face index % 8 == 7: held out of the donor bank, for evaluation


def heldout_index(index: np.ndarray | int) -> np.ndarray | bool:
    return np.asarray(index) % HELDOUT_EVERY == HELDOUT_EVERY - 1


def describe(img: np.ndarray, face: Face) -> dict:
    """Aligned crops and descriptors of one detected face."""
    rec = {"box": np.asarray(face.box, np.float32), "landmarks_src": np.asarray(face.landmarks, np.float32), "score": float(face.score)}
    for size in SIZES:
        crop, _, lm = aligned_crop(img, face, size)
        rec[f"crop{size}"] = crop
        rec[f"landmarks{size}"] = lm
    rec["yaw"], rec["pitch"] = pose(face.landmarks)
    rec["tone"] = appearance(rec["crop128"])
    return rec


def run_generator(gen_python: Path, first: int, count: int, seed: int, psi: float, raw: Path, bar: tqdm,
                  turn: tuple[Path, float, float] | None = None, to: bool = False) -> None:
    """Generate images [first, first + count) in the generator venv; one output line per face.
    ``turn``: (direction file, lowest and highest shift) to turn the heads along; ``to``: the
    shifts are where along it each face ends."""
    if not Path(gen_python).exists():
        raise SystemExit(f"edge-agent: error: generator venv not found at {gen_python} (run `make gen-venv`)")
    root = Path(__file__).resolve().parents[2]
    cmd = [str(gen_python), "-m", "model_export.anonymizer.stylegan", "--first", str(first), "--count", str(count),
           "--seed", str(seed), "--psi", str(psi), "--out", str(raw)]
    if turn is not None:
        cmd += ["--direction", str(Path(turn[0]).resolve()), "--shift", str(turn[1]), str(turn[2])] + (["--to"] if to else [])
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=root) as proc:
        for _ in proc.stdout:
            bar.update(1)
    if proc.returncode != 0:
        raise SystemExit(f"edge-agent: error: the generator failed (exit {proc.returncode})")


def process_chunk(raw: Path, indices: range, det: YuNet) -> dict:
    """Detect + align every image of a chunk; the face nearest the centre (one per image)."""
    recs, missing = [], []
    for i in indices:
        img = cv2.imread(str(raw / f"{i:06d}.jpg"))
        faces = det.detect(img) if img is not None else []
        if not faces:
            missing.append(i)
            continue
        h, w = img.shape[:2]
        face = min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - w / 2) ** 2 + ((f.box[1] + f.box[3]) / 2 - h / 2) ** 2)
        rec = describe(img, face)
        rec["index"] = i
        recs.append(rec)
    out = {k: np.stack([r[k] for r in recs]) for k in recs[0]} if recs else {}
    out["missing"] = np.array(missing, np.int64)
    return out


def synth(n: int, seed: int, out: Path, psi: float = 0.7, gen_python: Path = Path(".venv-gen/bin/python"),
          yunet: Path | None = None, first: int = 0, turn: tuple[Path, float, float] | None = None, to: bool = False) -> None:
    """Faces ``first`` .. ``first + n - 1`` of seed ``seed`` under ``out`` (see the module docstring);
    ``turn``: their heads turned (:func:`run_generator`)."""
    out = Path(out)
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    meta = out / "meta.txt"
    stamp = f"seed={seed} psi={psi}" + (f" first={first}" if first else "")
    if turn is not None:
        digest = hashlib.sha256(Path(turn[0]).read_bytes()).hexdigest()[:16]
        stamp += f" turned along {Path(turn[0]).name} (sha256 {digest}) {'to' if to else 'by'} {turn[1]:g}-{turn[2]:g}"
    stamp += "\n"
    if meta.exists() and meta.read_text() != stamp:
        raise SystemExit(f"edge-agent: error: {out} holds faces of another run ({meta.read_text().strip()}); use another --out")
    meta.write_text(stamp)
    det = YuNet(yunet or default_yunet(), threads=1)
    chunks = [range(s, min(s + CHUNK, first + n)) for s in range(first, first + n, CHUNK)]
    bar = tqdm(total=n, desc="synthetic faces", unit="face")
    kept = 0
    for k, idx in enumerate(chunks):
        path = out / f"chunk_{k:04d}.npz"
        if path.exists():
            with np.load(path) as z:
                kept += len(z["index"]) if "index" in z else 0
            bar.update(len(idx))
            continue
        run_generator(gen_python, idx.start, len(idx), seed, psi, raw, bar, turn, to)
        data = process_chunk(raw, idx, det)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **data)
        tmp.rename(path)
        kept += len(data.get("index", ()))
    bar.close()
    print(f"synth: {kept} aligned faces of {n} generated in {out} (held out for evaluation: index % {HELDOUT_EVERY} == {HELDOUT_EVERY - 1})")


def default_yunet() -> Path:
    """The project's detector file: EDGE_AGENT_MODELS (or ./models) / yunet_s_dynamic.onnx."""
    import os

    path = Path(os.environ.get("EDGE_AGENT_MODELS", "models")) / "yunet_s_dynamic.onnx"
    if not path.is_file():
        raise SystemExit(f"edge-agent: error: detector not found at {path} (make models, or set EDGE_AGENT_MODELS)")
    return path


def load(out: Path, heldout: bool | None = None) -> dict:
    """All chunks of a ``synth`` directory concatenated; ``heldout`` True/False selects a split."""
    parts = []
    for path in sorted(Path(out).glob("chunk_*.npz")):
        with np.load(path) as z:
            if "index" in z:
                parts.append({k: z[k] for k in z.files if k != "missing"})
    if not parts:
        raise FileNotFoundError(f"no synthetic faces under {out} (python -m model_export.anonymizer synth)")
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if heldout is not None:
        sel = heldout_index(data["index"]) == heldout
        data = {k: v[sel] for k, v in data.items()}
    return data
