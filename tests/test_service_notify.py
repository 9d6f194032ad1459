"""`edge-agent run` under a real NOTIFY_SOCKET: READY once the pipeline runs, WATCHDOG pings after."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from tests.test_api import free_port


def test_run_sends_ready_and_watchdog_over_a_unix_socket(shared_dir, models_dir, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(1.0)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "EDGE_AGENT_MODELS": str(models_dir),
           "EDGE_AGENT_DATA_DIR": str(tmp_path / "data"), "EDGE_AGENT_TOKEN": "t"}
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--source", str(shared_dir / "video/short_hamilton_clip.mp4"),
                             "--port", str(free_port())], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    messages: list[str] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and sum("WATCHDOG=1" in m for m in messages) < 2:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                assert proc.poll() is None, proc.stdout.read().decode()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
        sock.close()
    ready = [i for i, m in enumerate(messages) if "READY=1" in m]
    pings = [i for i, m in enumerate(messages) if "WATCHDOG=1" in m]
    assert len(ready) == 1 and len(pings) >= 2 and ready[0] < pings[0], messages
    assert "#token=" not in out  # a configured token is never printed
