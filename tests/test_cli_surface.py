"""The CLI as a new user meets it: --version, help on every argument, global options after the
subcommand, one default config, --anonymizer, several --source, `cameras [--check]`, bash
completion, and the settings that used to surprise (placeholder token, relative key paths,
local registry edits under sync)."""

from __future__ import annotations

import argparse
import socket
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent import __version__
from edge_agent.cameras import apply_sources
from edge_agent.cli import build_parser, main
from edge_agent.config import Config, ConfigError, load_config
from edge_agent.sync.admin import keygen

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_AGENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EDGE_AGENT_CONFIG", raising=False)
    monkeypatch.delenv("EDGE_AGENT_TOKEN", raising=False)
    return tmp_path


def _walk(parser: argparse.ArgumentParser, path: str = "edge-agent"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, f"{path} {name}")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"edge-agent {__version__}"


def test_every_argument_has_help():
    for path, parser in _walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{path}: {action.option_strings or action.dest} has no help text"


def test_global_options_work_after_the_subcommand(tmp_path):
    parser = build_parser()
    config = tmp_path / "x.yaml"
    after = parser.parse_args(["process", "--config", str(config), "a.jpg", "-o", "b.jpg", "--anonymizer", "blur"])
    before = parser.parse_args(["--config", str(config), "--anonymizer", "blur", "process", "a.jpg", "-o", "b.jpg"])
    for args in (after, before):
        assert args.config == config and args.anonymizer == "blur" and args.input == "a.jpg" and args.output == "b.jpg"
    nested = parser.parse_args(["registry", "list", "--config", str(config)])
    assert nested.config == config
    assert parser.parse_args(["registry", "list"]).config is None


def test_one_default_config_for_every_subcommand(tmp_path, monkeypatch):
    import edge_agent.config as config_module

    system = tmp_path / "etc-config.yaml"
    system.write_text("anonymizer: {mode: solid}\n")
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", system)
    assert load_config(None, env={}).anonymizer.mode == "solid"
    mine = tmp_path / "mine.yaml"
    mine.write_text("anonymizer: {mode: blur}\n")
    assert load_config(None, env={"EDGE_AGENT_CONFIG": str(mine)}).anonymizer.mode == "blur"
    system.unlink()
    assert load_config(None, env={}).anonymizer.mode == "pixelate"


def test_anonymizer_flag_chooses_the_replacement(env, models_dir, shared_dir, monkeypatch):
    """--anonymizer solid fills the stranger's face with one colour; pixelate leaves blocks."""
    monkeypatch.setenv("EDGE_AGENT_MODELS", str(models_dir))
    photo = shared_dir / "faces/face_recognition/examples/obama.jpg"
    from edge_agent.config import DetectorConfig
    from edge_agent.models.files import resolve
    from edge_agent.models.yunet import YuNet

    face = YuNet(resolve(models_dir, DetectorConfig().file)).detect(cv2.imread(str(photo)))[0]
    x1, y1, x2, y2 = (int(v) for v in face.box)
    x, y, w, h = x1, y1, x2 - x1, y2 - y1
    spread = {}
    for mode in ("solid", "pixelate"):
        out = env / f"{mode}.png"
        assert main(["process", str(photo), "-o", str(out), "-q", "--anonymizer", mode]) == 0
        centre = cv2.imread(str(out))[y + h // 4: y + 3 * h // 4, x + w // 4: x + 3 * w // 4]
        spread[mode] = float(centre.std())
    assert spread["solid"] < 2 < spread["pixelate"], spread


def test_several_sources_become_several_cameras():
    config = Config()
    apply_sources(config, ["a.mp4", "rtsp://cam/1", "0"], ["door", "hall"])
    assert list(config.cameras) == ["door", "hall", "camera3"]
    assert config.cameras["camera3"].source == "0"
    apply_sources(config, ["a.mp4"], None)
    assert list(config.cameras) == ["default"]
    with pytest.raises(ValueError, match="must differ"):
        apply_sources(config, ["a.mp4", "b.mp4"], ["x", "x"])


def test_cameras_lists_and_checks(env, shared_dir, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    config = env / "cams.yaml"
    config.write_text(f"cameras:\n  clip: {{source: {shared_dir / 'video/short_hamilton_clip.mp4'}}}\n"
                      f"  door: {{source: 'rtsp://user:pw@127.0.0.1:{dead}/s'}}\n  spare: {{source: 0, enabled: false}}\n")
    assert main(["cameras", "--config", str(config)]) == 0
    listing = capsys.readouterr().out
    assert "clip\tenabled" in listing and "spare\tdisabled" in listing and "pw" not in listing
    assert main(["cameras", "--check", "--timeout", "3", "--config", str(config)]) == 1
    lines = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["clip"].endswith("\tok") and "FAILED" in lines["door"] and "pw" not in lines["door"]
    none = env / "none.yaml"
    none.write_text("cameras: {spare: {source: 0, enabled: false}}\n")
    assert main(["cameras", "--config", str(none)]) == 1
    assert "no camera enabled" in capsys.readouterr().out


def test_bash_completion_completes_subcommands_and_options(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out

    def complete(*words: str) -> set[str]:
        line = " ".join(f"'{w}'" for w in words)
        cmd = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _edge_agent; printf "%s\\n" "${{COMPREPLY[@]}}"'
        return set(subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30).stdout.split())

    assert complete("edge-agent", "re") == {"registry"}
    assert {"add", "list", "remove"} <= complete("edge-agent", "registry", "")
    assert {"--output", "--anonymizer", "--allow-decode-errors"} <= complete("edge-agent", "process", "--")
    assert complete("edge-agent", "cameras", "--ch") == {"--check"}


def test_placeholder_token_is_refused_and_a_short_one_warned_about(tmp_path):
    with pytest.raises(ConfigError, match="api.token.*placeholder"):
        load_config(None, env={"EDGE_AGENT_TOKEN": "change-me"})
    short = load_config(None, env={"EDGE_AGENT_TOKEN": "abc123"})
    assert "6 characters" in short.api.token_warning()
    assert load_config(None, env={"EDGE_AGENT_TOKEN": "x" * 32}).api.token_warning() is None


def test_relative_key_paths_resolve_under_the_data_dir_and_a_missing_one_is_named(tmp_path):
    data = tmp_path / "state"
    config = tmp_path / "agent.yaml"
    config.write_text("mqtt: {enabled: true, admin_public_key: admin_ed25519.pub}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config, env={"EDGE_AGENT_DATA_DIR": str(data)})
    assert f"mqtt.admin_public_key: {data / 'admin_ed25519.pub'} does not exist" in str(err.value)
    keygen(data)
    loaded = load_config(config, env={"EDGE_AGENT_DATA_DIR": str(data)})
    assert loaded.mqtt.admin_public_key == data / "admin_ed25519.pub"


def test_with_sync_on_local_registry_edits_are_refused(env, capsys):
    keygen(env / "data")
    config = env / "agent.yaml"
    config.write_text("mqtt: {enabled: true, admin_public_key: admin_ed25519.pub}\n")
    photo = env / "p.png"
    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    for argv in (["registry", "add", "--name", "Ada", str(photo)], ["registry", "remove", "Ada"]):
        assert main(["--config", str(config), *argv]) == 2
        message = capsys.readouterr().err
        assert "registry sync is on" in message and "edge-admin" in message
    assert main(["--config", str(config), "registry", "list"]) == 0
    assert "0 people" in capsys.readouterr().err
