"""Accuracy and speed of each quantized (or engine) model against its FP32 ONNX.

Detector: recall and precision of the candidate's detections against the FP32 detections
(greedy one-to-one matching at IoU >= 0.5) on held-out frames, plus box and landmark error
of matched faces. Embedder: cosine FP32<->candidate on the same aligned faces,
identification accuracy (leave-one-out rank-1) on ``faces/identities.csv``, same/different
pair accuracy on LFW pairs (10-fold threshold, the LFW protocol, and at the agent's fixed
threshold) and on deepface's labelled pairs. Latency per model; pipeline fps on a video.

Writes ``report.md``, ``results.json`` and small PNG plots into the output directory.
Only aggregate numbers are written: no frame, crop or embedding leaves memory.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from edge_agent.faces import Face
from edge_agent.tracker import iou_matrix

IOU_MATCH = 0.5
AGENT_THRESHOLD = 0.42  # edge_agent.config.RecognitionConfig.threshold default
LOWER_THRESHOLDS = (0.45, 0.4)


# ---------------------------------------------------------------- detector metrics
def match(ref: np.ndarray, test: np.ndarray, threshold: float = IOU_MATCH) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching, highest IoU first; (ref index, test index, iou) pairs."""
    iou = iou_matrix(ref, test)
    pairs = []
    used_r, used_t = set(), set()
    for flat in np.argsort(-iou, axis=None):
        r, t = divmod(int(flat), iou.shape[1])
        if iou[r, t] < threshold:
            break
        if r in used_r or t in used_t:
            continue
        used_r.add(r)
        used_t.add(t)
        pairs.append((r, t, float(iou[r, t])))
    return pairs


@dataclass
class DetectorStats:
    ref_faces: int = 0
    test_faces: int = 0
    matched: int = 0
    ious: list = field(default_factory=list)
    box_err: list = field(default_factory=list)  # mean |corner error| / face side
    box_err_px: list = field(default_factory=list)
    lmk_err: list = field(default_factory=list)  # mean landmark distance / face side
    score_diff: list = field(default_factory=list)

    def add(self, ref: list[Face], test: list[Face]) -> None:
        self.ref_faces += len(ref)
        self.test_faces += len(test)
        rb = np.array([f.box for f in ref], np.float32).reshape(-1, 4)
        tb = np.array([f.box for f in test], np.float32).reshape(-1, 4)
        for r, t, iou in match(rb, tb):
            side = max(ref[r].width, ref[r].height, 1.0)
            err = np.abs(rb[r] - tb[t])
            self.matched += 1
            self.ious.append(iou)
            self.box_err.append(float(err.mean() / side))
            self.box_err_px.append(float(err.mean()))
            self.lmk_err.append(float(np.linalg.norm(ref[r].landmarks - test[t].landmarks, axis=1).mean() / side))
            self.score_diff.append(float(test[t].score - ref[r].score))

    def summary(self) -> dict:
        def mean(v):
            return float(np.mean(v)) if v else float("nan")

        return {
            "frames_faces_fp32": self.ref_faces,
            "faces_candidate": self.test_faces,
            "matched": self.matched,
            "recall": self.matched / self.ref_faces if self.ref_faces else float("nan"),
            "precision": self.matched / self.test_faces if self.test_faces else float("nan"),
            "mean_iou": mean(self.ious),
            "box_error_rel": mean(self.box_err),
            "box_error_px": mean(self.box_err_px),
            "box_error_rel_p95": float(np.percentile(self.box_err, 95)) if self.box_err else float("nan"),
            "landmark_error_rel": mean(self.lmk_err),
            "score_diff_mean": mean(self.score_diff),
        }


# ---------------------------------------------------------------- embedder metrics
def pair_accuracy_10fold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """LFW protocol: 10 folds, threshold chosen on 9, accuracy on the 10th; (mean accuracy, mean threshold)."""
    order = np.random.RandomState(0).permutation(len(scores))
    folds = np.array_split(order, 10)
    accs, thrs = [], []
    for k in range(10):
        test_idx = folds[k]
        train_idx = np.concatenate([folds[j] for j in range(10) if j != k])
        best_thr, best_acc = 0.0, -1.0
        for thr in np.unique(scores[train_idx]):
            acc = np.mean((scores[train_idx] >= thr) == same[train_idx])
            if acc > best_acc:
                best_acc, best_thr = acc, thr
        accs.append(np.mean((scores[test_idx] >= best_thr) == same[test_idx]))
        thrs.append(best_thr)
    return float(np.mean(accs)), float(np.mean(thrs))


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((scores >= threshold) == same))


