"""Offline processing of an image or a video file through the same fail-closed pipeline."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
from tqdm import tqdm

from edge_agent.capture import SourceError, open_capture
from edge_agent.enroll import EnrolError, read_image
from edge_agent.service import Models
from edge_agent.stats import CameraStats

STILL_IMAGE_TIMEOUT_S = 60.0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class ProcessResult:
    frames: int
    seconds: float
    stats: dict

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def process_file(models: Models, source: Path, output: Path, progress: bool = True, max_frames: Optional[int] = None) -> ProcessResult:
    """Filter ``source`` into ``output`` (image -> image, video -> mp4)."""
    source, output = Path(source), Path(output)
    if source.resolve() == output.resolve():
        raise ValueError("the output must not overwrite the input")
    output.parent.mkdir(parents=True, exist_ok=True)
    stats = CameraStats(source.stem)
    if source.suffix.lower() in IMAGE_SUFFIXES:
        image = read_image(source, models.config.pipeline.max_frame_pixels)
        # A still photo has no temporal evidence to gather: one confident recognition decides.
        guard = models.pipeline(stats, min_votes=1)
        # No frame rate to keep for a still image: a slow CPU (tiles of a large photo) must not
        # turn it into a blank one. A failing stage still redacts it whole.
        guard.timeout_s = max(guard.timeout_s, STILL_IMAGE_TIMEOUT_S)
        start = time.perf_counter()
        try:
            out, _ = guard.filter_array(image)
        finally:
            guard.close()
        if not cv2.imwrite(str(output), out):
            raise ValueError(f"cannot write image {output} (unknown extension?)")
        return ProcessResult(1, time.perf_counter() - start, stats.snapshot())
    try:
        cap = open_capture(str(source))
    except SourceError as exc:
        raise EnrolError(str(exc)) from None
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    limit = models.config.pipeline.max_frame_pixels
    if width * height > limit:
        cap.release()
        raise EnrolError(f"{source}: {width}x{height} frames are {width * height:,} pixels, over the limit of {limit:,} (pipeline.max_frame_pixels); refused, nothing written")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if max_frames:
        total = min(total or max_frames, max_frames)
    guard = models.pipeline(stats)
    # Decoding and encoding run on their own threads (OpenCV releases the GIL), overlapping
    # with filtering; bounded queues keep memory flat. Only filtered frames reach the writer.
    decoded: queue.Queue = queue.Queue(maxsize=4)
    filtered: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        count = 0
        while not stop.is_set() and (max_frames is None or count < max_frames):
            ok, frame = cap.read()
            if not ok:
                break
            decoded.put(frame)
            count += 1
        decoded.put(None)

    def write() -> None:
        writer = None
        try:
            while (out := filtered.get()) is not None:
                with stats.timed("encode"):
                    if writer is None:
                        writer = cv2.VideoWriter(str(output), cv2.VideoWriter_fourcc(*"mp4v"), fps, (out.shape[1], out.shape[0]))
                        if not writer.isOpened():
                            raise ValueError(f"cannot write video {output}")
                    writer.write(out)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            while filtered.get() is not None:  # drain so the producer never blocks
                pass
        finally:
            if writer is not None:
                writer.release()

    reader = threading.Thread(target=read, name="process-read", daemon=True)
    writer_thread = threading.Thread(target=write, name="process-write", daemon=True)
    reader.start()
    writer_thread.start()
    frames = 0
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="frame", disable=not progress, desc=source.name) as bar:
            while (frame := decoded.get()) is not None:
                out, _ = guard.filter_array(frame)
                filtered.put(out)
                stats.frame_published()
                frames += 1
                bar.update()
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                decoded.get_nowait()
            except queue.Empty:
                reader.join(0.05)
        filtered.put(None)
        writer_thread.join()
        cap.release()
        guard.close()
    if errors:
        raise errors[0]
    if frames == 0:
        raise EnrolError(f"{source}: no frame could be read")
    return ProcessResult(frames, time.perf_counter() - start, stats.snapshot())
