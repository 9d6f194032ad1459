"""The systemd side: sd_notify over a real unix datagram socket, the health-gated watchdog,
the unit file as systemd-analyze sees it, and the install script (staged with DESTDIR)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from edge_agent.sdnotify import Notifier, Watchdog, watchdog_interval, watchdog_usec

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-agent.service"


class Listener:
    """The systemd side of $NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)

    def drain(self, duration: float) -> list[str]:
        messages, end = [], time.monotonic() + duration
        while time.monotonic() < end:
            try:
                messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return messages

    def next(self, timeout: float = 2.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                return self.sock.recv(4096).decode()
            except socket.timeout:
                continue
        raise AssertionError("no notification arrived")

    def close(self):
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    lst = Listener(path)
    yield path, lst
    lst.close()


class FakePipeline:
    """A camera loop that produces frames until stalled; is_healthy = a frame in the last max_age s."""

    def __init__(self, max_age: float = 0.5):
        self.max_age = max_age
        self.last_frame = 0.0
        self.frames = 0
        self.stalled = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            if not self.stalled.is_set():
                self.last_frame = time.monotonic()
                self.frames += 1
            time.sleep(0.01)

    def is_healthy(self) -> bool:
        return time.monotonic() - self.last_frame < self.max_age


def test_ready_status_stopping_reach_the_socket(listener):
    path, lst = listener
    notifier = Notifier(env={"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("2 cameras running")
    assert lst.next() == "READY=1\nSTATUS=2 cameras running"
    assert notifier.status("filtering")
    assert lst.next() == "STATUS=filtering"
    assert notifier.stopping()
    assert lst.next() == "STOPPING=1"
    notifier.close()


def test_abstract_namespace_socket():
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    lst = Listener(b"\0" + name.encode())
    try:
        notifier = Notifier(env={"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert lst.next() == "WATCHDOG=1"
    finally:
        lst.close()


def test_without_systemd_everything_is_a_quiet_no_op():
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False and notifier.stopping() is False


def test_a_vanished_socket_does_not_raise(tmp_path):
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False


def test_watchdog_usec_is_read_for_this_process_only():
    assert watchdog_usec({"WATCHDOG_USEC": "30000000"}) == 30_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_usec({}) is None
    assert watchdog_interval(env={"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval(default=4.0, env={}) == 4.0


def test_ready_once_the_pipeline_runs_and_pings_stop_when_it_stalls(listener):
    path, lst = listener
    notifier = Notifier(env={"NOTIFY_SOCKET": path})
    pipeline = FakePipeline(max_age=0.5)
    watchdog = Watchdog(notifier, 0.05, pipeline.is_healthy)

    # Start-up as the service does it: nothing is sent before the first frame.
    assert lst.drain(0.1) == []
    pipeline.thread.start()
    deadline = time.monotonic() + 2
    while pipeline.frames == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pipeline.is_healthy()
    notifier.ready()
    watchdog.start()
    try:
        messages = lst.drain(0.5)
        assert messages[0] == "READY=1"
        assert messages.count("READY=1") == 1
        assert messages.count("WATCHDOG=1") >= 3, messages

        pipeline.stalled.set()  # a camera hangs: frames stop
        time.sleep(0.7)  # past max_age: the check turns unhealthy
        lst.drain(0.05)
        stalled = lst.drain(0.5)
        assert "WATCHDOG=1" not in stalled, "pings must stop so that WatchdogSec runs out"
        assert not watchdog.healthy

        pipeline.stalled.clear()  # recovered (e.g. a camera reconnect) before systemd acted
        resumed = lst.drain(0.5)
        assert resumed.count("WATCHDOG=1") >= 2
    finally:
        watchdog.stop()
        pipeline.stop.set()
        notifier.close()


def test_a_failing_health_check_counts_as_unhealthy(listener):
    path, lst = listener
    calls = []

    def broken():
        raise RuntimeError("boom")

    watchdog = Watchdog(Notifier(env={"NOTIFY_SOCKET": path}), 0.05, broken, on_unhealthy=lambda: calls.append(1))
    assert watchdog.check() is False
    assert watchdog.check() is False
    assert calls == [1], "on_unhealthy fires once per transition"
    assert all(m.startswith("STATUS=") for m in lst.drain(0.1))


def test_watchdog_without_interval_does_not_start(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    watchdog = Watchdog(Notifier(env={}), None, lambda: True)
    watchdog.start()
    assert watchdog._thread is None
    with pytest.raises(ValueError):
        Watchdog(Notifier(env={}), 0, lambda: True)


# ---------------------------------------------------------------- the unit file
def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_has_the_required_settings():
    s = _unit_settings()
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["on-failure"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["User"] == ["edge-agent"]
    assert s["StateDirectory"] == ["edge-agent"]
    assert s["ProtectSystem"] == ["strict"]
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert s[key] == ["yes"], key
    assert s["CapabilityBoundingSet"] == [""], "an empty bounding set: no capabilities at all"
    allowed = " ".join(s["DeviceAllow"])
    assert "char-video4linux" in allowed and "nvhost" in allowed and "nvidia" in allowed
    assert s["DevicePolicy"] == ["closed"]
    assert s["EnvironmentFile"] == ["/etc/edge-agent/edge-agent.env"]
    assert "PrivateDevices" not in s, "PrivateDevices would hide the cameras and the GPU"


def test_systemd_analyze_verify_prints_no_warning(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify also checks that ExecStart's binary exists: point it at this interpreter instead of
    # the install location; everything else is the file as shipped.
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent/.venv/bin/python", sys.executable))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    problems = [line for line in output.splitlines() if "edge-agent.service" in line or "ignoring" in line.lower() or "warning" in line.lower()]
    assert result.returncode == 0 and not problems, output


def test_systemd_analyze_catches_a_bad_key(tmp_path):
    """The check above would notice a typo: systemd-analyze exits 0 but prints it."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent/.venv/bin/python", sys.executable).replace("Restart=on-failure", "Restart=on-failure\nWatchdogSecs=5"))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "WatchdogSecs" in result.stdout + result.stderr


# ---------------------------------------------------------------- install script
def test_install_script_stages_files_with_safe_modes(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.onnx").write_bytes(b"x")
    env = dict(os.environ, DESTDIR=str(tmp_path / "root"), DEVICE="x86-cpu", PREFIX="/srv/edge", MODELS=str(models))
    result = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"
    unit = (root / "etc/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/srv/edge/.venv/bin/python" in unit
    env_file = root / "etc/edge-agent/edge-agent.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert (root / "etc/edge-agent/config.yaml").read_text() == (ROOT / "device_configs/x86-cpu.yaml").read_text()
    assert (root / "var/lib/edge-agent/models/m.onnx").read_bytes() == b"x"
    # a second run (an update) keeps the operator's secrets and config
    env_file.write_text("EDGE_AGENT_TOKEN=secret\n")
    result = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and env_file.read_text() == "EDGE_AGENT_TOKEN=secret\n"


def test_install_script_rejects_an_unknown_device(tmp_path):
    env = dict(os.environ, DESTDIR=str(tmp_path), DEVICE="toaster")
    result = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and "toaster" in result.stderr


def test_env_example_has_no_real_secret():
    text = (ROOT / "systemd" / "edge-agent.env").read_text()
    assert "EDGE_AGENT_TOKEN=change-me" in text


def test_install_script_ends_with_the_next_step_and_a_real_token(tmp_path):
    """No camera in the copied device config: nothing is started (no restart loop into the start
    limit); the script says what to do next, and the env file holds a random token, not the
    example's placeholder (which the agent refuses)."""
    root = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(root), DEVICE="x86-cpu", PREFIX="/srv/edge", MODELS=str(tmp_path / "none"))
    result = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "not started: no camera enabled" in result.stdout
    assert "next: sudoedit /etc/edge-agent/config.yaml" in result.stdout and "cameras --check" in result.stdout
    tokens = [line.split("=", 1)[1] for line in (root / "etc/edge-agent/edge-agent.env").read_text().splitlines() if line.startswith("EDGE_AGENT_TOKEN=")]
    assert len(tokens) == 1 and len(tokens[0]) == 64 and int(tokens[0], 16) >= 0
    # Once the config enables a camera, the next step is the restart.
    config = root / "etc/edge-agent/config.yaml"
    config.write_text(config.read_text().replace("cameras: {}", "cameras:\n  door: {source: 'rtsp://192.0.2.1/s'}"))
    result = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and "next: sudo systemctl restart edge-agent" in result.stdout, result.stdout
