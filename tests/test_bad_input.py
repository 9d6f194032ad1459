"""Bad input of every kind gets a clear error, loses nothing, and never takes the service down."""

from __future__ import annotations

import socket

import httpx
import pytest

from edge_agent.cli import main
from edge_agent.config import ConfigError, load_config
from edge_agent.models.files import ModelFileError, resolve
from edge_agent.registry import Registry
from tests.test_api import RunningAgent


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def env(monkeypatch, models_dir, tmp_path):
    monkeypatch.setenv("EDGE_AGENT_MODELS", str(models_dir))
    monkeypatch.setenv("EDGE_AGENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EDGE_AGENT_CONFIG", raising=False)
    return tmp_path


def test_config_typo_names_the_key(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("recognition:\n  treshold: 0.5\napi:\n  port: 99999\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert "recognition.treshold: unknown key" in str(err.value) and "api.port" in str(err.value)


def test_config_typo_via_cli(env, capsys):
    path = env / "agent.yaml"
    path.write_text("anonymizer:\n  mode: smudge\n")
    code, out = run_cli(capsys, "--config", str(path), "registry", "list")
    assert code == 2 and "anonymizer.mode" in out


@pytest.mark.parametrize("content", ["", "[1, 2", "- a list\n"])
def test_unreadable_or_malformed_config(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    if content == "":
        assert load_config(path, env={}).api.port == 8080  # an empty file means all defaults
        return
    with pytest.raises(ConfigError):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})


def test_wrong_model_file_is_named(tmp_path, models_dir):
    fake = tmp_path / "mobilefacenet.onnx"
    fake.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=str(fake)):
        resolve(tmp_path, "mobilefacenet.onnx")
    with pytest.raises(ModelFileError, match="missing"):
        resolve(tmp_path, "yunet_s_dynamic.onnx")
    (tmp_path / "custom.onnx").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="no pinned checksum"):
        resolve(tmp_path, "custom.onnx")


def test_process_unreadable_input(env, capsys):
    bad = env / "notes.jpg"
    bad.write_text("this is not an image")
    code, out = run_cli(capsys, "process", str(bad), "-o", str(env / "out.jpg"))
    assert code == 2 and "not a readable image" in out
    code, out = run_cli(capsys, "process", str(env / "absent.mp4"), "-o", str(env / "out.mp4"))
    assert code == 2 and "does not exist" in out
    assert not (env / "out.jpg").exists() and not (env / "out.mp4").exists()


def test_registry_refuses_zero_or_two_faces(env, capsys, shared_dir):
    examples = shared_dir / "faces/face_recognition/examples"
    no_face = shared_dir / "faces/misc/astronaut.png"
    code, out = run_cli(capsys, "registry", "add", "--name", "pair", str(examples / "two_people.jpg"))
    assert code == 2 and "found 2 faces" in out
    blank = env / "blank.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    code, out = run_cli(capsys, "registry", "add", "--name", "nobody", str(blank))
    assert code == 2 and "found 0 faces" in out
    code, out = run_cli(capsys, "registry", "add", "--name", "mixed", str(examples / "obama.jpg"), str(examples / "biden.jpg"))
    assert code == 2 and "same person" in out
    registry = Registry(env / "data" / "registry.db")
    assert registry.count() == 0  # nothing half-registered
    assert no_face.is_file()
    code, out = run_cli(capsys, "registry", "remove", "nobody")
    assert code == 2 and "no registered person" in out


def test_registry_add_list_remove(env, capsys, shared_dir):
    examples = shared_dir / "faces/face_recognition/examples"
    code, out = run_cli(capsys, "registry", "add", "--name", "obama", str(examples / "obama.jpg"), str(examples / "obama2.jpg"))
    assert code == 0, out
    stored = Registry(env / "data" / "registry.db").find("obama").embeddings
    assert f"{len(stored)} stored" in out and len(stored) > 2  # camera-scale templates, several per photo
    code, out = run_cli(capsys, "registry", "list")
    assert code == 0 and f"obama\t{len(stored)} template(s)" in out
    assert run_cli(capsys, "registry", "remove", "obama")[0] == 0
    assert Registry(env / "data" / "registry.db").count() == 0


def test_camera_url_that_does_not_answer_keeps_the_service_up(models_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # closed again: nothing listens there
    agent = RunningAgent(f"rtsp://127.0.0.1:{dead_port}/stream", models_dir, tmp_path / "data")
    try:
        agent.wait_ready(need_frame=False)
        health = httpx.get(agent.url + "/api/health")
        assert health.status_code == 503 and health.json()["cameras"]["demo"]["connected"] is False
        assert "cannot open source" in health.json()["cameras"]["demo"]["error"]
        r = httpx.get(agent.url + "/api/cameras/demo/latest.jpg", headers=agent.auth)
        assert r.status_code == 503
        assert agent.proc.poll() is None
    finally:
        agent.stop()


def test_a_camera_name_without_a_source_is_a_clear_error(env, capsys):
    code, out = run_cli(capsys, "run", "--camera", "door")
    assert code == 2 and "give a --source for each --camera" in out
