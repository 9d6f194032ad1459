"""FP32 vs INT8 latency of the detector (640x360 frame) and the embedder (batch 1 and 8), and
the model pipeline's frames/s on a video with each (`make bench`).

    python benchmarks/bench_models.py [--models DIR] [--video FILE] [--threads 2] [--repeats 50]

Models come from --models / $EDGE_AGENT_MODELS (INT8 files made by `python -m model_export
quantize`); the video from --video or $EDGE_AGENT_SHARED_DIR/video/short_hamilton_clip.mp4.
Latencies are medians over --repeats runs after warm-up; on a shared machine they move with load,
so the FP32 and INT8 runs are interleaved round by round to see the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.models.arcface import ArcFaceEmbedder  # noqa: E402
from edge_agent.models.files import resolve  # noqa: E402
from edge_agent.models.yunet import YuNet  # noqa: E402
from model_export.calibration import detector_canvas  # noqa: E402
from model_export.quantize import int8_name  # noqa: E402
from model_export.verify import filter_once  # noqa: E402


def pipeline_interleaved(video: Path, combos: dict, max_frames: int = 0) -> dict:
    """Frames/s of each (detector, embedder) combo on the same frames, taking turns frame by
    frame so that all see the same machine load: detect, align + embed every face, pixelate,
    JPEG-encode (decode excluded; frames stay in memory only)."""
    import cv2

    from edge_agent.anonymize.classical import Pixelate

    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok or (max_frames and len(frames) >= max_frames):
            break
        frames.append(frame)
    capture.release()
    anonymizer = Pixelate()
    busy = {label: 0.0 for label in combos}
    faces = {label: 0 for label in combos}
    for frame in frames:
        for label, (detector, embedder) in combos.items():
            work = frame.copy()
            start = time.perf_counter()
            found = filter_once(work, detector, embedder, anonymizer)
            busy[label] += time.perf_counter() - start
            faces[label] += len(found)
    n = max(len(frames), 1)
    return {label: {"frames": len(frames), "faces": faces[label], "fps": n / busy[label], "ms_per_frame": busy[label] / n * 1000} for label in combos}


def interleaved(fns: dict, repeats: int, warmup: int = 5) -> dict:
    """Median ms of each callable, alternating between them every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(v)) for name, v in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=os.environ.get("EDGE_AGENT_MODELS", "models"))
    parser.add_argument("--video", help="default $EDGE_AGENT_SHARED_DIR/video/short_hamilton_clip.mp4")
    parser.add_argument("--detector", default="yunet_s_dynamic.onnx")
    parser.add_argument("--embedder", default="mobilefacenet.onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--pipeline-frames", type=int, default=0, help="0 = whole video")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)

    models = Path(args.models)
    t = args.threads
    det = {"FP32": YuNet(resolve(models, args.detector), threads=t), "INT8": YuNet(resolve(models, int8_name(args.detector)), threads=t)}
    emb = {"FP32": ArcFaceEmbedder(resolve(models, args.embedder), threads=t), "INT8": ArcFaceEmbedder(resolve(models, int8_name(args.embedder)), threads=t)}

    rng = np.random.RandomState(0)
    frame_blob = detector_canvas(rng.randint(0, 255, (360, 640, 3), np.uint8))
    rows = []
    lat = interleaved({k: (lambda s=d.session: s.run(None, {s.get_inputs()[0].name: frame_blob})) for k, d in det.items()}, args.repeats)
    rows.append(("detector 640x360 (canvas 640x384)", lat["FP32"], lat["INT8"]))
    for batch in (1, 8):
        blob = rng.randn(batch, 3, 112, 112).astype(np.float32)
        lat = interleaved({k: (lambda s=e.session, b=blob: s.run(None, {s.get_inputs()[0].name: b})) for k, e in emb.items()}, args.repeats)
        rows.append((f"embedder batch {batch}", lat["FP32"], lat["INT8"]))

    print(f"onnxruntime CPU, {t} intra-op threads, median of {args.repeats} interleaved runs")
    print(f"{'model':36s} {'FP32 ms':>9s} {'INT8 ms':>9s} {'FP32/INT8':>10s}")
    for name, a, b in rows:
        print(f"{name:36s} {a:9.2f} {b:9.2f} {a / b:9.2f}x")

    video = Path(args.video) if args.video else (Path(os.environ["EDGE_AGENT_SHARED_DIR"]) / "video" / "short_hamilton_clip.mp4" if os.environ.get("EDGE_AGENT_SHARED_DIR") else None)
    pipeline = {}
    if video and video.is_file():
        combos = {"FP32": ("FP32", "FP32"), "INT8": ("INT8", "INT8"), "FP32 det + INT8 emb": ("FP32", "INT8")}
        pipeline = pipeline_interleaved(video, {label: (det[d], emb[e]) for label, (d, e) in combos.items()}, args.pipeline_frames)
        print(f"\npipeline on {video.name}, {t} threads (detect, align+embed every face, pixelate, JPEG; decode excluded; interleaved)")
        base = pipeline["FP32"]["fps"]
        for label, p in pipeline.items():
            print(f"{label:36s} {p['fps']:7.1f} frames/s  {p['ms_per_frame']:7.1f} ms/frame  {p['fps'] / base:5.2f}x  ({p['faces']} faces)")
    else:
        print("\n(no video: pass --video or set EDGE_AGENT_SHARED_DIR for pipeline fps)")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": t, "repeats": args.repeats, "latency_ms": [{"model": n, "fp32": a, "int8": b} for n, a, b in rows], "pipeline": pipeline}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