def at_threshold(scores: np.ndarray, same: np.ndarray, threshold: float = AGENT_THRESHOLD) -> dict:
    """Accuracy, false-accept rate (a stranger matched: a face shown that should be hidden) and
    false-reject rate (a registered person hidden) at the agent's fixed threshold."""
    return {
        "accuracy_at_agent_threshold": accuracy_at(scores, same, threshold),
        "false_accept_at_agent_threshold": float(np.mean(scores[~same] >= threshold)) if np.any(~same) else float("nan"),
        "false_reject_at_agent_threshold": float(np.mean(scores[same] < threshold)) if np.any(same) else float("nan"),
    }


def rank1_leave_one_out(emb: np.ndarray, labels: Sequence[str]) -> float:
    """Each face's nearest other face (cosine) has the same identity: the fraction of faces."""
    labels = np.asarray(labels)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    # only faces whose identity has another photo can be identified
    counts = {l: int(np.sum(labels == l)) for l in set(labels)}
    usable = np.array([counts[l] > 1 for l in labels])
    nearest = np.argmax(sim, axis=1)
    return float(np.mean(labels[nearest][usable] == labels[usable]))


def lfw_pairs(lfw_dir: Path, n_same: int, n_diff: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[tuple[Path, Path, bool]]:
    """Deterministic same/different pairs from an LFW folder (one sub-folder per person).
    People whose folder name matches a pattern in ``exclude`` (fnmatch, e.g. calibration
    identities) are left out, so pairs never reuse calibration material."""
    from fnmatch import fnmatch

    rng = random.Random(seed)
    people = {}
    for d in sorted(p for p in Path(lfw_dir).iterdir() if p.is_dir()):
        if any(fnmatch(d.name, pattern) for pattern in exclude):
            continue
        files = sorted(d.glob("*.jpg")) + sorted(d.glob("*.png"))
        if files:
            people[d.name] = files
    multi = [name for name, files in people.items() if len(files) >= 2]
    names = list(people)
    if not multi or len(names) < 2:
        raise ValueError(f"{lfw_dir} does not hold enough people for pairs")
    pairs, seen = [], set()
    while sum(1 for p in pairs if p[2]) < n_same:
        name = rng.choice(multi)
        a, b = rng.sample(people[name], 2)
        key = tuple(sorted((str(a), str(b))))
        if key not in seen:
            seen.add(key)
            pairs.append((a, b, True))
    while sum(1 for p in pairs if not p[2]) < n_diff:
        na, nb = rng.sample(names, 2)
        a, b = rng.choice(people[na]), rng.choice(people[nb])
        key = tuple(sorted((str(a), str(b))))
        if key not in seen:
            seen.add(key)
            pairs.append((a, b, False))
    return pairs


def main_face(detector, image: np.ndarray) -> Optional[Face]:
    """The largest detected face, preferring the one nearest the centre (LFW, portraits)."""
    faces = detector.detect(image)
    if not faces:
        return None
    h, w = image.shape[:2]
    centre = np.array([w / 2, h / 2])

    def rank(f: Face):
        c = np.array([(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2])
        return f.width * f.height / (1.0 + np.linalg.norm(c - centre) / max(h, w) * 4)

    return max(faces, key=rank)


# ---------------------------------------------------------------- latency
def latency_ms(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "repeats": repeats}


def detector_latency(session, height: int = 360, width: int = 640, repeats: int = 30) -> dict:
    """One detector forward at the canvas the agent builds for a ``width``x``height`` frame."""
    from model_export.calibration import detector_canvas

    blob = detector_canvas(np.random.RandomState(0).randint(0, 255, (height, width, 3), np.uint8))
    name = session.get_inputs()[0].name
    return latency_ms(lambda: session.run(None, {name: blob}), repeats)


def embedder_latency(session, batch: int, repeats: int = 30) -> dict:
    blob = np.random.RandomState(0).randn(batch, 3, 112, 112).astype(np.float32)
    name = session.get_inputs()[0].name
    return latency_ms(lambda: session.run(None, {name: blob}), repeats)


def filter_once(frame: np.ndarray, detector, embedder, anonymizer) -> list[Face]:
    """One frame through the agent's per-frame work without tracking (detect, embed, anonymize,
    JPEG), in place: what the model benchmarks time. Returns the faces found."""
    faces = detector.detect(frame)
    if faces:
        embedder.embed(frame, faces)
        for face in faces:
            anonymizer.anonymize(frame, face, 0)
    cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return faces


def pipeline_fps(video: Path, detector, embedder, max_frames: int = 0, progress=None) -> dict:
    """Frames/s of the model path of the agent on ``video``: detect, align + embed every face,
    pixelate every face, JPEG-encode the frame (decode time excluded). Recognition runs on
    every face each frame (the agent re-embeds only new or due tracks, so this is a lower bound)."""
    from edge_agent.anonymize.classical import Pixelate

    anonymizer = Pixelate()
    capture = cv2.VideoCapture(str(video))
    frames = faces_total = 0
    busy = 0.0
    try:
        while True:
            ok, frame = capture.read()
            if not ok or (max_frames and frames >= max_frames):
                break
            start = time.perf_counter()
            faces = filter_once(frame, detector, embedder, anonymizer)
            busy += time.perf_counter() - start
            frames += 1
            faces_total += len(faces)
            if progress is not None:
                progress.update(1)
    finally:
        capture.release()
    return {"frames": frames, "faces": faces_total, "fps": frames / busy if busy else float("nan"), "ms_per_frame": busy / max(frames, 1) * 1000}


# ---------------------------------------------------------------- report
def _fmt(value, digits=4):
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_plots(results: dict, out_dir: Path, cosines: Optional[np.ndarray] = None, pair_scores: Optional[dict] = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    lat = results.get("latency", {})
    if lat:
        labels = list(lat)
        fp32 = [lat[k]["fp32"]["median_ms"] for k in labels]
        cand = [lat[k]["candidate"]["median_ms"] for k in labels]
        x = np.arange(len(labels))
        fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
        ax.bar(x - 0.2, fp32, 0.4, label="FP32")
        ax.bar(x + 0.2, cand, 0.4, label=results.get("candidate_label", "INT8"))
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("median latency (ms)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png")
        plt.close(fig)
        written.append("latency.png")
    if cosines is not None and len(cosines):
        fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
        ax.hist(cosines, bins=40, color="tab:green")
        ax.set_xlabel("cosine(FP32 embedding, candidate embedding), same face")
        ax.set_ylabel("faces")
        fig.tight_layout()
        fig.savefig(out_dir / "embedder_cosine.png")
        plt.close(fig)
        written.append("embedder_cosine.png")
    if pair_scores:
        fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
        for label, (scores, same) in pair_scores.items():
            style = "-" if label == "FP32" else "--"
            ax.hist(scores[same], bins=50, histtype="step", linestyle=style, label=f"{label} same")
            ax.hist(scores[~same], bins=50, histtype="step", linestyle=style, label=f"{label} different")
        ax.axvline(AGENT_THRESHOLD, color="k", linewidth=0.8)
        ax.set_xlabel("pair cosine (LFW)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "lfw_pair_cosines.png")
        plt.close(fig)
        written.append("lfw_pair_cosines.png")
    return written


def budget_verdict(results: dict, min_recall: float = 0.99, max_pair_drop: float = 0.003) -> dict:
    det = results.get("detector", {}).get("metrics", {})
    emb = results.get("embedder", {})
    verdict = {}
    if det:
        verdict["detector"] = bool(det["recall"] >= min_recall)
    if emb.get("lfw"):
        drop = emb["lfw"]["fp32"]["accuracy_10fold"] - emb["lfw"]["candidate"]["accuracy_10fold"]
        verdict["embedder"] = bool(drop <= max_pair_drop + 1e-12)
        verdict["embedder_pair_drop_points"] = drop * 100
    verdict["budget"] = {"detector_recall_min": min_recall, "embedder_pair_accuracy_drop_max_points": max_pair_drop * 100}
    return verdict


def markdown(results: dict, plots: list[str]) -> str:
    r = results
    label = r.get("candidate_label", "INT8")
    lines = [f"# Quantization report: FP32 vs {label}", ""]
    lines.append(f"Generated {r['generated']} by `python -m model_export verify`; machine: {r['machine']}.")
    lines.append("")
    lines.append("| model | FP32 file | candidate file |")
    lines.append("|---|---|---|")
    for kind in ("detector", "embedder"):
        if kind in r:
            lines.append(f"| {kind} | `{r[kind]['fp32_file']}` | `{r[kind]['candidate_file']}` |")
    lines.append("")
    v = r.get("verdict", {})
    if v:
        lines.append("## Budget")
        b = v["budget"]
        if "detector" in v:
            lines.append(f"- detector recall vs FP32 >= {b['detector_recall_min']:.2f}: **{'met' if v['detector'] else 'NOT met'}**")
        if "embedder" in v:
            lines.append(
                f"- embedder LFW pair accuracy drop <= {b['embedder_pair_accuracy_drop_max_points']:.1f} points: "
                f"**{'met' if v['embedder'] else 'NOT met'}** (drop {v['embedder_pair_drop_points']:+.2f} points)"
            )
        lines.append("")
    if "detector" in r:
        d = r["detector"]
        m = d["metrics"]
        lines += [
            "## Detector",
            f"Held-out frames: {d['frames']} ({d['sources']}). Reference = FP32 detections (score >= {d['score_threshold']}), "
            f"match at IoU >= {IOU_MATCH}.",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for key in ("frames_faces_fp32", "faces_candidate", "matched", "recall", "precision", "mean_iou", "box_error_px", "box_error_rel", "box_error_rel_p95", "landmark_error_rel", "score_diff_mean"):
            lines.append(f"| {key} | {_fmt(m[key])} |")
        lines.append("")
        lines.append("box_error_rel / landmark_error_rel: mean absolute corner (landmark) error divided by the face's longer side.")
        lines.append("")
        if d.get("candidate_threshold_sweep"):
            lines.append(f"Candidate at a lower score threshold (FP32 reference stays at {d['score_threshold']}):")
            lines.append("")
            lines.append("| candidate threshold | recall vs FP32 | precision vs FP32 |")
            lines.append("|---|---|---|")
            for thr, val in d["candidate_threshold_sweep"].items():
                lines.append(f"| {thr} | {val['recall']:.4f} | {val['precision']:.4f} |")
            lines.append("")
    if "embedder" in r:
        e = r["embedder"]
        lines += ["## Embedder", "", "| metric | FP32 | " + label + " |", "|---|---|---|"]
        if e.get("cosine"):
            c = e["cosine"]
            lines.append(f"| cosine FP32↔{label} on {c['faces']} faces: mean / min / p1 | 1 | {c['mean']:.4f} / {c['min']:.4f} / {c['p1']:.4f} |")
        if e.get("identities"):
            i = e["identities"]
            lines.append(f"| identities.csv rank-1 leave-one-out ({i['faces']} faces, {i['identities']} people) | {i['fp32']:.4f} | {i['candidate']:.4f} |")
        if e.get("lfw"):
            l = e["lfw"]
            lines.append(f"| LFW pairs accuracy, 10-fold ({l['pairs']} pairs) | {l['fp32']['accuracy_10fold']:.4f} | {l['candidate']['accuracy_10fold']:.4f} |")
            lines.append(f"| LFW pairs accuracy at threshold {AGENT_THRESHOLD} | {l['fp32']['accuracy_at_agent_threshold']:.4f} | {l['candidate']['accuracy_at_agent_threshold']:.4f} |")
            lines.append(f"| LFW different-person pairs accepted at {AGENT_THRESHOLD} (false accept: privacy) | {l['fp32']['false_accept_at_agent_threshold']:.4f} | {l['candidate']['false_accept_at_agent_threshold']:.4f} |")
            lines.append(f"| LFW same-person pairs rejected at {AGENT_THRESHOLD} (false reject: over-hiding) | {l['fp32']['false_reject_at_agent_threshold']:.4f} | {l['candidate']['false_reject_at_agent_threshold']:.4f} |")
            lines.append(f"| LFW pairs: mean abs. difference of pair cosines, FP32 vs {label} | – | {l['pair_cosine_abs_diff_mean']:.4f} |")
        if e.get("deepface"):
            p = e["deepface"]
            lines.append(f"| deepface pairs accuracy, 10-fold ({p['pairs']} pairs) | {p['fp32']:.4f} | {p['candidate']:.4f} |")
        lines.append("")
    if r.get("latency"):
        lines += ["## Latency", f"onnxruntime CPU, {r.get('threads', 0) or 'default'} intra-op threads, median of {next(iter(r['latency'].values()))['fp32']['repeats']} runs.", "",
                  f"| model input | FP32 ms | {label} ms | speed-up |", "|---|---|---|---|"]
        for key, val in r["latency"].items():
            a, b = val["fp32"]["median_ms"], val["candidate"]["median_ms"]
            lines.append(f"| {key} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
        lines.append("")
    if r.get("pipeline"):
        p = r["pipeline"]
        a, b = p["fp32"]["fps"], p["candidate"]["fps"]
        lines += [
            "## Pipeline",
            f"`{p['video']}`, {p['fp32']['frames']} frames: detect, align + embed every face, pixelate, JPEG encode (decode excluded).",
            "",
            "| | FP32 | " + label + " | speed-up |",
            "|---|---|---|---|",
            f"| frames/s | {a:.1f} | {b:.1f} | {b / a:.2f}x |",
            f"| faces seen | {p['fp32']['faces']} | {p['candidate']['faces']} | |",
            "",
        ]
    for plot in plots:
        lines.append(f"![{plot}]({plot})")
    lines.append("")
    return "\n".join(lines)


def read_identities(shared: Path) -> list[tuple[Path, str]]:
    path = shared / "faces" / "identities.csv"
    with open(path, newline="") as fh:
        return [(shared / "faces" / row["path"], row["identity"]) for row in csv.DictReader(fh)]


def read_deepface_pairs(shared: Path) -> list[tuple[Path, Path, bool]]:
    base = shared / "faces" / "deepface"
    path = base / "master.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [(base / r["file_x"], base / r["file_y"], r["Decision"].strip().lower() == "yes") for r in csv.DictReader(fh)]


# ---------------------------------------------------------------- orchestration
@dataclass
class VerifyInputs:
    detector_fp32: Optional[Path] = None
    detector_candidate: Optional[Path] = None
    embedder_fp32: Optional[Path] = None
    embedder_candidate: Optional[Path] = None
    heldout: Sequence[str] = ()
    max_frames: int = 150
    shared: Optional[Path] = None  # faces/identities.csv, faces/deepface
    lfw_dir: Optional[Path] = None
    lfw_exclude: Sequence[str] = ()
    lfw_pairs: int = 1000  # per class
    video: Optional[Path] = None
    pipeline_frames: int = 0
    threads: int = 2
    repeats: int = 30
    candidate_label: str = "INT8"
    score_threshold: float = 0.5
    align_detector: Optional[Path] = None  # FP32 detector that finds and aligns faces for the embedder


class _Bar:
    """tqdm if present, else silent."""

    def __init__(self, total, desc, enabled=True):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="it", leave=False)
            except ImportError:  # pragma: no cover
                pass

    def update(self, n=1):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _load_image(path: Path) -> Optional[np.ndarray]:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def run_verify(inputs: VerifyInputs, out_dir: Path, progress: bool = True, open_detector=None, open_embedder=None) -> dict:
    """Measure and write the report; returns the results dict.

    ``open_detector(path)`` / ``open_embedder(path)`` build the wrappers for a candidate
    (default: onnxruntime CPU); the engine path passes TensorRT-backed ones.
    """
    import platform

    from edge_agent.models.arcface import ArcFaceEmbedder
    from edge_agent.models.yunet import YuNet
    from model_export.calibration import expand_sources, iter_frames

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = inputs.threads
    open_detector = open_detector or (lambda p: YuNet(p, score_threshold=inputs.score_threshold, backend="cpu", threads=t))
    open_embedder = open_embedder or (lambda p: ArcFaceEmbedder(p, backend="cpu", threads=t))
    results: dict = {
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs visible, onnxruntime {__import__('onnxruntime').__version__}",
        "candidate_label": inputs.candidate_label,
        "threads": t,
        "latency": {},
    }
    det_ref = det_cand = emb_ref = emb_cand = None
    if inputs.detector_fp32 and inputs.detector_candidate:
        det_ref, det_cand = YuNet(inputs.detector_fp32, score_threshold=inputs.score_threshold, threads=t), open_detector(inputs.detector_candidate)
        frames = [f for _, f in iter_frames(expand_sources(inputs.heldout), video_stride=5, max_per_video=inputs.max_frames)][: inputs.max_frames] if inputs.heldout else []
        stats = DetectorStats()
        # What a lower candidate threshold buys back (the agent may run INT8 at a lower threshold:
        # extra detections are only extra hidden faces).
        sweep = {thr: DetectorStats() for thr in LOWER_THRESHOLDS}
        low = open_detector(inputs.detector_candidate)
        low.score_threshold = min(LOWER_THRESHOLDS)
        bar = _Bar(len(frames), "verify detector", progress)
        for frame in frames:
            ref = det_ref.detect(frame)
            stats.add(ref, det_cand.detect(frame))
            extra = low.detect(frame)
            for thr, st in sweep.items():
                st.add(ref, [f for f in extra if f.score >= thr])
            bar.update()
        bar.close()
        results["detector"] = {
            "fp32_file": Path(inputs.detector_fp32).name,
            "candidate_file": Path(inputs.detector_candidate).name,
            "frames": len(frames),
            "sources": ", ".join(Path(s).name for s in inputs.heldout),
            "score_threshold": inputs.score_threshold,
            "metrics": stats.summary(),
            "candidate_threshold_sweep": {str(thr): {k: st.summary()[k] for k in ("recall", "precision")} for thr, st in sweep.items()},
        }
        results["latency"]["detector 640x360"] = {
            "fp32": detector_latency(det_ref.session, repeats=inputs.repeats),
            "candidate": detector_latency(det_cand.session, repeats=inputs.repeats),
        }
    if inputs.embedder_fp32 and inputs.embedder_candidate:
        emb_ref, emb_cand = ArcFaceEmbedder(inputs.embedder_fp32, threads=t), open_embedder(inputs.embedder_candidate)
        aligner = det_ref or YuNet(inputs.align_detector or inputs.detector_fp32 or Path(inputs.embedder_fp32).with_name("yunet_s_dynamic.onnx"), threads=t)
        crop_cache: dict[str, Optional[np.ndarray]] = {}

        def crop_of(path: Path) -> Optional[np.ndarray]:
            key = str(path)
            if key not in crop_cache:
                image = _load_image(path)
                face = main_face(aligner, image) if image is not None else None
                crop_cache[key] = emb_ref.crops(image, [face])[0] if face is not None else None
            return crop_cache[key]

        def embed_both(crops: np.ndarray, bar=None) -> tuple[np.ndarray, np.ndarray]:
            a, b = [], []
            for i in range(0, len(crops), 16):
                a.append(emb_ref.embed_crops(crops[i : i + 16]))
                b.append(emb_cand.embed_crops(crops[i : i + 16]))
                if bar:
                    bar.update(len(crops[i : i + 16]))
            return np.concatenate(a), np.concatenate(b)

        emb = results["embedder"] = {"fp32_file": Path(inputs.embedder_fp32).name, "candidate_file": Path(inputs.embedder_candidate).name}
        all_cos = []
        pair_scores = {}
        if inputs.shared and (Path(inputs.shared) / "faces" / "identities.csv").is_file():
            rows = read_identities(Path(inputs.shared))
            bar = _Bar(len(rows), "verify identities", progress)
            kept = [(crop_of(p), ident) for p, ident in rows]
            bar.update(len(rows))
            bar.close()
            kept = [(c, i) for c, i in kept if c is not None]
            crops = np.stack([c for c, _ in kept])
            labels = [i for _, i in kept]
            a, b = embed_both(crops)
            all_cos.append(np.sum(a * b, axis=1))
            emb["identities"] = {"faces": len(labels), "identities": len(set(labels)), "missed_by_detector": len(rows) - len(kept),
                                 "fp32": rank1_leave_one_out(a, labels), "candidate": rank1_leave_one_out(b, labels)}
            dpairs = read_deepface_pairs(Path(inputs.shared))
            if dpairs:
                kept_pairs = [(crop_of(x), crop_of(y), s) for x, y, s in dpairs]
                kept_pairs = [k for k in kept_pairs if k[0] is not None and k[1] is not None]
                xa, xb = embed_both(np.stack([k[0] for k in kept_pairs]))
                ya, yb = embed_both(np.stack([k[1] for k in kept_pairs]))
                same = np.array([k[2] for k in kept_pairs])
                emb["deepface"] = {"pairs": len(kept_pairs), "fp32": pair_accuracy_10fold(np.sum(xa * ya, 1), same)[0],
                                   "candidate": pair_accuracy_10fold(np.sum(xb * yb, 1), same)[0]}
        if inputs.lfw_dir:
            pairs = lfw_pairs(Path(inputs.lfw_dir), inputs.lfw_pairs, inputs.lfw_pairs, exclude=inputs.lfw_exclude)
            files = sorted({str(p) for a_, b_, _ in pairs for p in (a_, b_)})
            bar = _Bar(len(files), "verify LFW faces", progress)
            for f in files:
                crop_of(Path(f))
                bar.update()
            bar.close()
            usable = [(a_, b_, s) for a_, b_, s in pairs if crop_cache[str(a_)] is not None and crop_cache[str(b_)] is not None]
            index = {f: i for i, f in enumerate(sorted({str(p) for a_, b_, _ in usable for p in (a_, b_)}))}
            crops = np.stack([crop_cache[f] for f in index])
            bar = _Bar(len(crops), "verify LFW embeddings", progress)
            ea, eb = embed_both(crops, bar)
            bar.close()
            all_cos.append(np.sum(ea * eb, axis=1))
            ia = np.array([index[str(a_)] for a_, _, _ in usable])
            ib = np.array([index[str(b_)] for _, b_, _ in usable])
            same = np.array([s for _, _, s in usable])
            s_ref = np.sum(ea[ia] * ea[ib], 1)
            s_cand = np.sum(eb[ia] * eb[ib], 1)
            acc_r, thr_r = pair_accuracy_10fold(s_ref, same)
            acc_c, thr_c = pair_accuracy_10fold(s_cand, same)
            emb["lfw"] = {
                "pairs": len(usable),
                "pairs_missed_by_detector": len(pairs) - len(usable),
                "fp32": {"accuracy_10fold": acc_r, "threshold_10fold": thr_r, **at_threshold(s_ref, same)},
                "candidate": {"accuracy_10fold": acc_c, "threshold_10fold": thr_c, **at_threshold(s_cand, same)},
                "pair_cosine_abs_diff_mean": float(np.mean(np.abs(s_ref - s_cand))),
            }
            pair_scores = {"FP32": (s_ref, same), inputs.candidate_label: (s_cand, same)}
        cos = np.concatenate(all_cos) if all_cos else np.zeros(0)
        if len(cos):
            emb["cosine"] = {"faces": int(len(cos)), "mean": float(cos.mean()), "min": float(cos.min()), "p1": float(np.percentile(cos, 1))}
        results["latency"]["embedder batch 1"] = {"fp32": embedder_latency(emb_ref.session, 1, inputs.repeats), "candidate": embedder_latency(emb_cand.session, 1, inputs.repeats)}
        results["latency"]["embedder batch 8"] = {"fp32": embedder_latency(emb_ref.session, 8, inputs.repeats), "candidate": embedder_latency(emb_cand.session, 8, inputs.repeats)}
    else:
        cos, pair_scores = None, None
    if inputs.video and det_ref and det_cand and emb_ref and emb_cand:
        n = inputs.pipeline_frames or int(cv2.VideoCapture(str(inputs.video)).get(cv2.CAP_PROP_FRAME_COUNT))
        bar = _Bar(2 * n, "verify pipeline", progress)
        results["pipeline"] = {
            "video": Path(inputs.video).name,
            "fp32": pipeline_fps(Path(inputs.video), det_ref, emb_ref, inputs.pipeline_frames, bar),
            "candidate": pipeline_fps(Path(inputs.video), det_cand, emb_cand, inputs.pipeline_frames, bar),
        }
        bar.close()
    results["verdict"] = budget_verdict(results)
    # The numbers first: a device venv (runtime.txt only) has no matplotlib, and the minutes of
    # measuring must not be lost to a missing plotting library.
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out_dir / "report.md").write_text(markdown(results, []))
    if importlib.util.find_spec("matplotlib") is None:
        print("verify: matplotlib is not installed: report.md has no plots (pip install -r requirements/dev.txt for them)")
        return results
    plots = write_plots(results, out_dir, cos, pair_scores)
    (out_dir / "report.md").write_text(markdown(results, plots))
    return results
