"""Which camera views of an enrolment photo should become templates (``enroll.CAMERA_VIEWS``)?

    nice python -m model_export.template_views --shared DIR [--registered 200] [--impostors 300] [--frames 4]

LFW gray: ``--registered`` people enrolled from one photo each; impostor and genuine tracks as in
``model_export.recognition`` (camera views of one photo, pooled over ``--frames`` frames). For the
stored template set and for that set plus each other view, the best impostor pooled score and the
genuine pooled scores: a view earns its place only if it lifts genuine scores more than impostor
ones. Prints a Markdown table (and writes it to OUT/template_views.md).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_agent.config import RecognitionConfig
from edge_agent.enroll import CAMERA_VIEWS, TEMPLATE_VIEWS, camera_views, read_image
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.files import resolve
from edge_agent.models.yunet import YuNet
from model_export.recognition import embed_bank, largest_face


def pooled(bank, frames: int, min_face_px: int):
    idx = np.flatnonzero((bank.weights > 0) & (bank.px >= min_face_px))[:frames]
    if len(idx) < frames:
        return None
    p = (bank.embeddings[idx] * bank.weights[idx, None]).sum(0)
    return p / np.linalg.norm(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--registered", type=int, default=200)
    parser.add_argument("--impostors", type=int, default=300)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/recognition"))
    args = parser.parse_args(argv)
    cfg = RecognitionConfig()
    rng, pick = np.random.default_rng(args.seed), random.Random(args.seed)
    detector = YuNet(resolve(args.models, "yunet_s_dynamic.onnx"))
    embedder = ArcFaceEmbedder(resolve(args.models, "mobilefacenet.onnx"))
    root = args.shared / "datasets/lfw_gray"
    photos = {p.name: sorted(p.glob("*.jpg")) for p in sorted(root.iterdir()) if p.is_dir()}
    registered = sorted(pick.sample([n for n in photos if len(photos[n]) >= 2], args.registered))
    others = sorted(set(photos) - set(registered))
    views, owners, genuine = [], [], []
    for i, name in enumerate(tqdm(registered, desc="enrol", unit="person")):
        image = read_image(photos[name][0])
        face = largest_face(detector, image)
        if face is None:
            continue
        shots = camera_views(image, face)
        views.append(embedder.embed_crops(np.stack([embedder.crops(im, [f])[0] for _, im, f in shots])))
        owners.append(i)
        other = read_image(photos[name][1])
        other_face = largest_face(detector, other)
        if other_face is not None:
            genuine.append((len(views) - 1, embed_bank(other, other_face, embedder, rng, cfg.max_null_similarity)))
    impostors = []
    for name in tqdm(pick.sample(others, args.impostors), desc="impostors", unit="photo"):
        image = read_image(photos[name][0])
        face = largest_face(detector, image)
        if face is not None:
            impostors.append(embed_bank(image, face, embedder, rng, cfg.max_null_similarity))
    stack = np.stack(views)  # [people, views, dim]
    lines = [f"Template views: {len(views)} registered LFW people, {len(impostors)} impostor and {len(genuine)} genuine tracks "
             f"pooled over {args.frames} frames (faces >= {cfg.min_face_px} px)", "",
             "| templates | best impostor | impostor 99th pct | genuine 10th pct | genuine median | genuine above best impostor |",
             "|---|---|---|---|---|---|"]
    names = [n for n, _, _ in CAMERA_VIEWS]
    for extra in [None] + [i for i in range(len(CAMERA_VIEWS)) if i not in TEMPLATE_VIEWS]:
        keep = TEMPLATE_VIEWS + ([extra] if extra is not None else [])
        gallery = stack[:, keep]  # [people, k, dim]

        def scores(p: np.ndarray) -> np.ndarray:
            return (gallery @ p).max(axis=1)

        imp = np.array([scores(p).max() for b in impostors if (p := pooled(b, args.frames, cfg.min_face_px)) is not None])
        gen = np.array([scores(p)[i] for i, b in genuine if (p := pooled(b, args.frames, cfg.min_face_px)) is not None])
        label = "stored set" if extra is None else f"stored + {names[extra]}"
        lines.append(f"| {label} | {imp.max():.3f} | {np.percentile(imp, 99):.3f} | {np.percentile(gen, 10):.3f} | "
                     f"{np.median(gen):.3f} | {(gen > imp.max()).mean():.0%} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "template_views.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
