"""Video files in and out through PyAV (FFmpeg): decode with every error counted, encode H.264,
and carry the audio packets over unchanged (audio carries no face).

The PyAV wheel bundles FFmpeg with libx264 (GPL-2.0+; PyAV itself is BSD-3-Clause). An FFmpeg
build without an H.264 encoder falls back to MPEG-4 Part 2 with a warning: browsers do not play
that, but no frame is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import av
import numpy as np

log = logging.getLogger(__name__)

# Tried in order; "mpeg4" (MPEG-4 Part 2) is in every FFmpeg build.
H264_ENCODERS: tuple[str, ...] = ("libx264", "libopenh264")
FALLBACK_ENCODER = "mpeg4"
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


class VideoError(ValueError):
    """A video that cannot be read or written (worded for the operator)."""


@dataclass
class Frame:
    """One decoded picture (BGR) with its timestamp, so that the output keeps the input's timing."""

    image: np.ndarray
    pts: Optional[int]
    time_base: Optional[Fraction]


@dataclass
class DecodeReport:
    """What the decoder could not turn into pictures: a damaged file must not pass as a short one."""

    expected_frames: int = 0
    decoded_frames: int = 0
    errors: int = 0
    first_error: Optional[str] = None

    @property
    def lost_frames(self) -> int:
        return max(0, self.expected_frames - self.decoded_frames) if self.errors else 0


def pick_encoder() -> str:
    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):
            continue
    log.warning("no H.264 encoder in this FFmpeg build (tried %s): writing MPEG-4 Part 2 (mp4v), which browsers do not play",
                ", ".join(H264_ENCODERS))
    return FALLBACK_ENCODER


class VideoReader:
    """Decode the first video stream; audio packets are handed to ``on_audio`` as they are demuxed."""

    def __init__(self, path: Path) -> None:
        try:
            self.container = av.open(str(path))
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:
            raise VideoError(f"{path}: not a readable video ({exc.__class__.__name__})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{path}: no video stream")
        self.path = path
        self.video = self.container.streams.video[0]
        self.video.thread_type = "AUTO"
        self.audio = list(self.container.streams.audio)
        rate = self.video.average_rate or self.video.guessed_rate
        self.rate: Fraction = Fraction(rate) if rate else Fraction(25)
        duration = float(self.video.duration * self.video.time_base) if self.video.duration else 0.0
        self.report = DecodeReport(expected_frames=self.video.frames or int(round(duration * float(self.rate))))

    def frames(self, on_audio=None, max_frames: Optional[int] = None) -> Iterator[Frame]:
        report = self.report
        for packet in self.container.demux(self.video, *self.audio):
            if packet.stream.type == "audio":
                if on_audio is not None and packet.dts is not None:
                    on_audio(packet)
                continue
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                report.errors += 1
                if report.first_error is None:
                    seconds = float(packet.pts * packet.time_base) if packet.pts is not None else None
                    report.first_error = f"{exc.__class__.__name__} at {seconds:.2f} s" if seconds is not None else exc.__class__.__name__
                continue
            for picture in decoded:
                report.decoded_frames += 1
                yield Frame(picture.to_ndarray(format="bgr24"), picture.pts, picture.time_base)
                if max_frames is not None and report.decoded_frames >= max_frames:
                    return

    def close(self) -> None:
        self.container.close()


class VideoWriter:
    """Encode BGR frames (H.264, yuv420p) and mux the source's audio packets unchanged."""

    def __init__(self, path: Path, reader: VideoReader, container_format: str) -> None:
        self.container = av.open(str(path), "w", format=container_format)
        self.codec = pick_encoder()
        options = {"preset": "veryfast", "crf": "23"} if self.codec == "libx264" else {}
        source = reader.video.codec_context
        self.stream = self.container.add_stream(self.codec, rate=reader.rate, options=options)
        self.stream.width, self.stream.height = source.width, source.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = reader.video.time_base or 1 / reader.rate
        self.audio = {a.index: self.container.add_stream_from_template(a) for a in reader.audio}

    def write(self, frame: Frame) -> None:
        picture = av.VideoFrame.from_ndarray(frame.image, format="bgr24")
        picture.pts, picture.time_base = frame.pts, frame.time_base
        for packet in self.stream.encode(picture):
            self.container.mux(packet)

    def write_audio(self, packet) -> None:
        packet.stream = self.audio[packet.stream.index]
        self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
        finally:
            self.container.close()


def container_format(output: Path) -> str:
    fmt = CONTAINERS.get(output.suffix.lower())
    if fmt is None:
        raise VideoError(f"cannot write video {output}: use one of {', '.join(sorted(CONTAINERS))}")
    return fmt
