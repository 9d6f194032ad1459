"""Whole-process speed of `edge-agent process` beside deface (CenterFace + blur) on the same clip,
in the same run, with the ratio; plus the agent's per-stage latency.

    python benchmarks/bench_pipeline.py [--video FILE] [--rounds 2] [--deface PATH]
        [--config FILE --label NAME]...   (several agent configurations, one table)

Both tools run as separate processes over the whole clip (start-up included), alternating round
by round so that both see the same machine load; the best round of each is reported. deface
comes from its own virtualenv (`make bench` builds .venv-bench), since it pulls the GUI build of
OpenCV. Registered people: Lin-Manuel Miranda and Alex Lacamoire (recognition on).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def frame_count(video: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(video))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return count


def resized(video: Path, size: str, work: Path) -> Path:
    """The clip scaled to ``size`` ("WxH"), written once into ``work`` (never into the repository)."""
    import cv2

    width, height = (int(v) for v in size.lower().split("x"))
    out = work / f"{video.stem}_{width}x{height}.mp4"
    cap = cv2.VideoCapture(str(video))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), cap.get(cv2.CAP_PROP_FPS) or 25.0, (width, height))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC))
    cap.release()
    writer.release()
    return out


def main(argv: list[str] | None = None) -> int:
    shared = os.environ.get("EDGE_AGENT_SHARED_DIR")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=Path(shared) / "video/short_hamilton_clip.mp4" if shared else None)
    parser.add_argument("--faces", type=Path, default=Path(shared) / "faces/face_recognition/examples" if shared else None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--deface", default=str(ROOT / ".venv-bench/bin/deface"))
    parser.add_argument("--config", type=Path, action="append", default=[], help="agent config (repeatable, e.g. device_configs/x86-cpu.yaml)")
    parser.add_argument("--label", action="append", default=[], help="name of each --config in the table (same order)")
    parser.add_argument("--resize", metavar="WxH", help="first scale the clip to this size (e.g. 1920x1080); both tools get the scaled file")
    args = parser.parse_args(argv)
    configs = args.config or [None]
    labels = args.label + [str(c.stem) if c else "defaults" for c in configs[len(args.label):]]
    if args.video is None or not args.video.is_file():
        parser.error("give --video or set EDGE_AGENT_SHARED_DIR")
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    if args.resize:
        args.video = resized(args.video, args.resize, work)
    frames = frame_count(args.video)
    env = {**os.environ, "EDGE_AGENT_DATA_DIR": str(work / "data")}
    def agent(config: Path | None) -> list[str]:
        return [sys.executable, "-m", "edge_agent"] + (["--config", str(config)] if config else [])

    if args.faces:  # one registry (EDGE_AGENT_DATA_DIR) for every configuration
        for name, photo in (("lin", "lin-manuel-miranda.png"), ("alex", "alex-lacamoire.png")):
            subprocess.run(agent(configs[0]) + ["registry", "add", "--name", name, str(args.faces / photo)], env=env, check=True, stdout=subprocess.DEVNULL)
    ours_cmds = [agent(c) + ["process", str(args.video), "-o", str(work / f"ours{i}.mp4"), "-q", "--stats-json", str(work / f"stats{i}.json")]
                 for i, c in enumerate(configs)]
    have_deface = shutil.which(args.deface) or Path(args.deface).is_file()
    # deface's faster backend here (OpenCV DNN: about 2x its onnxruntime default on this CPU).
    deface_cmd = [args.deface, str(args.video), "-o", str(work / "deface.mp4"), "--replacewith", "blur", "--backend", "opencv"]
    ours: list[list[float]] = [[] for _ in configs]
    theirs: list[float] = []
    for _ in range(args.rounds):  # alternate tools within each round: all see the same load
        for i, cmd in enumerate(ours_cmds):
            ours[i].append(timed(cmd, env))
        if have_deface:
            theirs.append(timed(deface_cmd, env))
    print(f"## Pipeline on {args.video.name} ({frames} frames), {os.cpu_count()} CPUs, best of {args.rounds} alternating rounds\n")
    print("| tool | wall s | frames/s | ratio vs deface |")
    print("|---|---|---|---|")
    if theirs:
        print(f"| deface 1.5.0 (CenterFace + blur, OpenCV backend) | {min(theirs):.1f} | {frames / min(theirs):.1f} | 1.00 |")
    for label, times in zip(labels, ours):
        ratio = f"{min(theirs) / min(times):.2f}" if theirs else "(deface not installed)"
        print(f"| edge-agent process ({label}, recognition on) | {min(times):.1f} | {frames / min(times):.1f} | {ratio} |")
    for i, label in enumerate(labels):
        stats = json.loads((work / f"stats{i}.json").read_text())
        lat = stats["latency_ms"]
        print(f"\n{label}: per-stage latency of the last run (ms, recent mean): " + ", ".join(f"{k} {v:.2f}" for k, v in lat.items()))
        print(f"{label}: faces seen {stats['faces_seen']}, shown {stats['faces_shown']}, anonymized {stats['faces_anonymized']}, "
              f"fallbacks {stats['face_fallbacks']}, frames redacted {stats['frames_redacted']}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
