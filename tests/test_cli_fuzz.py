"""A bounded fuzz of every subcommand's arguments (hypothesis): whatever the argv, `edge-agent`
answers with exit 0 or a clear exit-2 error, never a traceback.

Run in-process through ``edge_agent.cli.main``. The model directory is empty, so no model is
ever loaded: a well-formed command ends at the missing-model error, which is a clear error too.
One fake: host-name resolution is numeric-only (a fuzzed --host must not reach a DNS server;
this machine has loopback only)."""

from __future__ import annotations

import contextlib
import io
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import http_server
from edge_agent.cli import main

COMMANDS = {
    "run": ["--source", "--camera", "--host", "--port"],
    "process": ["-o", "--output", "--max-frames", "--stats-json", "-q", "--quiet"],
    "registry add": ["--name"],
    "registry list": [],
    "registry remove": [],
}
SCALARS = ["", "0", "1", "-1", "-3", "65536", "99999", "1e9", "nan", "-", "--", "x y", "é", "127.0.0.1", "::1", "0.0.0.0",
           "localhost", "rtsp://127.0.0.1:1/none", "front door", "a" * 300]


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_dir) -> list[str]:
    """Paths of every kind a user might pass: real media, missing, a directory, binary, configs."""
    folder = tmp_path_factory.mktemp("fuzz-files")
    (folder / "binary.bin").write_bytes(bytes(range(256)))
    (folder / "good.yaml").write_text("log_level: warning\n")
    (folder / "typo.yaml").write_text("api:\n  prot: 1\n")
    (folder / "list.yaml").write_text("- 1\n")
    (folder / "mqtt.yaml").write_text("mqtt:\n  enabled: true\n  admin_public_key: /nonexistent.pem\n")
    (folder / "tls.yaml").write_text(f"api:\n  tls_cert: {folder / 'binary.bin'}\n  tls_key: {folder / 'binary.bin'}\n")
    # Registries that cannot be used: under a file, a corrupt database, a directory in its place.
    (folder / "corrupt").mkdir()
    (folder / "corrupt/registry.db").write_bytes(b"not a database" * 100)
    (folder / "dirdb/registry.db").mkdir(parents=True)
    for name, data_dir in (("under-file", folder / "binary.bin/sub"), ("corrupt-db", folder / "corrupt"), ("dir-db", folder / "dirdb")):
        (folder / f"{name}.yaml").write_text(f"data_dir: {data_dir}\n")
    examples = shared_dir / "faces/face_recognition/examples"
    return [str(p) for p in (
        examples / "obama.jpg", examples / "two_people.jpg", shared_dir / "video/short_hamilton_clip.mp4", folder,
        folder / "missing.jpg", folder / "binary.bin", folder / "good.yaml", folder / "typo.yaml", folder / "list.yaml",
        folder / "mqtt.yaml", folder / "tls.yaml", folder / "under-file.yaml", folder / "corrupt-db.yaml", folder / "dir-db.yaml", folder / "out.jpg", folder / "out.mp4", folder / "out.xyz",
        folder / "sub/dir/out.png", folder / "stats.json", folder / "nodir/stats.json", Path("/dev/null"), Path("/proc/self"),
    )]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    (tmp_path / "no-models").mkdir()
    monkeypatch.setenv("EDGE_AGENT_MODELS", str(tmp_path / "no-models"))
    monkeypatch.delenv("EDGE_AGENT_DATA_DIR", raising=False)  # the fuzzed configs' data_dir counts
    monkeypatch.delenv("EDGE_AGENT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # relative fuzzed paths (and the default data dir) land here, never in the repository
    real = socket.getaddrinfo

    def numeric_only(host, *args, **kwargs):
        flags = kwargs.pop("flags", 0)
        return real("127.0.0.1" if host == "localhost" else host, *args, flags=flags | socket.AI_NUMERICHOST, **kwargs)

    monkeypatch.setattr(http_server.socket, "getaddrinfo", numeric_only)
    return tmp_path


def run_cli(argv: list[str]) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
            code = exc.code
    assert code in (0, 2), (argv, code, err.getvalue())
    assert "Traceback" not in err.getvalue()
    if code == 2:
        assert "error:" in err.getvalue(), (argv, err.getvalue())
    return code


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_argv_gives_a_traceback(command, files, sandbox):
    options = COMMANDS[command] + ["--config", "--help"]
    photo, clip = files[0], files[2]
    valid = {"run": ["--source", clip, "--port", "0"], "process": [photo, "-o", "out.jpg"], "registry add": ["--name", "x", photo],
             "registry list": [], "registry remove": ["x"]}
    token = st.one_of(st.sampled_from(options), st.sampled_from(files), st.sampled_from(SCALARS), st.text(max_size=12))
    configs = [f for f in files if f.endswith(".yaml")]
    global_options = st.one_of(st.just([]), st.lists(st.sampled_from(["--config", *files]), max_size=2),
                               st.sampled_from(configs).map(lambda c: ["--config", c]))

    @settings(max_examples=120, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(prefix=global_options, skeleton=st.booleans(), args=st.lists(token, max_size=7))
    def fuzz(prefix: list[str], skeleton: bool, args: list[str]) -> None:
        # Half the cases start from a well-formed command, so the fuzz gets past argparse.
        run_cli(prefix + command.split() + (valid[command] if skeleton else []) + args)

    fuzz()
