"""`edge-agent process` as files go: H.264 with the input's audio unchanged, no file under the final
name until it is complete (real SIGINT/SIGTERM/SIGKILL on a real subprocess), and a video
damaged in its middle third reported instead of passing as a short one."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from edge_agent.atomic_output import partial_path
from edge_agent.cli import main
from edge_agent.process import process_file
from edge_agent.service import Models

ROOT = Path(__file__).resolve().parent.parent
CLIP = "video/short_hamilton_clip.mp4"  # H.264 + AAC audio
CORRIDOR = "video/intel_one-by-one-person-detection.mp4"  # 1,394 frames: long enough to interrupt


def _streams(path: Path) -> dict[str, str]:
    with av.open(str(path)) as container:
        return {s.type: s.codec_context.name for s in container.streams}


def _audio_payloads(path: Path, limit: int) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        out = [bytes(p) for p in container.demux(stream) if p.dts is not None]
    return out[:limit]


@pytest.fixture
def env(monkeypatch, models_dir, tmp_path):
    monkeypatch.setenv("EDGE_AGENT_MODELS", str(models_dir))
    monkeypatch.setenv("EDGE_AGENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EDGE_AGENT_CONFIG", raising=False)
    return tmp_path


def test_video_is_h264_and_the_audio_packets_survive_unchanged(shared_dir, make_config, tmp_path):
    source = shared_dir / CLIP
    assert "audio" in _streams(source), "the test input must carry audio"
    out = tmp_path / "out.mp4"
    result = process_file(Models(make_config()), source, out, progress=False)
    assert result.frames == 275 and result.stats["video_codec"] == "libx264"
    assert _streams(out) == {"video": "h264", "audio": "aac"}
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == 275
    original = _audio_payloads(source, 10_000)
    copied = _audio_payloads(out, 10_000)
    assert len(copied) == len(original) and copied == original, "audio must be copied packet for packet"
    assert not partial_path(out).exists()


def test_without_an_h264_encoder_it_falls_back_to_mp4v_and_says_so(shared_dir, make_config, tmp_path, monkeypatch, caplog):
    import edge_agent.video_io as video_io

    monkeypatch.setattr(video_io, "H264_ENCODERS", ("no_such_h264_encoder",))
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.WARNING, logger="edge_agent.video_io"):
        result = process_file(Models(make_config()), shared_dir / CLIP, out, progress=False, max_frames=10)
    assert result.stats["video_codec"] == "mpeg4"
    assert _streams(out)["video"] == "mpeg4"
    assert any("no H.264 encoder" in r.getMessage() and "browsers do not play" in r.getMessage() for r in caplog.records)


def _damaged_copy(source: Path, dest: Path) -> Path:
    """The file with its middle third overwritten (the container index at the end stays intact)."""
    shutil.copy(source, dest)
    size = dest.stat().st_size
    with open(dest, "r+b") as fh:
        fh.seek(size // 3)
        fh.write(bytes((i * 73 + 11) % 256 for i in range(size // 3)))
    return dest


def test_a_video_damaged_in_its_middle_is_an_error_unless_allowed(env, shared_dir, capsys):
    damaged = _damaged_copy(shared_dir / CLIP, env / "damaged.mp4")
    out = env / "out.mp4"
    code = main(["process", str(damaged), "-o", str(out), "-q"])
    text = capsys.readouterr().err
    assert code == 2, text
    assert "decode error" in text and "frames lost" in text and "--allow-decode-errors" in text
    assert not out.exists() and not partial_path(out).exists()

    stats = env / "stats.json"
    code = main(["process", str(damaged), "-o", str(out), "-q", "--allow-decode-errors", "--stats-json", str(stats)])
    assert code == 0
    figures = json.loads(stats.read_text())
    assert figures["decode_errors"] > 0 and figures["frames_lost"] > 0
    assert figures["frames"] + figures["frames_lost"] == figures["frames_expected"] == 275
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == figures["frames"] < 275


def _start(shared_dir: Path, models_dir: Path, out: Path, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGE_AGENT_MODELS": str(models_dir), "EDGE_AGENT_DATA_DIR": str(tmp_path / "data")}
    env.pop("EDGE_AGENT_CONFIG", None)
    cmd = [sys.executable, "-m", "edge_agent", "process", str(shared_dir / CORRIDOR), "-o", str(out), "-q"]
    # A runner started in the background (nohup, `cmd &`) passes SIGINT on as ignored, and Python then
    # keeps ignoring it: restore the default so the test sends the Ctrl-C a user would.
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_partial(proc: subprocess.Popen, out: Path, min_bytes: int = 20_000) -> None:
    deadline = time.monotonic() + 120
    partial = partial_path(out)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stdout.read().decode(errors='replace')}")
        if partial.exists() and partial.stat().st_size >= min_bytes:
            return
        time.sleep(0.05)
    raise AssertionError("no partial output appeared")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_leave_no_file_behind(signum, shared_dir, models_dir, tmp_path):
    out = tmp_path / "out.mp4"
    proc = _start(shared_dir, models_dir, out, tmp_path)
    try:
        _wait_for_partial(proc, out)
        assert not out.exists(), "nothing under the final name while writing"
        proc.send_signal(signum)
        code = proc.wait(30)
    finally:
        proc.kill()
    assert code != 0
    assert not out.exists() and not partial_path(out).exists()
    assert b"Traceback" not in proc.stdout.read()


def test_after_sigkill_there_is_no_file_at_the_output_path(shared_dir, models_dir, tmp_path):
    out = tmp_path / "out.mp4"
    proc = _start(shared_dir, models_dir, out, tmp_path)
    try:
        _wait_for_partial(proc, out)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "data") == [partial_path(out).name]


def test_an_image_appears_only_complete(env, shared_dir):
    photo = shared_dir / "faces/face_recognition/examples/obama.jpg"
    out = env / "sub" / "obama.png"
    assert main(["process", str(photo), "-o", str(out), "-q"]) == 0
    assert out.stat().st_size > 0 and sorted(p.name for p in out.parent.iterdir()) == ["obama.png"]
