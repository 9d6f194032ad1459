"""`model_export verify` on a device venv (runtime.txt only, no matplotlib): the minutes of
measuring end in report.md whatever happens to the plots."""

from __future__ import annotations

import importlib.util

import pytest

from model_export import verify
from tests.test_model_export import write_video


def _inputs(models_dir, tmp_path) -> verify.VerifyInputs:
    detector = models_dir / "yunet_s_dynamic.onnx"
    return verify.VerifyInputs(detector_fp32=detector, detector_candidate=detector, heldout=[str(write_video(tmp_path / "v.avi"))],
                               max_frames=4, repeats=2, threads=1)


def test_without_matplotlib_the_report_is_written_without_plots(models_dir, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(verify, "write_plots", lambda *a, **k: pytest.fail("plotting without matplotlib"))
    verify.run_verify(_inputs(models_dir, tmp_path), tmp_path / "out", progress=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "detector" in report.lower() and ".png" not in report
    assert (tmp_path / "out" / "results.json").is_file()


def test_the_report_exists_before_plotting_starts(models_dir, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        assert (tmp_path / "out" / "report.md").is_file(), "report.md must be written before the plots"
        raise RuntimeError("a plotting backend failed")

    monkeypatch.setattr(verify, "write_plots", crash)
    with pytest.raises(RuntimeError):
        verify.run_verify(_inputs(models_dir, tmp_path), tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "report.md").stat().st_size > 0
