"""Camera sources through OpenCV: a file (optionally looped), an RTSP/HTTP URL, a USB index, or
a GStreamer pipeline string (Jetson hardware decode).

A reader thread always holds only the newest frame: when filtering is slower than the camera,
old frames are dropped, never queued. A lost source is reopened with exponential backoff, and
the consumer learns of it (``on_reconnect``) before it gets the first frame of the new connection."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

log = logging.getLogger(__name__)

URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


class SourceError(Exception):
    """A source that cannot be opened (worded for the operator)."""


def describe(source: Union[int, str]) -> str:
    """The source for logs: URLs lose their credentials."""
    text = str(source)
    return re.sub(r"://[^/@]*@", "://***@", text)


def parse_source(source: Union[int, str]) -> Union[int, str]:
    """An int for a USB index (``0`` or ``"0"``), else the string unchanged."""
    if isinstance(source, int):
        return source
    text = str(source).strip()
    return int(text) if text.isdigit() else text


def open_capture(source: Union[int, str]) -> cv2.VideoCapture:
    source = parse_source(source)
    if isinstance(source, int):
        cap = cv2.VideoCapture(source)
    elif "!" in source and "appsink" in source:
        cap = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    elif URL.match(source):
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000])
    else:
        path = Path(source)
        if not path.is_file():
            raise SourceError(f"video file {path} does not exist")
        cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open source {describe(source)}")
    return cap


class LatestFrameSource:
    """Reads a source on its own thread and keeps only the newest frame.

    ``on_reconnect`` runs on the consumer's thread, inside ``take``, just before the first frame
    of a reopened connection is handed out: the consumer can forget the old scene before it sees
    the new one (a frame of the lost connection still waiting is handed out first, without it)."""

    def __init__(self, source: Union[int, str], loop: bool = True, fps_cap: float = 0.0, max_backoff_s: float = 30.0, on_reconnect=None) -> None:
        self.source = parse_source(source)
        self.is_file = isinstance(self.source, str) and not URL.match(self.source) and "!" not in self.source
        self.loop = loop
        self.fps_cap = fps_cap
        self.max_backoff_s = max_backoff_s
        self.on_reconnect = on_reconnect
        self._cond = threading.Condition()
        self._frame: Optional[np.ndarray] = None
        self._seq = 0
        self._connection = 0  # which opening of the source produced the waiting frame
        self._frame_connection = 0
        self._taken_connection = 0
        self._stop = threading.Event()
        self.connected = False
        self.ended = False
        self.last_error: Optional[str] = None
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"capture-{describe(source)}", daemon=True)

    def start(self) -> "LatestFrameSource":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.5
        lost = False  # the operator saw a loss in the log: the recovery is logged too
        while not self._stop.is_set():
            try:
                cap = open_capture(self.source)
            except SourceError as exc:
                self.connected, self.last_error = False, str(exc)
                log.warning("%s; retrying in %.1fs", exc, backoff)
                lost = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.connected, self.last_error = True, None
            self._connection += 1
            if lost:
                log.info("source %s reconnected", describe(self.source))
                lost = False
            backoff = 0.5
            try:
                finished = self._read(cap)
            finally:
                cap.release()
                self.connected = False
            if finished:
                self.ended = True
                with self._cond:
                    self._cond.notify_all()
                return
            log.warning("source %s lost; reconnecting", describe(self.source))
            lost = True

    def _read(self, cap: cv2.VideoCapture) -> bool:
        """Read until the source fails (False) or a file ends without looping (True)."""
        native = cap.get(cv2.CAP_PROP_FPS) if self.is_file else 0.0
        pace = max(self.fps_cap, 0.0) or (native if 0 < native < 240 else 0.0)
        period = 1.0 / pace if pace else 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            ok, frame = cap.read()
            if not ok or frame is None:
                if self.is_file and self.loop and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                    continue
                return self.is_file
            with self._cond:
                if self._frame is not None:
                    self.dropped += 1
                self._frame, self._frame_connection = frame, self._connection
                self._seq += 1
                self._cond.notify_all()
            if period:
                next_at += period
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()
        return True

    def take(self, timeout: float = 1.0) -> Optional[np.ndarray]:
        """The newest unseen frame, or None if none arrived within ``timeout``."""
        with self._cond:
            if self._frame is None:
                self._cond.wait_for(lambda: self._frame is not None or self._stop.is_set() or self.ended, timeout)
            frame, self._frame = self._frame, None
            connection = self._frame_connection
        if frame is not None:
            if self._taken_connection and connection != self._taken_connection and self.on_reconnect:
                self.on_reconnect()
            self._taken_connection = connection
        return frame
