"""The agent as a user runs it: `edge-agent run` in its own process, real uvicorn, real HTTP."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

TOKEN = "test-token-123"
ROUTES = {"/api/health", "/api/cameras", "/api/cameras/{name}/latest.jpg", "/api/cameras/{name}/stream.mjpg", "/api/stats", "/api/registry", "/metrics"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningAgent:
    def __init__(self, source: str, models_dir: Path, data_dir: Path, config: Path | None = None, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "EDGE_AGENT_MODELS": str(models_dir), "EDGE_AGENT_DATA_DIR": str(data_dir), "EDGE_AGENT_TOKEN": TOKEN}
        cmd = [sys.executable, "-m", "edge_agent"] + (["--config", str(config)] if config else [])
        cmd += ["run", "--source", source, *(extra or ["--camera", "demo"]), "--port", str(self.port)]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0, need_frame: bool = True) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited: {self.output()}")
            try:
                r = httpx.get(self.url + "/api/stats", headers=self.auth, timeout=2)
                if r.status_code == 200 and (not need_frame or all(c["frames_out"] > 0 for c in r.json()["cameras"].values())):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"agent not ready: {self.output()}")

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {TOKEN}"}

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def agent(shared_dir, models_dir, tmp_path_factory):
    running = RunningAgent(str(shared_dir / "video/short_hamilton_clip.mp4"), models_dir, tmp_path_factory.mktemp("data"))
    running.wait_ready()
    yield running
    running.stop()


def test_health_is_open_everything_else_needs_the_token(agent):
    assert httpx.get(agent.url + "/api/health").status_code == 200
    for path in ("/api/stats", "/api/registry", "/metrics", "/api/cameras/demo/latest.jpg", "/api/cameras/demo/stream.mjpg", "/api/cameras"):
        assert httpx.get(agent.url + path).status_code == 401, path
        assert httpx.get(agent.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path


def test_latest_jpeg_and_stats(agent):
    r = httpx.get(agent.url + "/api/cameras/demo/latest.jpg", headers=agent.auth)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 640, 3)
    assert httpx.get(agent.url + "/api/cameras/nope/latest.jpg", headers=agent.auth).status_code == 404
    stats = httpx.get(agent.url + "/api/stats", headers=agent.auth).json()
    cam = stats["cameras"]["demo"]
    assert cam["frames_out"] > 0 and cam["faces_seen"] > 0 and cam["faces_anonymized"] > 0
    assert {"detect", "recognise", "anonymize", "encode"} <= set(cam["latency_ms"])
    registry = httpx.get(agent.url + "/api/registry", headers=agent.auth).json()
    assert registry["count"] == 0 and registry["model_signature"].startswith("mobilefacenet-")
    assert "embeddings" not in json.dumps(registry)


def test_mjpeg_stream_bytes(agent):
    with httpx.stream("GET", agent.url + "/api/cameras/demo/stream.mjpg?max_frames=3", headers=agent.auth, timeout=20) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=frame")
        body = r.read()
    parts = body.split(b"--frame\r\n")[1:]
    assert len(parts) == 3
    for part in parts:
        head, _, jpeg = part.partition(b"\r\n\r\n")
        assert b"Content-Type: image/jpeg" in head
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        assert jpeg[:2] == b"\xff\xd8" and len(jpeg.rstrip(b"\r\n")) >= length - 2


def test_metrics_prometheus_text(agent):
    text = httpx.get(agent.url + "/metrics", headers=agent.auth).text
    assert re.search(r'^edge_agent_frames_out_total\{camera="demo"\} [1-9]\d*$', text, re.M)
    assert re.search(r'^edge_agent_stage_latency_ms\{camera="demo",stage="detect"\} [\d.]+$', text, re.M)
    assert "# TYPE edge_agent_faces_anonymized_total counter" in text


def test_no_route_can_return_a_raw_frame(agent):
    spec = httpx.get(agent.url + "/api/openapi.json", headers=agent.auth).json()
    assert set(spec["paths"]) == ROUTES | {"/api/session"}  # the session route returns a cookie, no pixels
    assert httpx.get(agent.url + "/docs").status_code == 404


def _still_clip(path: Path, photo_path: Path) -> np.ndarray:
    """A clip whose every frame is the same photo (MJPEG: intra-only, so every decoded frame is
    identical): whatever frame the page shows, it must equal the served JPEG."""
    photo = cv2.imread(str(photo_path))
    frame = np.full((360, 640, 3), 90, np.uint8)
    scale = min(640 / photo.shape[1], 360 / photo.shape[0])
    small = cv2.resize(photo, (int(photo.shape[1] * scale), int(photo.shape[0] * scale)))
    frame[: small.shape[0], : small.shape[1]] = small
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 360))
    for _ in range(20):
        writer.write(frame)
    writer.release()
    return frame


def _find(page: np.ndarray, template: np.ndarray) -> tuple[float, tuple[int, int], float]:
    """Best normalised correlation of ``template`` anywhere in ``page`` over display scales."""
    best = (-1.0, (0, 0), 0.0)
    gray_page = cv2.cvtColor(page, cv2.COLOR_BGR2GRAY)
    gray = cv2.cvtColor(template, cv2.COLOR_BGR2GRAY)
    for scale in np.arange(0.40, 1.01, 0.01):
        t = cv2.resize(gray, (int(gray.shape[1] * scale), int(gray.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        if t.shape[0] > gray_page.shape[0] or t.shape[1] > gray_page.shape[1]:
            continue
        _, score, _, where = cv2.minMaxLoc(cv2.matchTemplate(gray_page, t, cv2.TM_CCOEFF_NORMED))
        if score > best[0]:
            best = (float(score), where, float(scale))
    return best


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_page_renders_the_stream_in_headless_chromium(shared_dir, models_dir, tmp_path):
    """Two cameras in a grid beside health, sync and the counters' legend; each rendered image is
    the served filtered JPEG (a still clip, so the frame the browser shows is known)."""
    examples = shared_dir / "faces/face_recognition/examples"
    clip, other = tmp_path / "door.avi", tmp_path / "hall.avi"
    _still_clip(clip, examples / "two_people.jpg")
    _still_clip(other, examples / "biden.jpg")  # a different picture per camera: each must show its own
    config = tmp_path / "agent.yaml"
    config.write_text("pipeline: {frame_timeout_ms: 20000}\n")  # no fully redacted frame on a loaded machine
    agent = RunningAgent(str(clip), models_dir, tmp_path / "data", config, extra=["--camera", "door", "--source", str(other), "--camera", "hall"])
    try:
        agent.wait_ready(90, need_frame=False)
        deadline = time.time() + 60
        while not all(c["frames_out"] > 0 for c in httpx.get(agent.url + "/api/stats", headers=agent.auth).json()["cameras"].values()):
            assert time.time() < deadline, "no frame from both cameras"
            time.sleep(0.3)
        served = {name: cv2.imdecode(np.frombuffer(httpx.get(f"{agent.url}/api/cameras/{name}/latest.jpg", headers=agent.auth).content, np.uint8), cv2.IMREAD_COLOR)
                  for name in ("door", "hall")}
        shot = tmp_path / "page.png"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,900"]
        url = f"{agent.url}/#token={TOKEN}"
        dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
        for name in ("door", "hall"):
            assert f'id="stream-{name}"' in dom and f"/api/cameras/{name}/stream.mjpg" in dom
        assert "recognition on" in dom and "off: local registry" in dom
        assert re.search(r'id="health" class="badge (ok|warn)">(ok|degraded)<', dom), "health badge"
        assert "<dt>replaced</dt>" in dom and "so replaced can exceed detected" in dom
        subprocess.run(["chromium", *flags, "--virtual-time-budget=5000", f"--screenshot={shot}", url], capture_output=True, timeout=90)
        page = cv2.imread(str(shot))
        assert page is not None
        found = {name: _find(page, frame) for name, frame in served.items()}
        for name, (score, _, _) in found.items():
            assert score > 0.9, f"camera {name}: the served frame is not on the page (best match {score:.2f})"
        (door_score, door_at, door_scale), (hall_score, hall_at, _) = found["door"], found["hall"]
        # A grid: side by side, not stacked, and the status panel to their right.
        assert abs(door_at[1] - hall_at[1]) < 5 and abs(door_at[0] - hall_at[0]) > 640 * door_scale * 0.9, found
    finally:
        agent.stop()
