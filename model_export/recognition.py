"""Track-level false-accept bound of the pooled rule (``edge_agent/decide.py``) on LFW gray.

    nice python -m model_export.recognition --shared DIR [--registered 500] [--impostor-tracks 10000]
        [--genuine-tracks 1000] [--frames 15] [--out reports/recognition]

A registry of ``--registered`` LFW people, each enrolled from one photo exactly as the agent
enrols (``enroll.camera_views``: camera-size, blurred, compressed, gamma and mirrored templates).
An impostor track is one photo of a person *not* in the registry seen for ``--frames`` frames the
way a camera sees it: each frame a random view (face 20-64 px wide, optional blur, JPEG, gamma,
landmark jitter like a detector's on a small face). Genuine tracks do the same with registered
people's *other* photos. Every track runs through the agent's own ``EvidencePolicy``; the
evidence does not depend on the accept bound, so one pass per ``min_face_px`` gives the whole
threshold sweep. Writes report.md, results.json and plots (metrics only, no faces).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_agent.config import RecognitionConfig
from edge_agent.decide import EvidencePolicy
from edge_agent.enroll import TEMPLATE_VIEWS, _gamma, _jpeg, _scaled, camera_views, read_image
from edge_agent.evidence import TrackEvidence, face_quality
from edge_agent.faces import Face
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.files import resolve
from edge_agent.models.yunet import YuNet
from edge_agent.registry import Gallery
from edge_agent.tracker import Track

FPS = 15.0
VIEW_PX = (20.0, 64.0)
VIEWS_PER_PHOTO = 12  # a track's frames are drawn from these (embedding is the costly part)
MARGINS = (0.0, 0.03, 0.05, 0.08, 0.10)


@dataclass
class Bank:
    """Embedded camera views of one photo: what a track of it is made of."""

    embeddings: np.ndarray  # [v, dim]
    weights: np.ndarray  # [v]
    px: np.ndarray  # [v] face width


def largest_face(detector: YuNet, image: np.ndarray):
    faces = detector.detect(image)
    return max(faces, key=lambda f: f.width * f.height) if faces else None


def random_view(image: np.ndarray, face: Face, rng: np.random.Generator) -> tuple[np.ndarray, Face]:
    """One frame of a camera: a small face, maybe blurred, compressed, dark or bright, and landmarks
    as noisy as a detector's on a face that small."""
    width = float(rng.uniform(*VIEW_PX))
    small, moved = _scaled(image, face, width)
    kind = rng.integers(5)
    if kind == 1:
        small = cv2.GaussianBlur(small, (0, 0), float(rng.uniform(0.5, 1.5)))
    elif kind == 2:
        small = _jpeg(small, int(rng.integers(20, 60)))
    elif kind == 3:
        small = _gamma(small, float(rng.uniform(0.5, 2.0)))
    eye = float(np.linalg.norm(moved.landmarks[1] - moved.landmarks[0]))
    jitter = rng.normal(0, 0.04 * eye, moved.landmarks.shape).astype(np.float32)
    return small, Face(moved.box, moved.landmarks + jitter, moved.score)


def embed_bank(image, face, embedder: ArcFaceEmbedder, rng, max_null: float) -> Bank:
    views = [random_view(image, face, rng) for _ in range(VIEWS_PER_PHOTO)]
    crops = np.stack([embedder.crops(im, [f])[0] for im, f in views])
    emb = embedder.embed_crops(crops)
    null = embedder.null_similarity(emb)
    weights = np.array([face_quality(f, im, float(n), max_null) for (im, f), n in zip(views, null)], np.float32)
    return Bank(emb, weights, np.array([f.width for _, f in views], np.float32))


def enrol_templates(image, face, embedder: ArcFaceEmbedder, max_null: float, views: list[int]) -> np.ndarray:
    """The templates ``embed_photos`` would store from this photo, restricted to ``views``."""
    all_views = camera_views(image, face)
    emb = embedder.embed_crops(np.stack([embedder.crops(im, [f])[0] for _, im, f in all_views]))[views]
    return emb[embedder.null_similarity(emb) < max_null]


def run_track(bank: Bank, order: np.ndarray, policy: EvidencePolicy, gallery: Gallery, min_face_px: float) -> np.ndarray:
    """Per frame: [pooled best score, pooled lead over the second, frames pooled, weight pooled,
    best person index]; NaN where the track is not eligible to show (nothing pooled)."""
    track = Track(0, None, seed=0, evidence=TrackEvidence(gallery.matrix.shape[1]))
    out = np.full((len(order), 5), np.nan, np.float32)
    for i, v in enumerate(order):
        if bank.px[v] < min_face_px:
            policy.not_embedded(track)  # as in the pipeline: too small to embed, a shown track hides
            continue
        policy.observe(track, bank.embeddings[v], float(bank.weights[v]), gallery.person_ids, gallery.person_scores)
        pooled = track.evidence.template()
        if pooled is None:
            continue
        scores = gallery.person_scores(pooled[None])[0]
        top = np.argsort(-scores)[:2]
        out[i] = [scores[top[0]], scores[top[0]] - scores[top[1]], track.evidence.frames, track.evidence.weight, top[0]]
    return out


