"""Offline processing of an image or a video file through the same fail-closed pipeline.

The output appears under its name only when complete (``atomic_output``); a damaged input is
an error unless the caller accepts the frames that decode."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
from tqdm import tqdm

from edge_agent.atomic_output import atomic_output
from edge_agent.enroll import EnrolError, read_image
from edge_agent.service import Models
from edge_agent.stats import CameraStats
from edge_agent.video_io import Frame, VideoReader, VideoWriter, container_format

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class ProcessResult:
    frames: int
    seconds: float
    stats: dict

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def process_file(models: Models, source: Path, output: Path, progress: bool = True, max_frames: Optional[int] = None,
                 allow_decode_errors: bool = False) -> ProcessResult:
    """Filter ``source`` into ``output`` (image -> image, video -> H.264 with the input's audio)."""
    source, output = Path(source), Path(output)
    if source.resolve() == output.resolve():
        raise ValueError("the output must not overwrite the input")
    output.parent.mkdir(parents=True, exist_ok=True)
    stats = CameraStats(source.stem)
    if source.suffix.lower() in IMAGE_SUFFIXES:
        image = read_image(source, models.config.pipeline.max_frame_pixels)
        # A still photo has no temporal evidence to gather: one confident recognition decides.
        guard = models.pipeline(stats, still=True)  # with a deadline of STILL_IMAGE_TIMEOUT_S at least
        start = time.perf_counter()
        try:
            out, _ = guard.filter_array(image)
        finally:
            guard.close()
        with atomic_output(output) as partial:
            if not cv2.imwrite(str(partial), out):
                raise ValueError(f"cannot write image {output} (unknown extension?)")
        return ProcessResult(1, time.perf_counter() - start, stats.snapshot())
    if not source.is_file():
        raise EnrolError(f"video file {source} does not exist")
    fmt = container_format(output)
    reader = VideoReader(source)
    width, height = reader.video.codec_context.width, reader.video.codec_context.height
    limit = models.config.pipeline.max_frame_pixels
    if width * height > limit:
        reader.close()
        raise EnrolError(f"{source}: {width}x{height} frames are {width * height:,} pixels, over the limit of {limit:,} (pipeline.max_frame_pixels); refused, nothing written")
    total = reader.report.expected_frames or None
    if max_frames:
        total = min(total or max_frames, max_frames)
    guard = models.pipeline(stats)
    # Decoding and encoding run on their own threads (FFmpeg releases the GIL), overlapping
    # with filtering; bounded queues keep memory flat. Only filtered frames reach the writer;
    # audio packets go to it unchanged.
    decoded: queue.Queue = queue.Queue(maxsize=4)
    filtered: queue.Queue = queue.Queue(maxsize=4)
    audio: queue.Queue = queue.Queue()
    stop = threading.Event()
    errors: list[BaseException] = []
    codec: list[str] = []

    def read() -> None:
        try:
            for frame in reader.frames(on_audio=audio.put, max_frames=max_frames):
                if stop.is_set():
                    break
                decoded.put(frame)
        except BaseException as exc:
            errors.append(exc)
        finally:
            decoded.put(None)

    def write(path: Path) -> None:
        writer = None
        try:
            writer = VideoWriter(path, reader, fmt)
            codec.append(writer.codec)
            while (item := filtered.get()) is not None:
                with stats.timed("encode"):
                    writer.write(item)
                    while not audio.empty():
                        writer.write_audio(audio.get_nowait())
            while not audio.empty():
                writer.write_audio(audio.get_nowait())
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            while filtered.get() is not None:  # drain so the producer never blocks
                pass
        finally:
            if writer is not None:
                writer.close()

    frames = 0
    start = time.perf_counter()
    with atomic_output(output) as partial:
        reader_thread = threading.Thread(target=read, name="process-read", daemon=True)
        writer_thread = threading.Thread(target=write, args=(partial,), name="process-write", daemon=True)
        reader_thread.start()
        writer_thread.start()
        try:
            with tqdm(total=total, unit="frame", disable=not progress, desc=source.name) as bar:

                def emit(frame: Frame, detections) -> None:
                    nonlocal frames
                    out, _ = guard.filter_array(frame.image, detections)
                    filtered.put(Frame(out, frame.pts, frame.time_base))
                    stats.frame_published()
                    frames += 1
                    bar.update()

                # each frame's detection starts while the frame before it is filtered
                ahead = None
                while (frame := decoded.get()) is not None:
                    nxt = (frame, guard.pipeline.detect_ahead(frame.image))
                    if ahead is not None:
                        emit(*ahead)
                    ahead = nxt
                if ahead is not None:
                    emit(*ahead)
        finally:
            stop.set()
            while reader_thread.is_alive():  # unblock a reader waiting on a full queue
                try:
                    decoded.get_nowait()
                except queue.Empty:
                    reader_thread.join(0.05)
            filtered.put(None)
            writer_thread.join()
            reader.close()
            guard.close()
        if errors:
            raise errors[0]
        if frames == 0:
            raise EnrolError(f"{source}: no frame could be read")
        report = reader.report
        if report.errors:
            message = (f"{source}: {report.errors} decode error(s) (first: {report.first_error}), "
                       f"{report.lost_frames} of {report.expected_frames} frames lost")
            if not allow_decode_errors:
                raise EnrolError(message + "; nothing written (--allow-decode-errors keeps the frames that decode)")
            log.warning("%s; the output has the %d frames that decoded", message, frames)
    stats_out = stats.snapshot()
    stats_out.update({"decode_errors": reader.report.errors, "frames_lost": reader.report.lost_frames,
                      "frames_expected": reader.report.expected_frames, "video_codec": codec[0] if codec else None})
    return ProcessResult(frames, time.perf_counter() - start, stats_out)
