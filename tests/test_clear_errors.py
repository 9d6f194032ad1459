"""Each traceback or misleading message a new user met is now one clear line and exit 2, given
before any work: the model directory here is empty, so a check that came after loading the
models would fail with a model error instead of the expected one."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.registry import Registry


@pytest.fixture
def env(monkeypatch, tmp_path):
    (tmp_path / "no-models").mkdir()
    monkeypatch.setenv("EDGE_AGENT_MODELS", str(tmp_path / "no-models"))
    monkeypatch.setenv("EDGE_AGENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EDGE_AGENT_CONFIG", raising=False)
    return tmp_path


@pytest.fixture
def photo(shared_dir) -> Path:
    return shared_dir / "faces/face_recognition/examples/obama.jpg"


def fails_clearly(capsys, args: list[str], expected: str) -> str:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 2, out
    assert "edge-agent: error: " in captured.err and expected in captured.err, captured.err
    assert "Traceback" not in out and "pydantic" not in out and "validation error" not in out.lower(), out
    return out


@contextlib.contextmanager
def read_only_mount(target: Path, source: Path | None = None):
    """A read-only bind mount of ``source`` at ``target`` (or an empty read-only tmpfs): chmod
    does not stop root, a read-only file system does."""
    target.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "--bind", "-o", "ro", str(source), str(target)] if source else ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)]
    if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("needs root and mount(8) for a read-only file system")
    try:
        if source:  # older kernels ignore ro on the first bind: remount to be sure
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True)
        assert not os.access(target, os.W_OK)
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=True)  # something still holds a file there


def test_output_extension_that_cannot_be_written(env, capsys, photo, shared_dir):
    fails_clearly(capsys, ["process", photo, "-o", env / "out.mp4"], "an image is written as an image")
    fails_clearly(capsys, ["process", photo, "-o", env / "i.xyz"], "an image is written as an image")
    fails_clearly(capsys, ["process", shared_dir / "video/short_hamilton_clip.mp4", "-o", env / "frame.jpg"], "a video is written as a video")
    assert not any(env.glob("out.*")) and not (env / "i.xyz").exists()


def test_stats_json_in_a_missing_directory_is_refused_before_the_work(env, capsys, photo):
    fails_clearly(capsys, ["process", photo, "-o", env / "out/g.jpg", "--stats-json", env / "nonexist/dir/s.json"], "does not exist")
    assert not (env / "out/g.jpg").exists()


def test_read_only_output_location(env, capsys, photo):
    with read_only_mount(env / "ro") as ro:
        fails_clearly(capsys, ["process", photo, "-o", ro / "sub/out.jpg"], "cannot create the directory")
        fails_clearly(capsys, ["process", photo, "-o", ro / "out.jpg"], "is not writable")


def test_read_only_registry(env, capsys, monkeypatch):
    source = env / "registry-src"
    Registry(source / "registry.db").close()
    with read_only_mount(env / "ro", source) as ro:
        for data_dir in (ro, ro / "nested"):
            monkeypatch.setenv("EDGE_AGENT_DATA_DIR", str(data_dir))
            fails_clearly(capsys, ["registry", "list"], "cannot use the registry")
            fails_clearly(capsys, ["registry", "add", "--name", "x", env / "photo.jpg"], "cannot use the registry")


def test_missing_admin_public_key(env, capsys):
    config = env / "agent.yaml"
    config.write_text("mqtt:\n  enabled: true\n  admin_public_key: /nonexistent.pem\n")
    fails_clearly(capsys, ["--config", config, "run", "--source", "0", "--port", "0"], "mqtt.admin_public_key: /nonexistent.pem")


@pytest.mark.parametrize("frames", ["0", "-3"])
def test_max_frames_must_be_positive(env, capsys, photo, frames):
    fails_clearly(capsys, ["process", photo, "-o", env / "o.jpg", "--max-frames", frames], "--max-frames must be at least 1")


def test_directory_or_missing_input(env, capsys):
    fails_clearly(capsys, ["process", env, "-o", env / "o.jpg"], "is a directory")
    fails_clearly(capsys, ["process", env / "absent.mp4", "-o", env / "o.mp4"], "does not exist")


def test_binary_config_names_the_file(env, capsys):
    config = env / "agent.yaml"
    config.write_bytes(bytes(range(256)) * 4)
    fails_clearly(capsys, ["--config", config, "registry", "list"], f"config file {config} is not a text")


def test_bad_camera_name_and_port(env, capsys):
    fails_clearly(capsys, ["run", "--source", "0", "--camera", "front door"], "--camera: camera name 'front door' may use letters")
    fails_clearly(capsys, ["run", "--source", "0", "--port", "70000"], "--port:")


def test_busy_port_fails_before_announcing_the_url(env, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = fails_clearly(capsys, ["run", "--source", "0", "--port", port], f"cannot listen on 127.0.0.1:{port}")
    assert "live anonymized view" not in out
