"""What the agent leaves on disk: the consent registry readable by its owner only, whatever the
umask, and no onnxruntime telemetry under the user's home."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_agent.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_registry_files_are_private_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        registry = Registry(tmp_path / "open" / "data" / "registry.db")
        vector = np.ones((1, 128), np.float32) / np.sqrt(128)
        registry.upsert_person("alice", vector, "sig")  # the WAL now holds an embedding
        db = registry.path
        wal, shm = db.with_name("registry.db-wal"), db.with_name("registry.db-shm")
        assert wal.exists() and shm.exists()
        assert mode(db.parent) == 0o700
        assert (mode(db), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
        registry.close()
    finally:
        os.umask(old)


def test_an_existing_readable_registry_is_tightened(tmp_path):
    data = tmp_path / "data"
    Registry(data / "registry.db").close()
    os.chmod(data, 0o755)
    os.chmod(data / "registry.db", 0o644)  # as the CLI used to make it
    Registry(data / "registry.db").close()
    assert mode(data) == 0o700 and mode(data / "registry.db") == 0o600


def test_cli_registry_under_umask_0(tmp_path, models_dir):
    env = {**os.environ, "EDGE_AGENT_DATA_DIR": str(tmp_path / "data"), "EDGE_AGENT_MODELS": str(models_dir), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "edge_agent", "registry", "list"], env=env, capture_output=True, text=True,
                            timeout=60, preexec_fn=lambda: os.umask(0))
    assert result.returncode == 0, result.stderr
    assert mode(tmp_path / "data") == 0o700 and mode(tmp_path / "data/registry.db") == 0o600


def test_no_onnxruntime_telemetry_in_a_fresh_home(tmp_path, models_dir, shared_dir):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "EDGE_AGENT_DATA_DIR": str(tmp_path / "data"), "EDGE_AGENT_MODELS": str(models_dir),
           "PYTHONPATH": str(REPO)}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    photo = shared_dir / "faces/face_recognition/examples/obama.jpg"
    result = subprocess.run([sys.executable, "-m", "edge_agent", "process", str(photo), "-o", str(tmp_path / "out.jpg"), "-q"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.jpg").is_file()  # the models did load and run
    assert not (home / ".cache" / "Microsoft").exists(), sorted(str(p) for p in home.rglob("*"))