def shown(rows: np.ndarray, cfg: RecognitionConfig, threshold: float, margin: float) -> np.ndarray:
    """Which frames the policy shows, at accept bound ``threshold`` and lead ``margin``."""
    ok = ~np.isnan(rows[..., 0])
    r = np.nan_to_num(rows)
    return ok & (r[..., 2] >= cfg.min_frames) & (r[..., 3] >= cfg.min_weight) & (r[..., 0] >= threshold) & (r[..., 1] >= margin)


def sweep_point(imp: np.ndarray, gen: np.ndarray, gen_label: np.ndarray, cfg: RecognitionConfig, t: float, margin: float) -> dict:
    """False shows over the impostor tracks, and what genuine tracks get, at one (bound, lead)."""
    g_any = shown(gen, cfg, t, margin)
    g = g_any & (np.nan_to_num(gen[..., 4], nan=-1).astype(int) == gen_label[:, None])
    first = np.where(g.any(axis=1), g.argmax(axis=1), np.nan)
    some = np.isfinite(first).any()
    return {"threshold": float(t), "margin": float(margin), "false_show_tracks": int(shown(imp, cfg, t, margin).any(axis=1).sum()),
            "genuine_frames_shown": float(g.mean()), "genuine_tracks_shown": float(g.any(axis=1).mean()),
            "genuine_shown_as_other": int((g_any & ~g).any(axis=1).sum()),
            "median_first_show_s": float(np.nanmedian(first) / FPS) if some else None,
            "p90_first_show_s": float(np.nanpercentile(first, 90) / FPS) if some else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--registered", type=int, default=500)
    parser.add_argument("--impostor-tracks", type=int, default=10_000)
    parser.add_argument("--genuine-tracks", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=15, help="frames per track (15 = 1 s at 15 fps)")
    parser.add_argument("--min-face-px", type=int, nargs="+", default=[20, 24, 28])
    parser.add_argument("--tracks-per-photo", type=int, default=8, help="tracks drawn from each photo's embedded views")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/recognition"))
    parser.add_argument("--report-only", action="store_true", help="rewrite report.md from OUT/track_results.json")
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads((args.out / "track_results.json").read_text())
        _sweep_plot(results, RecognitionConfig(), args.out)
        _report(results, RecognitionConfig(), args)
        return 0
    root = args.shared / "datasets/lfw_gray"
    if not root.is_dir():
        parser.error(f"{root}: no LFW here")
    cfg = RecognitionConfig()
    rng = np.random.default_rng(args.seed)
    pick = random.Random(args.seed)
    detector = YuNet(resolve(args.models, "yunet_s_dynamic.onnx"))
    embedder = ArcFaceEmbedder(resolve(args.models, "mobilefacenet.onnx"))
    people = sorted(p for p in root.iterdir() if p.is_dir())
    photos = {p.name: sorted(p.glob("*.jpg")) for p in people}
    multi = [p.name for p in people if len(photos[p.name]) >= 2]
    registered = sorted(pick.sample(multi, args.registered))
    others = sorted(set(photos) - set(registered))

    names, matrices = [], []
    genuine_sources = []
    for name in tqdm(registered, desc="enrol registry", unit="person"):
        image = read_image(photos[name][0])
        face = largest_face(detector, image)
        if face is None:
            continue
        names.append(name)
        matrices.append(enrol_templates(image, face, embedder, cfg.max_null_similarity, TEMPLATE_VIEWS))
        genuine_sources += [(len(names) - 1, p) for p in photos[name][1:]]
    owner = np.concatenate([np.full(len(m), i) for i, m in enumerate(matrices)])
    gallery = Gallery(names, names, np.concatenate(matrices).astype(np.float32), owner, 1)

    def banks(sources: list, count: int, desc: str) -> list[tuple[int, Bank]]:
        out = []
        for label, path in tqdm(sources[:count], desc=desc, unit="photo"):
            image = read_image(path)
            face = largest_face(detector, image)
            if face is not None:
                out.append((label, embed_bank(image, face, embedder, rng, cfg.max_null_similarity)))
        return out

    # Each photo gives several tracks (different frame orders): a track never mixes photos.
    tracks_per_photo = args.tracks_per_photo
    impostor_photos = [(-1, p) for name in others for p in photos[name]]
    pick.shuffle(impostor_photos)
    impostors = banks(impostor_photos, -(-args.impostor_tracks // tracks_per_photo) + 50, "impostor photos")
    pick.shuffle(genuine_sources)
    genuine = banks(genuine_sources, -(-args.genuine_tracks // tracks_per_photo) + 20, "genuine photos")

    def orders(source: list, n_tracks: int) -> list[tuple[int, np.ndarray]]:
        """A track walks toward or away from the camera: its views ordered by face size."""
        out = []
        for i in range(n_tracks):
            b = i % len(source)
            order = rng.integers(VIEWS_PER_PHOTO, size=args.frames)
            order = order[np.argsort(source[b][1].px[order] * (1 if rng.random() < 0.5 else -1), kind="stable")]
            out.append((b, order))
        return out

    impostor_orders = orders(impostors, args.impostor_tracks)
    genuine_orders = orders(genuine, args.genuine_tracks)
    thresholds = np.round(np.arange(0.30, 0.705, 0.01), 2)
    results: dict = {"seed": args.seed, "registered_people": len(names), "templates": int(len(gallery.matrix)), "frames_per_track": args.frames,
                     "impostor_photos": len(impostors), "genuine_photos": len(genuine), "impostor_tracks": len(impostor_orders),
                     "genuine_tracks": len(genuine_orders), "config": cfg.model_dump(), "by_min_face_px": {}}
    curves = {}
    for min_px in args.min_face_px:
        policy = EvidencePolicy(cfg, reverify_iou=0.5)
        imp = np.stack([run_track(impostors[b][1], o, policy, gallery, min_px) for b, o in tqdm(impostor_orders, desc=f"impostor tracks ({min_px}px)", unit="track")])
        gen = np.stack([run_track(genuine[b][1], o, policy, gallery, min_px) for b, o in tqdm(genuine_orders, desc=f"genuine tracks ({min_px}px)", unit="track")])
        gen_label = np.array([genuine[b][0] for b, _ in genuine_orders])
        eligible = lambda rows: (np.nan_to_num(rows[..., 2]) >= cfg.min_frames) & (np.nan_to_num(rows[..., 3]) >= cfg.min_weight) & (np.nan_to_num(rows[..., 1]) >= cfg.min_margin)
        imp_best = np.where(eligible(imp), np.nan_to_num(imp[..., 0], nan=-1), -1).max(axis=1)
        sweep = [sweep_point(imp, gen, gen_label, cfg, t, cfg.min_margin) for t in thresholds]
        lowest_safe = {}
        for margin in MARGINS:
            safe = [sweep_point(imp, gen, gen_label, cfg, t, margin) for t in thresholds]
            safe = [p for p in safe if p["false_show_tracks"] == 0]
            lowest_safe[str(margin)] = safe[0] if safe else None
        results["by_min_face_px"][str(min_px)] = {"impostor_best_pooled_max": float(imp_best.max()),
                                                   "impostor_best_pooled_p999": float(np.percentile(imp_best, 99.9)), "sweep": sweep,
                                                   "lowest_safe_bound_by_margin": lowest_safe}
        gen_best = np.where(eligible(gen), np.nan_to_num(gen[..., 0], nan=-1), -1).max(axis=1)
        curves[min_px] = (imp_best, gen_best, sweep)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "track_results.json").write_text(json.dumps(results, indent=2))
    _plots(curves, cfg, args.out)
    _sweep_plot(results, cfg, args.out)
    _report(results, cfg, args)
    return 0


def _plots(curves: dict, cfg: RecognitionConfig, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    px = cfg.min_face_px if cfg.min_face_px in curves else next(iter(curves))
    imp_best, gen_best, _ = curves[px]
    axes[0].hist(imp_best[imp_best > -1], bins=60, alpha=0.6, density=True, label="impostor tracks (best pooled)")
    axes[0].hist(gen_best[gen_best > -1], bins=60, alpha=0.6, density=True, label="genuine tracks (best pooled)")
    axes[0].axvline(cfg.threshold, color="k", linestyle="--", label=f"threshold {cfg.threshold}")
    axes[0].set_xlabel(f"pooled cosine to the closest registered person (min_face_px {px})")
    axes[0].legend(fontsize=7)
    for min_px, (_, _, sweep) in curves.items():
        t = [s["threshold"] for s in sweep]
        axes[1].plot(t, [s["genuine_frames_shown"] for s in sweep], label=f"genuine frames shown, min_face_px {min_px}")
        axes[1].plot(t, [s["false_show_tracks"] / 100 for s in sweep], linestyle=":", label=f"false-show tracks / 100, {min_px}px")
    axes[1].axvline(cfg.threshold, color="k", linestyle="--")
    axes[1].set_xlabel("accept bound (pooled cosine)")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "track_level.png", dpi=80)


def _sweep_plot(results: dict, cfg: RecognitionConfig, out: Path) -> None:
    """False-show tracks (log scale) and genuine frames shown against the accept bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    other = ax.twinx()
    for px, r in results["by_min_face_px"].items():
        t = [p["threshold"] for p in r["sweep"]]
        ax.semilogy(t, [max(p["false_show_tracks"], 0.5) for p in r["sweep"]], linestyle=":", label=f"false-show tracks, {px} px")
        other.plot(t, [p["genuine_frames_shown"] for p in r["sweep"]], label=f"genuine frames shown, {px} px")
    ax.axvline(cfg.threshold, color="k", linestyle="--")
    ax.set_xlabel("accept bound (pooled cosine)")
    ax.set_ylabel("impostor tracks shown\n(0 drawn at 0.5)")
    ax.set_title(f"{results['impostor_tracks']} impostor tracks, {results['registered_people']}-person registry; dashed: the default bound", fontsize=8)
    other.set_ylabel("genuine frames shown")
    other.set_ylim(0, 1)
    ax.legend(fontsize=6, loc="lower left")
    other.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "track_sweep.png", dpi=80)


def _report(results: dict, cfg: RecognitionConfig, args) -> None:
    lines = ["# Track-level recognition: the pooled rule on LFW gray", "",
             f"Command: `nice python -m model_export.recognition --shared DIR --registered {args.registered} "
             f"--impostor-tracks {args.impostor_tracks} --genuine-tracks {args.genuine_tracks} --frames {args.frames} "
             f"--tracks-per-photo {args.tracks_per_photo} --min-face-px {' '.join(results['by_min_face_px'])} --seed {results.get('seed', args.seed)}`", "",
             f"- registry: {results['registered_people']} LFW people, {results['templates']} templates (one photo each, camera-scale views)",
             f"- impostor tracks: {results['impostor_tracks']} from {results['impostor_photos']} photos of people not registered",
             f"- genuine tracks: {results['genuine_tracks']} from {results['genuine_photos']} other photos of registered people",
             f"- {results['frames_per_track']} frames per track (at {FPS:.0f} fps), faces 20-64 px, blur / JPEG / gamma / landmark jitter",
             f"- policy: min_frames {cfg.min_frames}, min_weight {cfg.min_weight}, min_margin {cfg.min_margin}, "
             f"min_agreement {cfg.min_agreement}, min_continuity {cfg.min_continuity}", ""]
    for px, r in results["by_min_face_px"].items():
        margin = cfg.threshold - r["impostor_best_pooled_max"]
        lines += [f"## min_face_px {px}", "",
                  f"Highest pooled impostor score {r['impostor_best_pooled_max']:.3f} (99.9th pct {r['impostor_best_pooled_p999']:.3f}): "
                  f"margin {margin:+.3f} to the accept bound {cfg.threshold}.", "",
                  "Lowest accept bound with 0 false shows, by required lead over the next person:", "",
                  "| lead | bound | genuine frames shown | genuine tracks shown | median / p90 first show (s) |", "|---|---|---|---|---|"]
        for margin, p in r["lowest_safe_bound_by_margin"].items():
            if p is None:
                lines.append(f"| {margin} | none up to 0.70 | | | |")
            else:
                lines.append(f"| {margin} | {p['threshold']:.2f} | {p['genuine_frames_shown']:.1%} | {p['genuine_tracks_shown']:.1%} | "
                             f"{p['median_first_show_s']:.2f} / {p['p90_first_show_s']:.2f} |")
        lines += ["", f"Sweep at lead {cfg.min_margin}:", "",
                  "| accept bound | impostor tracks shown | genuine frames shown | genuine tracks shown | shown as another person | median / p90 first show (s) |",
                  "|---|---|---|---|---|---|"]
        for s in r["sweep"]:
            first = "-" if s["median_first_show_s"] is None else f"{s['median_first_show_s']:.2f} / {s['p90_first_show_s']:.2f}"
            lines.append(f"| {s['threshold']:.2f} | {s['false_show_tracks']} | {s['genuine_frames_shown']:.1%} | "
                         f"{s['genuine_tracks_shown']:.1%} | {s['genuine_shown_as_other']} | {first} |")
        lines.append("")
    lines.append("![track level](track_level.png)")
    lines.append("![sweep](track_sweep.png)")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
