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
    def __init__(self, source: str, models_dir: Path, data_dir: Path, config: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "EDGE_AGENT_MODELS": str(models_dir), "EDGE_AGENT_DATA_DIR": str(data_dir), "EDGE_AGENT_TOKEN": TOKEN}
        cmd = [sys.executable, "-m", "edge_agent"] + (["--config", str(config)] if config else [])
        cmd += ["run", "--source", source, "--camera", "demo", "--port", str(self.port)]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0, need_frame: bool = True) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited: {self.output()}")
            try:
                r = httpx.get(self.url + "/api/stats", headers=self.auth, timeout=2)
                if r.status_code == 200 and (not need_frame or r.json()["cameras"]["demo"]["frames_out"] > 0):
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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_page_renders_the_stream_in_headless_chromium(agent, tmp_path):
    shot = tmp_path / "page.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,700"]
    url = f"{agent.url}/#token={TOKEN}"
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=4000", "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    assert 'id="stream-demo"' in dom and "/api/cameras/demo/stream.mjpg" in dom
    assert "recognition on" in dom
    subprocess.run(["chromium", *flags, "--virtual-time-budget=4000", f"--screenshot={shot}", url], capture_output=True, timeout=90)
    page = cv2.imread(str(shot))
    assert page is not None
    # The stream image sits below the header at the left; video pixels vary, an empty box does not.
    region = page[60:300, 20:500]
    assert region.std() > 4, "no video visible on the page"  # an empty box is ~0; the clip's darkest frames ~8
