"""``python -m model_export recall``: recall of the configured detector stack, and the share of
faces its pipeline changes, against the independent reference of ``model_export.recall``.

Sets: the crowd photos, 4K and 1080p mosaics built from them, the two clips (sampled frames),
faces cut by the image border (crops of the crowd photos), the crowd photos in low light
(darkened, with a sensor's noise and a camera's JPEG; references from the originals) and
non-frontal faces (the ones dlib's CNN finds and its frontal HOG detector does not). Variants,
for the choice of the pose/border/low-light measures: YuNet at 640 px (before issue 11), the stack
without the border threshold, the stack without the low-light pass, the configured stack, and the
stack plus CenterFace as a second detector. Writes report.md, results.json and plots;
never an image.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import Config
from model_export.low_light import darken
from model_export.recall import Reference, ReferenceDetectors, build_mosaic, face_changed, found, load_references, union

SIZE_BINS = (0, 16, 20, 30, 50, 100, 100000)
DARK_GAINS = (0.03, 0.01)  # the crowd photos at 3 % and 1 % of their light (a dim room, a dark one)
DARK_JPEG = 60  # ...with a sensor's noise, through a camera encoder at this JPEG quality


@dataclass
class Sample:
    """One image of a set, its reference faces and (for clips) where it sits in the video."""

    image: np.ndarray
    refs: list[Reference]
    name: str
    video: str | None = None
    index: int = 0


@dataclass
class Tally:
    found: list[bool] = field(default_factory=list)
    changed: list[bool] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    detections: list[int] = field(default_factory=list)

    def recall(self, min_px: float = 0, which: str = "found") -> tuple[float, int]:
        values = [v for v, w in zip(getattr(self, which), self.widths) if w >= min_px]
        return _mean(values), len(values)


def _mean(values: list) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _bin(width: float) -> str:
    for lo, hi in zip(SIZE_BINS, SIZE_BINS[1:]):
        if lo <= width < hi:
            return f"{lo}-{hi}" if hi < 100000 else f">={lo}"
    return "?"


def _variants(config: Config):
    """name -> detector; built from the configured stack."""
    from edge_agent.models.centerface import CenterFace
    from edge_agent.models.files import resolve
    from edge_agent.models.loader import load_detector
    from edge_agent.models.tiling import TiledDetector

    det = config.models.detector
    stack = load_detector(config)
    if not isinstance(stack, TiledDetector):
        raise ValueError("the configured detector is not the tiled YuNet stack")
    yunet = stack.yunet
    plain = TiledDetector(yunet, det.min_face_px, 0, det.tile_size, det.tile_batch, None, low_light_pass=False)
    no_border = TiledDetector(yunet, det.min_face_px, det.max_tiles, det.tile_size, det.tile_batch, None, det.low_light_pass)
    no_low_light = TiledDetector(yunet, det.min_face_px, det.max_tiles, det.tile_size, det.tile_batch, det.border_score_threshold, low_light_pass=False)
    centerface = CenterFace(resolve(config.models.dir, det.fallback_file), score_threshold=0.5, threads=det.threads)

    class WithCenterFace:
        def detect(self, frame):
            return stack.detect(frame) + centerface.detect(frame)

    return {"yunet-640 (before)": plain, "tiles, no border threshold": no_border, "stack, no low-light pass": no_low_light,
            "configured stack": stack, "stack + CenterFace": WithCenterFace()}


def _crowd_refs(reference: ReferenceDetectors, photos: list[Path], cache: Path, bar) -> list[list[Reference]]:
    out = []
    for path in photos:
        image = cv2.imread(str(path))
        out.append(load_references(cache, f"crowd-{path.stem}-{'-'.join(sorted(reference.use))}", lambda: union(reference.detect(image))))
        bar.update()
    return out


def _clip_samples(reference: ReferenceDetectors, video: Path, every: int, cache: Path, bar) -> tuple[list[np.ndarray], dict[int, list[Reference]]]:
    cap = cv2.VideoCapture(str(video))
    frames, refs = [], {}
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
        if index % every == 0:
            refs[index] = load_references(cache, f"{video.stem}-{index}-{'-'.join(sorted(reference.use))}", lambda: union(reference.detect(frame)))
            bar.update()
        index += 1
    cap.release()
    return frames, refs


def _border_crops(photos: list[np.ndarray], refs: list[list[Reference]], per_photo: int = 3) -> list[Sample]:
    """The ``per_photo`` largest faces >= 40 px of each photo, cut by the left or the right border
    of a window around them at 30 % and 50 % of their width."""
    samples = []
    for k, (image, faces) in enumerate(zip(photos, refs)):
        h, w = image.shape[:2]
        for n, ref in enumerate(sorted((f for f in faces if f.width >= 40), key=lambda f: -f.width)[:per_photo]):
            x1, y1, x2, y2 = ref.box
            fw, fh = x2 - x1, y2 - y1
            top, bottom = int(max(y1 - 1.5 * fh, 0)), int(min(y2 + 1.5 * fh, h))
            for cut in (0.3, 0.5):
                for side in ("left", "right"):
                    if side == "left":
                        left, right = int(x1 + cut * fw), int(min(x2 + 2 * fw, w))
                    else:
                        left, right = int(max(x1 - 2 * fw, 0)), int(x2 - cut * fw)
                    box = ref.box - [left, top, left, top]
                    box[[0, 2]] = np.clip(box[[0, 2]], 0, right - left)
                    crop = np.ascontiguousarray(image[top:bottom, left:right])
                    samples.append(Sample(crop, [Reference(box, ref.sources)], f"crowd{k}-face{n}-{side}{cut}"))
    return samples


class PipelineRunner:
    """The agent's own fail-closed pipeline (recognition off: every face is a stranger)."""

    def __init__(self, config: Config) -> None:
        from edge_agent.service import Models

        cfg = config.model_copy(deep=True)
        cfg.recognition.enabled = False
        cfg.pipeline.frame_timeout_ms = 120_000  # this machine's load must not turn into redacted frames
        self.models = Models(cfg)

    def _filter(self, guard, image: np.ndarray) -> np.ndarray:
        out, redacted = guard.filter_array(image.copy())
        if redacted:
            raise RuntimeError("a frame was fully redacted during the evaluation")
        return out

    def image(self, image: np.ndarray) -> np.ndarray:
        from edge_agent.stats import CameraStats

        guard = self.models.pipeline(CameraStats("recall"), still=True)
        try:
            return self._filter(guard, image)
        finally:
            guard.close()

    def video(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        from edge_agent.stats import CameraStats

        guard = self.models.pipeline(CameraStats("recall"))
        try:
            return [self._filter(guard, f) for f in frames]
        finally:
            guard.close()


def evaluate(args, config: Config) -> dict:
    from tqdm import tqdm

    shared = Path(args.shared)
    cache = Path(args.cache)
    reference = ReferenceDetectors(use=args.reference)
    photos_paths = sorted((shared / "faces/crowds").glob("*.jpg"))[: args.max_photos or None]
    photos = [cv2.imread(str(p)) for p in photos_paths]
    videos = [shared / "video/short_hamilton_clip.mp4", shared / "video/intel_one-by-one-person-detection.mp4"]
    counts = [len(photos_paths)] + [int(cv2.VideoCapture(str(v)).get(cv2.CAP_PROP_FRAME_COUNT)) // e for v, e in zip(videos, args.every)]
    with tqdm(total=sum(counts) + len(videos), desc="reference detectors", unit="image", file=sys.stderr, disable=args.quiet) as bar:
        crowd_refs = _crowd_refs(reference, photos_paths, cache, bar)
        clips = [_clip_samples(reference, v, e, cache, bar) for v, e in zip(videos, args.every)]
    sets: dict[str, list[Sample]] = {"crowds": [Sample(p, r, f"crowd{k}") for k, (p, r) in enumerate(zip(photos, crowd_refs))]}
    mosaic, refs = build_mosaic(photos, crowd_refs, (3840, 2160), (6, 5))
    sets["mosaic 4K"] = [Sample(mosaic, refs, "mosaic-4k")]
    mosaic, refs = build_mosaic(photos, crowd_refs, (1920, 1080), (4, 3))
    sets["mosaic 1080p"] = [Sample(mosaic, refs, "mosaic-1080p")]
    sets["border-cut faces"] = _border_crops(photos, crowd_refs)
    for gain in DARK_GAINS:
        rng = np.random.default_rng(int(gain * 1000))
        sets[f"dark {gain:.0%} light"] = [Sample(darken(p, gain, rng, DARK_JPEG), r, f"crowd{k}-dark{gain}") for k, (p, r) in enumerate(zip(photos, crowd_refs))]
    profile = [Sample(s.image, [r for r in s.refs if r.non_frontal], s.name) for s in sets["crowds"]]
    for (frames, refs), video in zip(clips, videos):
        sets[video.stem] = [Sample(frames[i], r, f"{video.stem}-{i}", video.stem, i) for i, r in refs.items()]
        profile += [Sample(frames[i], [r for r in r_ if r.non_frontal], f"{video.stem}-{i}", video.stem, i) for i, r_ in refs.items()]
    sets["non-frontal faces"] = [s for s in profile if s.refs]

    variants = _variants(config)
    results: dict[str, dict[str, Tally]] = {}
    work = sum(len(v) for v in sets.values()) * len(variants)
    with tqdm(total=work, desc="detector variants", unit="image", file=sys.stderr, disable=args.quiet) as bar:
        for set_name, samples in sets.items():
            results[set_name] = {}
            for variant, detector in variants.items():
                tally = Tally()
                for sample in samples:
                    start = time.perf_counter()
                    faces = detector.detect(sample.image)
                    tally.ms.append((time.perf_counter() - start) * 1000)
                    tally.found += found(sample.refs, np.array([f.box for f in faces])).tolist()
                    tally.detections.append(len(faces))
                    tally.widths += [r.width for r in sample.refs]
                    bar.update()
                results[set_name][variant] = tally
    # What leaves the device: the configured pipeline's output, face by face.
    runner = PipelineRunner(config)
    with tqdm(total=sum(len(v) for v in sets.values()), desc="pipeline (changed)", unit="image", file=sys.stderr, disable=args.quiet) as bar:
        video_out = {v.stem: runner.video(frames) for v, (frames, _) in zip(videos, clips)}
        for set_name, samples in sets.items():
            tally = results[set_name]["configured stack"]
            for sample in samples:
                output = video_out[sample.video][sample.index] if sample.video else runner.image(sample.image)
                tally.changed += [face_changed(sample.image, output, r.box) for r in sample.refs]
                bar.update()
    return {"sets": sets, "results": results, "variants": list(variants)}


def _row(tally: Tally, min_px: float) -> str:
    r, n = tally.recall(min_px)
    return f"{r:.3f} ({n})" if n else "-"


def write_report(out: Path, evaluation: dict, config: Config, command: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    results = evaluation["results"]
    variants = evaluation["variants"]
    det = config.models.detector
    summary: dict = {"config": det.model_dump(), "sets": {}}
    lines = [
        "# Detection recall against an independent reference",
        "",
        f"Made by `{command}`. Reference: union of dlib CNN (MMOD, no upsampling) and HOG (upsampled once), at each "
        "image's full resolution; *non-frontal* = found by the CNN but not by the frontal HOG detector. Mosaic references "
        "are the source photos' boxes mapped through the "
        "mosaic's resize. *found*: a detection overlaps the face (IoU >= 0.3 or covers half of it). *changed*: after the "
        f"agent's pipeline (recognition off, anonymizer {config.anonymizer.mode}), at least half of the pixels inside the reference box differ.",
        "",
        f"Detector stack: min_face_px {det.min_face_px:g}, max_tiles {det.max_tiles}, tile_size {det.tile_size}, "
        f"score_threshold {det.score_threshold}, border_score_threshold {det.border_score_threshold}, low_light_pass {det.low_light_pass}.",
        "",
        f"Low-light sets: each crowd photo at {' and '.join(f'{g:.0%}' for g in DARK_GAINS)} of its light (linear light), with Gaussian "
        f"sensor noise of 1.5/sqrt(gain) grey levels, JPEG quality {DARK_JPEG}; reference boxes from the original photo.",
        "",
        "## Recall by set (faces >= 20 px; in brackets: how many)",
        "",
        "| set | reference faces | " + " | ".join(f"found: {v}" for v in variants) + " | changed (configured) | configured, faces >= 16 px: found / changed | ms/image: " + " / ".join(variants) + " | detections/reference face: " + " / ".join(variants) + " |",
        "|---|" + "---|" * (len(variants) + 5),
    ]
    for set_name, by_variant in results.items():
        conf = by_variant["configured stack"]
        changed, n = conf.recall(20, "changed")
        ms = " / ".join(f"{np.median(by_variant[v].ms):.0f}" for v in variants)
        f16, n16 = conf.recall(16)
        c16 = conf.recall(16, "changed")[0]
        per_face = " / ".join(f"{sum(by_variant[v].detections) / max(len(by_variant[v].widths), 1):.2f}" for v in variants)
        lines.append(
            f"| {set_name} | {len(conf.widths)} | " + " | ".join(_row(by_variant[v], 20) for v in variants)
            + f" | {changed:.3f} ({n}) | {f16:.3f} / {c16:.3f} ({n16}) | {ms} | {per_face} |"
        )
        summary["sets"][set_name] = {
            v: {"found_ge20": by_variant[v].recall(20)[0], "found_ge16": by_variant[v].recall(16)[0], "faces_ge20": by_variant[v].recall(20)[1], "median_ms": float(np.median(by_variant[v].ms))}
            for v in variants
        }
        summary["sets"][set_name]["changed_ge20"] = changed
        summary["sets"][set_name]["changed_ge16"] = conf.recall(16, "changed")[0]
    lines += ["", "## Configured stack by face size (found / changed, faces)", "", "| set | " + " | ".join(_bin(lo) for lo in SIZE_BINS[:-1]) + " |", "|---|" + "---|" * (len(SIZE_BINS) - 1)]
    for set_name, by_variant in results.items():
        t = by_variant["configured stack"]
        cells = []
        for lo, hi in zip(SIZE_BINS, SIZE_BINS[1:]):
            idx = [i for i, w in enumerate(t.widths) if lo <= w < hi]
            cells.append(f"{_mean([t.found[i] for i in idx]):.2f} / {_mean([t.changed[i] for i in idx]):.2f} ({len(idx)})" if idx else "-")
        lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "*detections/reference face*: everything the detector reports over the number of reference faces; above 1 it counts "
        "faces the reference misses (small, turned, dark) as well as false positives, so it bounds the cost of a lower threshold.",
        "",
        "![recall by face size](recall_by_size.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(summary, indent=2))

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    centres = [f"{lo}-{hi}" if hi < 100000 else f">={lo}" for lo, hi in zip(SIZE_BINS, SIZE_BINS[1:])]
    for set_name in ("mosaic 4K", "mosaic 1080p", "crowds", "short_hamilton_clip", *(f"dark {g:.0%} light" for g in DARK_GAINS)):
        if set_name not in results:
            continue
        for variant, style in (("yunet-640 (before)", ":"), ("configured stack", "-")):
            t = results[set_name][variant]
            ys = []
            for lo, hi in zip(SIZE_BINS, SIZE_BINS[1:]):
                idx = [i for i, w in enumerate(t.widths) if lo <= w < hi]
                ys.append(_mean([t.found[i] for i in idx]))
            axes[0].plot(centres, ys, style, marker="o", label=f"{set_name}, {variant}")
    axes[0].set_xlabel("reference face width (px)")
    axes[0].set_ylabel("found")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    axes[0].set_title("Recall by face size")
    names = list(results)
    x = np.arange(len(names))
    width = 0.8 / (len(variants) + 1)
    for k, variant in enumerate(variants):
        axes[1].bar(x + k * width, [results[n][variant].recall(20)[0] for n in names], width, label=f"found: {variant}")
    axes[1].bar(x + len(variants) * width, [results[n]["configured stack"].recall(20, "changed")[0] for n in names], width, label="changed (configured)", color="k")
    axes[1].set_xticks(x + 0.4, names, rotation=25, ha="right", fontsize=8)
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=7)
    axes[1].set_title("Faces >= 20 px, by set")
    fig.tight_layout()
    fig.savefig(out / "recall_by_size.png", dpi=110)
    plt.close(fig)
    return summary
