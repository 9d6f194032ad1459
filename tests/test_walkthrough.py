"""The README walk-through, step by step, as a new user types it (each command its own process):
quick start (`make run`'s command), registry, process, admin + device over a real Mosquitto
broker, and install.sh into a scratch root."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx
import yaml

from tests.mqtt_broker import broker  # noqa: F401  (fixture)
from tests.test_api import free_port

ROOT = Path(__file__).resolve().parent.parent
DEVICE_CONFIG = ROOT / "device_configs" / "x86-cpu.yaml"  # what `make run` passes


def _env(tmp_path: Path, models_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_AGENT_CONFIG", "EDGE_AGENT_TOKEN", "EDGE_ADMIN_HOME", "XDG_DATA_HOME")}
    return {**env, "PYTHONPATH": str(ROOT), "EDGE_AGENT_MODELS": str(models_dir), "EDGE_AGENT_DATA_DIR": str(tmp_path / "data"),
            "HOME": str(tmp_path / "home"), **extra}


def _cli(env: dict, *args: str, module: str = "edge_agent", ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result


class Agent:
    """`edge-agent run` in the background; the page address is read from its stdout."""

    def __init__(self, env: dict, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_agent", *args, "--port", str(self.port)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"live anonymized view at (http://127\.0\.0\.1:\d+)/#token=(\S+)", line)
        assert match, f"no page address printed: {line!r}"
        self.url, self.token = match.group(1), match.group(2)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    def wait(self, check, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the agent exited"
            try:
                value = check()
                if value:
                    return value
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("timed out")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def test_readme_walkthrough(shared_dir, models_dir, broker, tmp_path):  # noqa: F811
    clip = shared_dir / "video/short_hamilton_clip.mp4"
    photos = shared_dir / "faces/face_recognition/examples"
    env = _env(tmp_path, models_dir)

    # Quick start: `make run` = edge-agent --config device_configs/x86-cpu.yaml run --source CLIP --camera demo
    agent = Agent(env, "--config", str(DEVICE_CONFIG), "run", "--source", str(clip), "--camera", "demo")
    try:
        agent.wait(lambda: agent.get("/api/stats").json()["cameras"]["demo"]["frames_out"] > 0)
        assert httpx.get(agent.url + "/api/health").status_code == 200
        # Register the people who may be shown; the running agent picks it up without a restart.
        added = _cli(env, "registry", "add", "--config", str(DEVICE_CONFIG), "--name", "Lin-Manuel Miranda", str(photos / "lin-manuel-miranda.png"))
        assert "registered 'Lin-Manuel Miranda'" in added.stdout
        assert "Lin-Manuel Miranda\t6 template(s)" in _cli(env, "registry", "list").stdout
        agent.wait(lambda: agent.get("/api/registry").json()["count"] == 1, timeout=10)
    finally:
        assert agent.stop() in (0, 130)

    # Anonymize a file offline with the same pipeline.
    out = tmp_path / "anonymized.mp4"
    _cli(env, "--config", str(DEVICE_CONFIG), "process", str(clip), "-o", str(out), "--max-frames", "30", "-q")
    with av.open(str(out)) as container:
        assert {s.type: s.codec_context.name for s in container.streams} == {"video": "h264", "audio": "aac"}
    assert "removed 'Lin-Manuel Miranda'" in _cli(env, "registry", "remove", "Lin-Manuel Miranda").stdout

    # The site admin: home from EDGE_ADMIN_HOME for every command, a site file from the example.
    admin_env = _env(tmp_path, models_dir, EDGE_ADMIN_HOME=str(tmp_path / "admin"))
    site = yaml.safe_load((ROOT / "docs/edge-admin.example.yaml").read_text())
    site["models"] = str(models_dir)
    site["mqtt"] = {"host": broker.host, "port": broker.port, "site": "walk", "topic_prefix": "edge-agent"}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    assert "public key:" in _cli(admin_env, "keygen", module="edge_agent.sync.admin_cli").stdout

    # The device: the x86-cpu config with its mqtt: block turned on; the key relative to data_dir.
    device = yaml.safe_load(DEVICE_CONFIG.read_text())
    device["mqtt"].update(enabled=True, host=broker.host, port=broker.port, site="walk", device_id="cam1", user=None, reconnect_min_s=1)
    device_file = tmp_path / "device.yaml"
    device_file.write_text(yaml.safe_dump(device))
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "admin_ed25519.pub").write_bytes((tmp_path / "admin" / "admin_ed25519.pub").read_bytes())
    agent = Agent(env, "run", "--config", str(device_file), "--source", str(clip), "--camera", "demo")
    try:
        agent.wait(lambda: agent.get("/api/stats").json()["sync_status"]["connected"])
        enrolled = _cli(admin_env, "enroll", "--config", str(site_file), "--name", "Alex Lacamoire", str(photos / "alex-lacamoire.png"),
                        module="edge_agent.sync.admin_cli")
        assert "enrolled 'Alex Lacamoire'" in enrolled.stdout
        agent.wait(lambda: agent.get("/api/registry").json()["count"] == 1, timeout=20)
        refused = _cli(env, "--config", str(device_file), "registry", "add", "--name", "Local", str(photos / "obama.jpg"), ok=False)
        assert refused.returncode == 2 and "edge-admin enroll" in refused.stderr
        devices = _cli(admin_env, "devices", "--config", str(site_file), "--wait", "1.5", module="edge_agent.sync.admin_cli").stdout
        row = next(line for line in devices.splitlines() if line.startswith("cam1"))
        assert " online " in row and " yes " in row, devices
    finally:
        assert agent.stop() in (0, 130)

    # Install the service into a scratch root: it stops at the next step, with no camera yet.
    staged = subprocess.run(["bash", str(ROOT / "systemd/install.sh")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DESTDIR": str(tmp_path / "root"), "DEVICE": "x86-cpu", "MODELS": str(tmp_path / "none")})
    assert staged.returncode == 0 and "next: sudoedit /etc/edge-agent/config.yaml" in staged.stdout
