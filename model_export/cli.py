"""``python -m model_export <step>``: quantize, build-engine, verify, recall.

    python -m model_export quantize --calib /data/frames /data/videos/*.mp4
    python -m model_export build-engine --precision fp16 int8
    python -m model_export verify --shared "$EDGE_AGENT_SHARED_DIR"   (report: build/reports/quantization)
    python -m model_export recall --config device_configs/x86-cpu.yaml --out reports/detection

The model directory is ``--models``, else ``$EDGE_AGENT_MODELS``, else ``./models``.
Exit status: 0 done, 1 the step failed (message on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

DETECTOR = "yunet_s_dynamic.onnx"
EMBEDDER = "mobilefacenet.onnx"


class CliError(Exception):
    """A failure worded for the operator; exit status 1."""


def _models_dir(value: Optional[str]) -> Path:
    return Path(value or os.environ.get("EDGE_AGENT_MODELS") or "models")


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return number


def _bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=quiet, file=sys.stderr)


# ---------------------------------------------------------------- quantize
def cmd_quantize(args) -> int:
    from edge_agent.models.files import resolve
    from edge_agent.models.yunet import YuNet
    from model_export import calibration as cal
    from model_export.quantize import Recipe, int8_name, quantize_model, read_metadata, record_checksum

    models = _models_dir(args.models)
    out_dir = Path(args.out) if args.out else models
    which = set(args.only or ["detector", "embedder"])
    detector_fp32 = resolve(models, args.detector)
    try:
        frames = cal.sample_frames(args.calib, args.frames, seed=args.seed, video_stride=args.video_stride)
    except cal.CalibrationError as exc:
        raise CliError(str(exc)) from None
    print(f"calibration: {len(frames)} frames from {len(cal.expand_sources(args.calib))} files", file=sys.stderr)
    written = []
    if "detector" in which:
        blobs = [cal.detector_canvas(f, args.max_side) for f in frames]
        if args.method != "minmax":  # histogram methods need one input shape: pad like the agent does
            blobs = cal.pad_to_common(blobs)
        out = out_dir / int8_name(args.detector)
        with _bar(len(blobs), "quantize detector (calibration)", args.quiet) as bar:
            recipe = Recipe(method=args.method, keep_heads_fp32=args.keep_heads_fp32, reduce_range=args.reduce_range in ("detector", "both"))
            quantize_model(detector_fp32, out, blobs, recipe, on_item=lambda: bar.update(1))
        written.append(out)
    if "embedder" in which:
        embedder_fp32 = resolve(models, args.embedder)
        detector = YuNet(detector_fp32, threads=args.threads)
        face_frames = frames
        if args.face_calib:
            try:
                face_frames = frames + cal.sample_frames(args.face_calib, args.faces, seed=args.seed, video_stride=args.video_stride)
            except cal.CalibrationError as exc:
                raise CliError(str(exc)) from None
        with _bar(len(face_frames), "align calibration faces", args.quiet) as bar:
            try:
                crops = cal.aligned_faces(face_frames, detector, args.faces, progress=bar)
            except cal.CalibrationError as exc:
                raise CliError(str(exc)) from None
        print(f"calibration: {len(crops)} aligned faces", file=sys.stderr)
        blobs = [cal.embedder_blob(crops[i : i + 1]) for i in range(len(crops))]
        out = out_dir / int8_name(args.embedder)
        with _bar(len(blobs), "quantize embedder (calibration)", args.quiet) as bar:
            recipe = Recipe(method=args.method, reduce_range=args.reduce_range in ("embedder", "both"))
            quantize_model(embedder_fp32, out, blobs, recipe, embedding_space=True, on_item=lambda: bar.update(1))
        written.append(out)
        del crops, blobs
    for path in written:
        digest = record_checksum(path)
        meta = read_metadata(path)
        space = meta.get("edge_agent.embedding_space")
        print(f"wrote {path} sha256 {digest[:16]}… (SHA256SUMS updated)" + (f"; embedding space {space}" if space else ""))
    return 0


# ---------------------------------------------------------------- build-engine
def cmd_build_engine(args) -> int:
    from edge_agent.models.files import resolve
    from model_export import engines

    models = _models_dir(args.models)
    names = args.model or [DETECTOR, EMBEDDER]
    paths = [resolve(models, name) for name in names]
    cache = engines.EngineCache(Path(args.cache_dir) if args.cache_dir else models / "engines")
    trt_version = args.trt_version or engines.tensorrt_version()
    gpu = args.gpu_name or engines.gpu_name()
    if not trt_version:
        if args.dry_run:
            raise CliError("tensorrt is not installed: pass --trt-version to plan without it")
        engines.import_tensorrt()  # raises EngineError with how to install it
    if not gpu:
        raise CliError("no NVIDIA GPU found (set --gpu-name or EDGE_AGENT_GPU_NAME to plan for one)")
    blobs_by_model: dict[str, list] = {}
    cal_hash = ""
    fp32_int8 = "int8" in args.precision and any(not engines.is_qdq(p) for p in paths)
    if fp32_int8 and args.calib:
        from model_export import calibration as cal

        frames = cal.sample_frames(args.calib, args.frames, video_stride=15)
        # TensorRT calibrates at the profile's optimum shape: every batch must have exactly it.
        for path in paths:
            profile = engines.default_profile(path)
            if profile is engines.EMBEDDER_PROFILE:
                from edge_agent.models.yunet import YuNet

                crops = cal.aligned_faces(frames, YuNet(resolve(models, DETECTOR)), args.frames)
                n = profile.opt[0]
                if len(crops) < n:
                    raise CliError(f"INT8 calibration of {path.name} needs at least {n} faces; found {len(crops)}")
                blobs_by_model[path.name] = [cal.embedder_blob(crops[i : i + n]) for i in range(0, len(crops) - n + 1, n)]
            else:
                shape = profile.opt if profile is not None else tuple(d for d in engines.static_shape(path))
                blobs_by_model[path.name] = [cal.fixed_canvas(f, shape[2], shape[3]) for f in frames]
        cal_hash = engines.calibration_hash(b for blobs in blobs_by_model.values() for b in blobs)
    elif fp32_int8 and args.calibration_hash:
        cal_hash = args.calibration_hash  # reuse an existing calibration cache
    jobs = []
    for precision in args.precision:
        targets = paths
        if precision == "int8" and not cal_hash:
            # INT8 without calibration data: the QDQ models made by `quantize` carry their scales.
            from model_export.quantize import int8_name

            targets = []
            for path in paths:
                qdq = path if engines.is_qdq(path) else models / int8_name(path.name)
                if not qdq.is_file():
                    raise CliError(f"INT8 engine for {path.name}: run `python -m model_export quantize` first (no {qdq.name}), or pass --calib")
                targets.append(resolve(models, qdq.name))
        jobs += engines.plan(targets, [precision], cache, trt_version, gpu, cal_hash, force=args.force)
    for job in jobs:
        state = "cached" if job.cached else ("would build" if args.dry_run else "build")
        print(f"{job.model.name:28s} {job.key.precision:5s} {state:12s} {job.engine}")
    if args.dry_run:
        return 0
    todo = [j for j in jobs if not j.cached]
    with _bar(len(todo), "build engines", args.quiet) as bar:
        for job in todo:
            engines.build(job, cache, blobs_by_model.get(job.model.name, ()), args.workspace_mb, log=lambda m: print(m, file=sys.stderr))
            bar.update(1)
    return 0


# ---------------------------------------------------------------- verify
def cmd_verify(args) -> int:
    from edge_agent.models.files import resolve
    from model_export.quantize import int8_name
    from model_export.verify import VerifyInputs, run_verify

    models = _models_dir(args.models)
    shared = Path(args.shared) if args.shared else (Path(os.environ["EDGE_AGENT_SHARED_DIR"]) if os.environ.get("EDGE_AGENT_SHARED_DIR") else None)
    heldout = args.heldout or ([str(shared / "video" / "short_hamilton_clip.mp4"), str(shared / "faces" / "face_recognition"), str(shared / "faces" / "people")] if shared else [])
    if not heldout:
        raise CliError("no held-out frames: pass --heldout or --shared (or set EDGE_AGENT_SHARED_DIR)")
    lfw = Path(args.lfw) if args.lfw else (shared / "datasets" / "lfw_gray" if shared and (shared / "datasets" / "lfw_gray").is_dir() else None)
    video = Path(args.video) if args.video else (shared / "video" / "short_hamilton_clip.mp4" if shared else None)
    which = set(args.only or ["detector", "embedder"])
    det_fp32 = resolve(models, args.detector)
    inputs = VerifyInputs(
        detector_fp32=det_fp32 if "detector" in which else None,
        detector_candidate=(Path(args.engine_detector) if args.engine else resolve(models, args.detector_candidate or int8_name(args.detector))) if "detector" in which else None,
        embedder_fp32=resolve(models, args.embedder) if "embedder" in which else None,
        embedder_candidate=(Path(args.engine_embedder) if args.engine else resolve(models, args.embedder_candidate or int8_name(args.embedder))) if "embedder" in which else None,
        heldout=heldout,
        max_frames=args.frames,
        shared=shared,
        lfw_dir=lfw,
        lfw_exclude=args.lfw_exclude,
        lfw_pairs=args.pairs,
        video=video if not args.no_pipeline else None,
        pipeline_frames=args.pipeline_frames,
        threads=args.threads,
        repeats=args.repeats,
    )
    inputs.align_detector = det_fp32  # faces are always found and aligned by the FP32 detector
    open_detector = open_embedder = None
    if args.engine:
        from edge_agent.models.arcface import ArcFaceEmbedder
        from edge_agent.models.yunet import YuNet
        from model_export.engines import TrtSession

        inputs.candidate_label = "TensorRT"

        def open_detector(path):  # the FP32 wrapper (pre/post-processing) around the engine
            det = YuNet(det_fp32, threads=args.threads)
            det.session = TrtSession(Path(path))
            det.output_names = [o.name for o in det.session.get_outputs()]
            return det

        def open_embedder(path):
            emb = ArcFaceEmbedder(resolve(models, args.embedder), threads=args.threads)
            emb.session = TrtSession(Path(path))
            return emb

    results = run_verify(inputs, Path(args.out), progress=not args.quiet, open_detector=open_detector, open_embedder=open_embedder)
    print((Path(args.out) / "report.md").read_text())
    verdict = results.get("verdict", {})
    if args.strict and not all(v for k, v in verdict.items() if k in ("detector", "embedder")):
        return 3
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_export", description="Offline model tools: INT8 quantization, TensorRT engines, accuracy/speed reports.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{quantize,build-engine,verify}")

    q = sub.add_parser("quantize", help="static INT8 (QDQ, per-channel) detector and embedder, calibrated on your images/videos")
    q.add_argument("--calib", nargs="+", required=True, metavar="SRC", help="images/videos: files, folders (recursive) or quoted glob patterns")
    q.add_argument("--face-calib", nargs="+", metavar="SRC", help="extra sources for embedder faces only (e.g. portraits); default: --calib")
    q.add_argument("--frames", type=_positive, default=200, help="detector calibration frames (default 200)")
    q.add_argument("--faces", type=_positive, default=300, help="embedder calibration faces (default 300)")
    q.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="activation range calibration (default minmax; entropy/percentile keep every activation in memory: tens of GB for the detector)")
    q.add_argument("--reduce-range", choices=("none", "embedder", "detector", "both"), default="embedder",
                   help="7-bit weights, which avoids the U8S8 saturation of x86 CPUs without VNNI (default: embedder, where it "
                        "keeps INT8 embeddings closest to FP32)")
    q.add_argument("--keep-heads-fp32", action="store_true", help="leave the detector's output convolutions in FP32")
    q.add_argument("--only", nargs="+", choices=("detector", "embedder"))
    q.add_argument("--models", help="model directory (default $EDGE_AGENT_MODELS or ./models)")
    q.add_argument("--out", help="where INT8 files go (default: the model directory)")
    q.add_argument("--detector", default=DETECTOR)
    q.add_argument("--embedder", default=EMBEDDER)
    q.add_argument("--max-side", type=_positive, default=640)
    q.add_argument("--video-stride", type=_positive, default=10, help="take every Nth video frame")
    q.add_argument("--threads", type=int, default=0)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_quantize)

    b = sub.add_parser("build-engine", help="TensorRT engines (FP16/INT8) for this board, cached by model hash + TensorRT version + GPU")
    b.add_argument("--precision", nargs="+", choices=("fp16", "int8"), default=["fp16"])
    b.add_argument("--model", nargs="+", metavar="FILE", help=f"ONNX files in the model directory (default {DETECTOR} {EMBEDDER}); a .int8.onnx (QDQ) builds as INT8")
    b.add_argument("--models", help="model directory (default $EDGE_AGENT_MODELS or ./models)")
    b.add_argument("--cache-dir", help="engine cache (default <models>/engines)")
    b.add_argument("--calib", nargs="+", metavar="SRC", help="calibration images/videos for INT8 from an FP32 model")
    b.add_argument("--calibration-hash", help="reuse the INT8 calibration cache with this data hash instead of --calib")
    b.add_argument("--frames", type=_positive, default=200)
    b.add_argument("--workspace-mb", type=_positive, default=1024)
    b.add_argument("--force", action="store_true", help="rebuild even when a matching engine is cached")
    b.add_argument("--dry-run", action="store_true", help="print keys and cache state; build nothing")
    b.add_argument("--trt-version", help="plan for this TensorRT version (default: the installed one)")
    b.add_argument("--gpu-name", help="plan for this GPU (default: detected)")
    b.set_defaults(func=cmd_build_engine)

    v = sub.add_parser("verify", help="accuracy + speed of INT8 (or engine) models vs FP32: Markdown + plots")
    v.add_argument("--out", default="build/reports/quantization",
                   help="report directory (default build/reports/quantization; --out reports/quantization replaces the committed report)")
    v.add_argument("--shared", help="data folder with faces/, video/, datasets/lfw_gray (default $EDGE_AGENT_SHARED_DIR)")
    v.add_argument("--heldout", nargs="+", metavar="SRC", help="held-out frames for the detector (default: hamilton clip + face photos)")
    v.add_argument("--frames", type=_positive, default=150, help="held-out detector frames")
    v.add_argument("--lfw", help="LFW folder for pairs (default <shared>/datasets/lfw_gray)")
    v.add_argument("--lfw-exclude", nargs="*", default=["[A-B]*"], metavar="PATTERN", help="LFW people left out of pairs (used for calibration); default '[A-B]*'")
    v.add_argument("--pairs", type=_positive, default=1000, help="LFW same and different pairs, each (default 1000)")
    v.add_argument("--video", help="video for pipeline fps (default <shared>/video/short_hamilton_clip.mp4)")
    v.add_argument("--pipeline-frames", type=int, default=0, help="0 = the whole video")
    v.add_argument("--no-pipeline", action="store_true")
    v.add_argument("--repeats", type=_positive, default=50)
    v.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads for latency (default 2)")
    v.add_argument("--only", nargs="+", choices=("detector", "embedder"))
    v.add_argument("--models", help="model directory (default $EDGE_AGENT_MODELS or ./models)")
    v.add_argument("--detector", default=DETECTOR)
    v.add_argument("--embedder", default=EMBEDDER)
    v.add_argument("--detector-candidate", help="default <detector>.int8.onnx")
    v.add_argument("--embedder-candidate", help="default <embedder>.int8.onnx")
    v.add_argument("--engine", action="store_true", help="compare TensorRT engines instead (needs --engine-detector/--engine-embedder)")
    v.add_argument("--engine-detector")
    v.add_argument("--engine-embedder")
    v.add_argument("--strict", action="store_true", help="exit 3 when a model misses its budget")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("recall", help="recall of the configured detector stack vs dlib CNN + HOG (independent), and faces changed: Markdown + plots")
    r.add_argument("--config", help="agent config whose detector stack is measured (default: built-in defaults)")
    r.add_argument("--shared", default=os.environ.get("EDGE_AGENT_SHARED_DIR"), help="data folder with faces/crowds and video/ (default $EDGE_AGENT_SHARED_DIR)")
    r.add_argument("--models", help="model directory (default $EDGE_AGENT_MODELS or ./models)")
    r.add_argument("--out", default="reports/detection", help="report directory (default reports/detection)")
    r.add_argument("--cache", default=str(Path.home() / ".cache/edge-agent/recall"), help="reference boxes cached here (the CNN takes ~7 s a photo)")
    r.add_argument("--reference", nargs="+", choices=("cnn", "hog"), default=["cnn", "hog"])
    r.add_argument("--every", nargs=2, type=_positive, default=[10, 50], metavar=("N_HAMILTON", "N_CORRIDOR"), help="sample every Nth frame of the two clips")
    r.add_argument("--max-photos", type=int, default=0, help="only the first N crowd photos (0 = all)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_recall)
    return parser


def cmd_recall(args) -> int:
    from edge_agent.config import ConfigError, load_config
    from model_export import recall_report

    if not args.shared or not Path(args.shared).is_dir():
        raise CliError("give --shared DIR (or set EDGE_AGENT_SHARED_DIR): the crowd photos and clips are read from it")
    try:
        config = load_config(Path(args.config) if args.config else None, env={"EDGE_AGENT_MODELS": str(_models_dir(args.models))})
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        evaluation = recall_report.evaluate(args, config)
    except ModuleNotFoundError as exc:
        raise CliError(f"{exc} (the reference detectors come from requirements/eval.txt)") from None
    command = "python -m model_export recall" + (f" --config {args.config}" if args.config else "")
    summary = recall_report.write_report(Path(args.out), evaluation, config, command)
    for name, row in summary["sets"].items():
        print(f"{name}: found {row['configured stack']['found_ge20']:.3f}, changed {row['changed_ge20']:.3f} (faces >= 20 px: {row['configured stack']['faces_ge20']})")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from edge_agent.models.files import ModelFileError
    from model_export.calibration import CalibrationError
    from model_export.engines import EngineError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "engine", False) and not (args.engine_detector and args.engine_embedder):
        parser.error("--engine needs --engine-detector and --engine-embedder")
    if getattr(args, "calib", None) is not None and args.command == "build-engine" and args.calibration_hash:
        parser.error("--calib and --calibration-hash exclude each other")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CliError, ModelFileError, CalibrationError, EngineError) as exc:
        print(f"model_export {args.command}: error: {exc}", file=sys.stderr)
        return 1
