"""A live camera on a free loopback port: MJPEG over HTTP, one scene per connection.

Connection k streams ``scenes[k]`` at ``fps`` and then drops the client, so a reader sees the
camera go away and come back showing the next scene (the last scene repeats forever)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = b"frame"


class MjpegCamera:
    def __init__(self, scenes: list[list[np.ndarray]], fps: float = 15.0) -> None:
        self.scenes = [[cv2.imencode(".jpg", f, [int(cv2.IMWRITE_JPEG_QUALITY), 95])[1].tobytes() for f in s] for s in scenes]
        self.fps = fps
        self.connections = 0
        self.sent: list[int] = []  # frames sent per connection
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                k = min(camera.connections, len(camera.scenes) - 1)
                last = camera.connections >= len(camera.scenes) - 1
                camera.connections += 1
                camera.sent.append(0)
                index = len(camera.sent) - 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY.decode()}")
                self.end_headers()
                frames = camera.scenes[k]
                i = 0
                try:
                    while last or i < len(frames):
                        jpeg = frames[i % len(frames)]
                        self.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                        self.wfile.flush()
                        camera.sent[index] += 1
                        i += 1
                        time.sleep(1.0 / camera.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "MjpegCamera":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
