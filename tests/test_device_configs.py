"""Every device config validates with the agent's own loader and says what a deployer needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_agent.config import Config, ConfigError, load_config
from edge_agent.models.files import ModelFileError, resolve

CONFIG_DIR = Path(__file__).resolve().parent.parent / "device_configs"
EXPECTED = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "x86-cpu", "x86-cuda"}
FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_five_device_kinds_are_there():
    assert {p.stem for p in FILES} >= EXPECTED


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_config_validates(path):
    config = load_config(path, env={})
    assert isinstance(config, Config)
    # no secret in a committed file: the token comes from EDGE_AGENT_TOKEN
    assert config.api.token is None
    raw = yaml.safe_load(path.read_text())
    # MQTT settings are there but off until the site fills them; the password never is
    assert config.mqtt is not None and config.mqtt.enabled is False
    assert "password" not in raw["mqtt"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_environment_overrides_apply(path, tmp_path):
    env = {"EDGE_AGENT_MODELS": str(tmp_path), "EDGE_AGENT_DATA_DIR": str(tmp_path / "d"), "EDGE_AGENT_TOKEN": "t", "EDGE_AGENT_MQTT_PASSWORD": "p"}
    config = load_config(path, env=env)
    assert config.models.dir == tmp_path and config.data_dir == tmp_path / "d" and config.api.token == "t"
    assert config.mqtt.password == "p" and config.mqtt.user


@pytest.mark.parametrize("path", [p for p in FILES if p.stem.startswith("jetson")], ids=lambda p: p.stem)
def test_jetson_configs_use_gpu_and_hardware_decode(path):
    config = load_config(path, env={})
    assert config.models.detector.backend == "tensorrt"
    assert config.models.embedder.backend == "tensorrt"
    assert config.cameras, "a Jetson config shows the capture pipeline"
    for camera in config.cameras.values():
        assert isinstance(camera.source, str) and "nvv4l2decoder" in camera.source and "appsink" in camera.source
        assert camera.fps_cap > 0
        assert not camera.enabled, "example cameras ship disabled"


def test_x86_cpu_runs_without_a_gpu_and_without_cameras():
    config = load_config(CONFIG_DIR / "x86-cpu.yaml", env={})
    assert config.models.detector.backend == "cpu" and config.models.embedder.backend == "cpu"
    assert config.cameras == {}
    assert not config.models.dir.is_absolute() and not config.data_dir.is_absolute()


def test_x86_cpu_models_resolve(models_dir):
    config = load_config(CONFIG_DIR / "x86-cpu.yaml", env={"EDGE_AGENT_MODELS": str(models_dir)})
    for name in (config.models.detector.file, config.models.embedder.file):
        if not (models_dir / name).exists():
            pytest.skip(f"{name} not built yet (python -m model_export quantize)")
        try:
            resolve(models_dir, name)
        except ModelFileError as exc:  # pragma: no cover - the message is the point
            pytest.fail(str(exc))


def test_a_typo_is_rejected_by_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIG_DIR / "x86-cpu.yaml").read_text().replace("max_side:", "max_sid:"))
    with pytest.raises(ConfigError, match="max_sid"):
        load_config(bad, env={})
