"""`systemctl stop` as systemd does it: a real SIGTERM to `edge-agent run` under a real
NOTIFY_SOCKET, with an MJPEG client connected and registry sync on a real Mosquitto broker."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import paho.mqtt.client as mqtt
import yaml

from edge_agent.capture import LatestFrameSource
from edge_agent.sync.admin import keygen
from tests.mqtt_broker import broker  # noqa: F401  (fixture)
from tests.test_api import TOKEN, free_port


def retained_state(b, topic: str) -> dict:
    """The retained message on ``topic`` as the broker holds it now."""
    got: dict = {}
    arrived = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{os.getpid()}-{time.monotonic_ns()}")
    client.on_message = lambda c, u, m: (got.update(json.loads(m.payload)), arrived.set())
    client.connect(b.host, b.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    arrived.wait(5)
    client.loop_stop()
    client.disconnect()
    return got


def test_sigterm_stops_cleanly_with_stopping_and_exit_0(shared_dir, models_dir, broker, tmp_path):  # noqa: F811
    keygen(tmp_path)
    site, device = f"stop{os.getpid()}", "cam-stop"
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"mqtt": {
        "enabled": True, "host": broker.host, "port": broker.port, "site": site, "device_id": device,
        "admin_public_key": str(tmp_path / "admin_ed25519.pub"), "reconnect_min_s": 1, "reconnect_max_s": 2}}))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000", "EDGE_AGENT_MODELS": str(models_dir),
           "EDGE_AGENT_DATA_DIR": str(tmp_path / "data"), "EDGE_AGENT_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config", str(config), "run", "--source",
                             str(shared_dir / "video/short_hamilton_clip.mp4"), "--camera", "demo", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    messages: list[str] = []

    def receive(until) -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not until():
            try:
                messages.append(notify.recv(4096).decode())
            except socket.timeout:
                assert proc.poll() is None, proc.stdout.read().decode()

    state_topic = f"edge-agent/{site}/devices/{device}/state"
    stream_bytes = []
    try:
        receive(lambda: any("READY=1" in m for m in messages))
        deadline = time.time() + 20
        while retained_state(broker, state_topic).get("status") != "online":
            assert time.time() < deadline, "sync never came online"
            time.sleep(0.3)

        def watch() -> None:  # a viewer with the stream open while the service stops
            try:
                with httpx.stream("GET", f"http://127.0.0.1:{port}/api/cameras/demo/stream.mjpg",
                                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as r:
                    for chunk in r.iter_bytes():
                        stream_bytes.append(len(chunk))
            except httpx.HTTPError:
                pass

        viewer = threading.Thread(target=watch, daemon=True)
        viewer.start()
        while not stream_bytes:
            time.sleep(0.05)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - start
        receive(lambda: True)
        try:
            while True:
                messages.append(notify.recv(4096).decode())
        except socket.timeout:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=10)[0].decode()
        notify.close()
    print(f"SIGTERM -> exit {code} in {elapsed:.2f} s")
    assert code == 0 and elapsed < 5, (code, elapsed, out)
    assert any(m.startswith("STOPPING=1") for m in messages), messages
    assert "stopped (SIGTERM)" in out and "Traceback" not in out, out
    # The sync closed itself (the Last Will of a dropped connection sets only the status topic).
    assert retained_state(broker, state_topic).get("status") == "offline"
    viewer.join(5)
    assert not viewer.is_alive(), "the open stream was not ended"


def test_a_source_that_comes_back_is_logged(shared_dir, tmp_path, caplog):
    late = tmp_path / "camera.mp4"
    source = LatestFrameSource(str(late), loop=True)
    caplog.set_level(logging.INFO, logger="edge_agent.capture")
    source.start()
    try:
        deadline = time.time() + 5
        while "does not exist" not in caplog.text:
            assert time.time() < deadline
            time.sleep(0.05)
        late.symlink_to(shared_dir / "video/short_hamilton_clip.mp4")  # the camera is back
        assert source.take(timeout=10) is not None
        assert f"source {late} reconnected" in caplog.text
    finally:
        source.stop()
