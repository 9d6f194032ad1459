"""What H.264 output costs `process` next to the MPEG-4 Part 2 it replaced: encode time per
frame and file size for the same frames, the two encoders alternating round by round.

    python benchmarks/bench_encode.py [--video PATH] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.video_io import FALLBACK_ENCODER, Frame, VideoReader, VideoWriter  # noqa: E402
import edge_agent.video_io as video_io  # noqa: E402


def encode(reader: VideoReader, frames: list[Frame], codec: str, out: Path) -> float:
    video_io.H264_ENCODERS = (codec,) if codec != FALLBACK_ENCODER else ()
    writer = VideoWriter(out, reader, "mp4")
    start = time.perf_counter()
    for frame in frames:
        writer.write(frame)
    writer.close()
    return time.perf_counter() - start


def main() -> int:
    shared = os.environ.get("EDGE_AGENT_SHARED_DIR")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=Path(shared) / "video/short_hamilton_clip.mp4" if shared else None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.video is None or not args.video.is_file():
        parser.error("give --video or set EDGE_AGENT_SHARED_DIR")
    reader = VideoReader(args.video)
    frames = list(reader.frames())
    best: dict[str, float] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for codec in ("libx264", FALLBACK_ENCODER):
                out = Path(tmp) / f"{codec}.mp4"
                seconds = encode(reader, frames, codec, out)
                best[codec] = min(best.get(codec, seconds), seconds)
                sizes[codec] = out.stat().st_size
    reader.close()
    print(f"{len(frames)} frames of {args.video.name}, best of {args.rounds} rounds (video only, audio not counted)")
    print("| encoder | ms per frame | file kB | time vs mpeg4 |\n|---|---|---|---|")
    for codec in ("libx264", FALLBACK_ENCODER):
        print(f"| {codec} | {best[codec] / len(frames) * 1000:.2f} | {sizes[codec] / 1024:.0f} | {best[codec] / best[FALLBACK_ENCODER]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
