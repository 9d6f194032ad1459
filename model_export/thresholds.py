"""How the recognition threshold was chosen: same/different-person cosines on labelled photos.

    python -m model_export.thresholds --shared DIR [--lfw-pairs 3000] [--out build/reports/recognition]

Uses every pair of ``faces/identities.csv`` (photos with identity ground truth) and, when
present, same/different pairs drawn from LFW (grayscale). Writes a Markdown table and a
histogram. The threshold a deployment wants is the lowest one whose false-accept rate on
impostor pairs is (near) zero: showing a stranger is the failure that matters.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import random
from itertools import combinations
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_agent.enroll import read_image
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.files import resolve
from edge_agent.models.yunet import YuNet


def embed_largest(path: Path, detector: YuNet, embedder: ArcFaceEmbedder) -> np.ndarray | None:
    image = read_image(path)
    faces = detector.detect(image)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.width * f.height)
    return embedder.embed(image, [face])[0]


def identity_pairs(shared: Path, detector, embedder) -> tuple[list[float], list[float]]:
    rows = list(csv.DictReader(open(shared / "faces/identities.csv")))
    embs, ids = [], []
    for row in tqdm(rows, desc="photos", unit="img"):
        e = embed_largest(shared / "faces" / row["path"], detector, embedder)
        if e is not None:
            embs.append(e)
            ids.append(row["identity"])
    same, diff = [], []
    for i, j in combinations(range(len(embs)), 2):
        (same if ids[i] == ids[j] else diff).append(float(embs[i] @ embs[j]))
    return same, diff


def lfw_pairs(shared: Path, count: int, detector, embedder, seed: int = 0) -> tuple[list[float], list[float]]:
    root = shared / "datasets/lfw_gray"
    if not root.is_dir():
        return [], []
    rng = random.Random(seed)
    people = sorted(p for p in root.iterdir() if p.is_dir())
    multi = [p for p in people if len(list(p.glob("*.jpg"))) >= 2]
    cache: dict[Path, np.ndarray | None] = {}

    def emb(path: Path):
        if path not in cache:
            cache[path] = embed_largest(path, detector, embedder)
        return cache[path]

    same, diff = [], []
    for _ in tqdm(range(count), desc="LFW pairs", unit="pair"):
        person = rng.choice(multi)
        a, b = rng.sample(sorted(person.glob("*.jpg")), 2)
        p, q = rng.sample(people, 2)
        c, d = rng.choice(sorted(p.glob("*.jpg"))), rng.choice(sorted(q.glob("*.jpg")))
        for (x, y), bucket in (((a, b), same), ((c, d), diff)):
            ex, ey = emb(x), emb(y)
            if ex is not None and ey is not None:
                bucket.append(float(ex @ ey))
    return same, diff


def rates(same: list[float], diff: list[float], threshold: float) -> tuple[float, float]:
    """(false accepts among impostors, false rejects among genuine pairs)."""
    far = float(np.mean(np.array(diff) >= threshold)) if diff else 0.0
    frr = float(np.mean(np.array(same) < threshold)) if same else 0.0
    return far, frr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--lfw-pairs", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path("build/reports/recognition"),
                        help="report directory (default build/reports/recognition; --out reports/recognition replaces the committed report)")
    args = parser.parse_args(argv)
    detector = YuNet(resolve(args.models, "yunet_s_dynamic.onnx"))
    embedder = ArcFaceEmbedder(resolve(args.models, "mobilefacenet.onnx"))
    sets = {"photos (identities.csv)": identity_pairs(args.shared, detector, embedder)}
    if args.lfw_pairs:
        sets["LFW gray"] = lfw_pairs(args.shared, args.lfw_pairs, detector, embedder)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# Recognition threshold", "", f"Command: `python -m model_export.thresholds --shared DIR --lfw-pairs {args.lfw_pairs}`", ""]
    for name, (same, diff) in sets.items():
        lines += [f"## {name}: {len(same)} same-person pairs, {len(diff)} different-person pairs", ""]
        lines += [f"- different-person cosine: max {max(diff):.3f}, 99.9th pct {np.percentile(diff, 99.9):.3f}, mean {np.mean(diff):.3f}"]
        lines += [f"- same-person cosine: min {min(same):.3f}, 5th pct {np.percentile(same, 5):.3f}, mean {np.mean(same):.3f}", ""]
        lines += ["| threshold | false accept (stranger shown) | false reject (registered hidden) |", "|---|---|---|"]
        for t in (0.30, 0.35, 0.38, 0.40, 0.42, 0.45, 0.50):
            far, frr = rates(same, diff, t)
            lines.append(f"| {t:.2f} | {far:.2%} | {frr:.2%} |")
        lines.append("")
    (args.out / "thresholds.md").write_text("\n".join(lines) + "\n")  # the numbers, before any plotting
    if importlib.util.find_spec("matplotlib") is not None:
        write_histogram(sets, args.out / "cosine_histogram.png")
        lines.append("![cosine histograms](cosine_histogram.png)")
        (args.out / "thresholds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def write_histogram(sets: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.2))
    for ax, (name, (same, diff)) in zip(np.atleast_1d(axes), sets.items()):
        ax.hist(diff, bins=60, alpha=0.6, density=True, label="different people")
        ax.hist(same, bins=60, alpha=0.6, density=True, label="same person")
        ax.axvline(0.42, color="k", linestyle="--", label="threshold 0.42")
        ax.set_title(name)
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    raise SystemExit(main())
