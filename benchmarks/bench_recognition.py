"""Recognition cost per frame (the pipeline's recognise stage: embed due tracks, weigh, decide)
of this tree beside an earlier revision, side by side in one run, with the ratio.

    python benchmarks/bench_recognition.py [--video FILE] [--baseline-rev REV] [--rounds 3]

The earlier revision's ``edge_agent`` is taken from git (``git archive``) into a temporary folder;
each side runs in its own process over the same clip, with the same two registered people (Lin-
Manuel Miranda and Alex Lacamoire) and the same detector, so both see the same faces. Rounds
alternate between the two; the best round of each is reported. Only ``FramePipeline._recognise``
is timed (both revisions have it), so detection and anonymization do not dilute the ratio.
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
PEOPLE = (("lin", "lin-manuel-miranda.png"), ("alex", "alex-lacamoire.png"))


def worker(video: Path, out: Path) -> None:
    """Runs inside the revision under test (its ``edge_agent`` first on PYTHONPATH)."""
    import cv2

    from edge_agent.config import load_config
    from edge_agent.service import Models
    from edge_agent.stats import CameraStats

    models = Models(load_config(None))
    guard = models.pipeline(CameraStats("bench"))
    pipeline = guard.pipeline
    spent = [0.0]
    recognise = pipeline._recognise

    def timed(frame, tracks):
        start = time.perf_counter()
        try:
            return recognise(frame, tracks)
        finally:
            spent[0] += time.perf_counter() - start

    pipeline._recognise = timed
    cap = cv2.VideoCapture(str(video))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        pipeline.filter(frame)  # no deadline here: a slow frame must count, not be redacted
        frames += 1
    guard.close()
    stats = guard.stats.counters
    out.write_text(json.dumps({"frames": frames, "recognise_s": spent[0], "faces_seen": stats["faces_seen"],
                               "faces_shown": stats["faces_shown"], "recognitions": stats["recognitions"]}))


def main(argv: list[str] | None = None) -> int:
    shared = os.environ.get("EDGE_AGENT_SHARED_DIR")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=Path(shared) / "video/short_hamilton_clip.mp4" if shared else None)
    parser.add_argument("--faces", type=Path, default=Path(shared) / "faces/face_recognition/examples" if shared else None)
    parser.add_argument("--baseline-rev", default="37d5e27", help="git revision to compare with (default: before pooled evidence)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.video, args.worker)
        return 0
    if args.video is None or not args.video.is_file() or args.faces is None:
        parser.error("give --video and --faces or set EDGE_AGENT_SHARED_DIR")
    work = Path(tempfile.mkdtemp(prefix="bench-recognition-"))
    base = work / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_rev, "edge_agent"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    sides = {f"baseline {args.baseline_rev}": base, "this tree": ROOT}
    envs = {}
    for label, path in sides.items():
        env = {**os.environ, "PYTHONPATH": str(path), "EDGE_AGENT_DATA_DIR": str(work / f"data-{len(envs)}")}
        env.pop("EDGE_AGENT_CONFIG", None)
        for name, photo in PEOPLE:
            subprocess.run([sys.executable, "-m", "edge_agent", "registry", "add", "--name", name, str(args.faces / photo)],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        envs[label] = env
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for label, env in envs.items():
            out = work / "result.json"
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--video", str(args.video), "--worker", str(out)],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = json.loads(out.read_text())
            if label not in best or result["recognise_s"] < best[label]["recognise_s"]:
                best[label] = result
    print(f"## Recognition cost on {args.video.name}, {os.cpu_count()} CPUs, best of {args.rounds} alternating rounds\n")
    print("| revision | frames | faces seen | embeddings | faces shown | recognise ms / frame | ratio | ms / face seen | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    reference = best[next(iter(best))]
    for label, r in best.items():
        per_frame = 1000 * r["recognise_s"] / r["frames"]
        ratio = r["recognise_s"] / reference["recognise_s"]
        per_face = 1000 * r["recognise_s"] / max(r["faces_seen"], 1)
        face_ratio = per_face / (1000 * reference["recognise_s"] / max(reference["faces_seen"], 1))
        print(f"| {label} | {r['frames']} | {r['faces_seen']} | {r['recognitions']} | {r['faces_shown']} | {per_frame:.2f} | {ratio:.2f} "
              f"| {per_face:.3f} | {face_ratio:.2f} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
