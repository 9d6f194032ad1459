"""The service's first start as systemd sees it: READY=1 only once every camera has published a
filtered frame (or failed to open), and an agent with no camera stays up, says why it is not
healthy, and tells the user how to add one."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.test_api import TOKEN, free_port
from tests.test_systemd import Listener

ROOT = Path(__file__).resolve().parent.parent


def _start(tmp_path: Path, models_dir: Path, *args: str, config: str = "") -> tuple[subprocess.Popen, str, Listener]:
    sock = str(tmp_path / "notify.sock")
    listener = Listener(sock)
    port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config or "cameras: {}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGE_AGENT_MODELS": str(models_dir), "EDGE_AGENT_DATA_DIR": str(tmp_path / "data"),
           "EDGE_AGENT_TOKEN": TOKEN, "NOTIFY_SOCKET": sock}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(cfg), "--port", str(port), *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc, f"http://127.0.0.1:{port}", listener


def _ready(proc: subprocess.Popen, listener: Listener, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            proc.log.seek(0)
            raise AssertionError(f"agent exited {proc.returncode}: {proc.log.read().decode(errors='replace')}")
        for message in listener.drain(0.2):
            if message.startswith("READY=1"):
                return message
    raise AssertionError("no READY=1")


def _stop(proc: subprocess.Popen, listener: Listener) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    listener.close()


def test_ready_comes_after_the_first_filtered_frame(shared_dir, models_dir, tmp_path):
    proc, url, listener = _start(tmp_path, models_dir, "--source", str(shared_dir / "video/short_hamilton_clip.mp4"), "--camera", "demo")
    try:
        message = _ready(proc, listener)
        # Asked at once: a READY sent before the first frame would find no frame to serve (503).
        r = httpx.get(url + "/api/cameras/demo/latest.jpg", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
        assert "STATUS=filtering 1 camera(s)" in message
    finally:
        _stop(proc, listener)


def test_without_a_camera_the_agent_stays_up_and_says_how_to_add_one(models_dir, tmp_path):
    proc, url, listener = _start(tmp_path, models_dir)
    try:
        message = _ready(proc, listener)
        assert "no camera configured" in message
        health = httpx.get(url + "/api/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "no camera configured"
        time.sleep(1.0)
        assert proc.poll() is None, "the agent must not exit (systemd would restart it into its start limit)"
        page = httpx.get(url + "/", timeout=5).text
        assert "No camera configured" in page and "cameras --check" in page and "systemctl restart edge-agent" in page
    finally:
        _stop(proc, listener)


def test_a_camera_that_is_down_does_not_hold_ready_back(models_dir, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    proc, url, listener = _start(tmp_path, models_dir, "--source", f"rtsp://127.0.0.1:{dead}/x", "--camera", "door")
    try:
        message = _ready(proc, listener)
        assert "no frame yet from door" in message
    finally:
        _stop(proc, listener)


def test_the_example_token_is_refused_at_start(models_dir, tmp_path):
    token = "change-me"  # systemd/edge-agent.env's placeholder
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGE_AGENT_MODELS": str(models_dir), "EDGE_AGENT_TOKEN": token}
    env.pop("EDGE_AGENT_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--source", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "edge-agent: error:" in result.stderr and "placeholder" in result.stderr
    assert token not in result.stdout
