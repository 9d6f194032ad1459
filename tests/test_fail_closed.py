"""Fault injection: a detector, recogniser or anonymizer that raises or stalls never lets a raw
frame out. The faulty stages are thin wrappers around the real models (the only fakes here)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_agent.anonymize.classical import SOLID_BGR
from edge_agent.enroll import read_image
from edge_agent.service import Models
from edge_agent.stats import CameraStats


class Faulty:
    """Wraps a real model; ``mode`` = None (pass through), "raise" or "stall"."""

    def __init__(self, inner, method: str, mode=None, stall_s: float = 2.0) -> None:
        self.inner, self.method, self.mode, self.stall_s = inner, method, mode, stall_s
        self.release = threading.Event()

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        def call(*args, **kwargs):
            if self.mode == "raise":
                raise RuntimeError("injected fault")
            if self.mode == "stall":
                self.release.wait(self.stall_s)
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def photo(shared_dir):
    return read_image(shared_dir / "faces/face_recognition/examples/two_people.jpg")


def _fully_redacted(frame: np.ndarray) -> bool:
    return bool(np.all(frame == np.array(SOLID_BGR, np.uint8)))


def _guard(models: Models, stats: CameraStats):
    """A photo's guard, with the configured frame deadline (``frame_timeout_ms``) under test instead
    of a still photo's minute (``STILL_IMAGE_TIMEOUT_S``)."""
    guard = models.pipeline(stats, still=True)
    guard.timeout_s = models.config.pipeline.frame_timeout_ms / 1000.0
    return guard


@pytest.mark.parametrize("stage", ["detector", "embedder"])
@pytest.mark.parametrize("mode", ["raise", "stall"])
def test_detector_or_recogniser_fault_gives_redacted_frame(stage, mode, make_config, photo):
    config = make_config(pipeline={"frame_timeout_ms": 300})
    models = Models(config)
    models.registry.upsert_person("someone", np.eye(1, 128, dtype=np.float32), models.model_sig)  # recognition has work to do
    if stage == "detector":
        models.detector = Faulty(models.detector, "detect", mode)
    else:
        models.embedder = Faulty(models.embedder, "embed", mode)
    stats = CameraStats("t")
    guard = _guard(models, stats)
    out, redacted = guard.filter_array(photo.copy())
    assert redacted and _fully_redacted(out)
    assert stats.counters["frames_redacted"] == 1
    if mode == "stall":
        # While the stalled stage still runs, the next frame is not queued behind it: it leaves redacted at once.
        start = time.perf_counter()
        out2, redacted2 = guard.filter_array(photo.copy())
        assert redacted2 and _fully_redacted(out2) and time.perf_counter() - start < 0.2
        getattr(models, stage).release.set()
    guard.close()


@pytest.mark.parametrize("mode", ["raise", "stall"])
def test_lookahead_detection_fault_gives_redacted_frame(mode, make_config, photo):
    """A file's look-ahead detection (started while the frame before is filtered) that fails or
    stalls redacts its frame like an inline one; the next frame is filtered normally."""
    config = make_config(pipeline={"frame_timeout_ms": 300})
    models = Models(config)
    real = models.detector
    models.detector = Faulty(real, "detect", mode)
    stats = CameraStats("t")
    guard = _guard(models, stats)
    out, redacted = guard.filter_array(photo.copy(), guard.pipeline.detect_ahead(photo.copy()))
    assert redacted and _fully_redacted(out)
    models.detector.release.set()
    guard.pipeline.detector = real
    deadline = time.monotonic() + 30
    while guard.stalled_for() > 0 and time.monotonic() < deadline:  # the stalled filter finishes
        time.sleep(0.05)
    clean = photo.copy()
    out, redacted = guard.filter_array(clean, guard.pipeline.detect_ahead(photo.copy()))
    assert not redacted and not np.array_equal(out, photo)  # both faces anonymized, not blanked
    guard.close()


def test_lookahead_detection_is_the_inline_detection(make_config, photo):
    models = Models(make_config())
    guard = _guard(models, CameraStats("t"))
    ahead = guard.pipeline.detect_ahead(photo.copy()).result(timeout=30)
    inline = models.detector.detect(photo.copy())
    assert len(ahead) == len(inline) == 2
    for a, b in zip(ahead, inline):
        np.testing.assert_array_equal(a.box, b.box)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
    guard.close()


def test_anonymizer_fault_falls_back_per_face(make_config, photo, face_models):
    detector, _ = face_models
    config = make_config()
    models = Models(config)
    stats = CameraStats("t")
    guard = _guard(models, stats)
    guard.pipeline.anonymizer = Faulty(guard.pipeline.anonymizer, "anonymize", "raise")
    original = photo.copy()
    out, redacted = guard.filter_array(photo)
    assert not redacted
    assert stats.counters["face_fallbacks"] == 2 and stats.counters["faces_anonymized"] == 2
    for face in detector.detect(original):
        x1, y1, x2, y2 = face.box.astype(int)
        assert not np.array_equal(out[y1:y2, x1:x2], original[y1:y2, x1:x2])
    guard.close()


@pytest.mark.parametrize("mode", ["raise", "stall"])
def test_anonymizer_and_fallback_fault_gives_redacted_frame(mode, make_config, photo):
    config = make_config(pipeline={"frame_timeout_ms": 300})
    models = Models(config)
    stats = CameraStats("t")
    guard = _guard(models, stats)
    guard.pipeline.anonymizer = Faulty(guard.pipeline.anonymizer, "anonymize", mode)
    guard.pipeline.fallback = Faulty(guard.pipeline.fallback, "anonymize", mode)
    out, redacted = guard.filter_array(photo.copy())
    assert redacted and _fully_redacted(out)
    guard.pipeline.anonymizer.release.set()
    guard.pipeline.fallback.release.set()
    guard.close()


def test_no_embedder_hides_everyone(make_config, photo, face_models, tmp_path):
    """Without a verified embedder file the agent still runs and anonymizes every face."""
    detector, _ = face_models
    config = make_config(models={"embedder": {"file": "missing.onnx", "fallback_file": None}})
    models = Models(config)
    assert models.embedder is None
    stats = CameraStats("t")
    guard = _guard(models, stats)
    original = photo.copy()
    out, redacted = guard.filter_array(photo)
    assert not redacted and stats.counters["faces_shown"] == 0 and stats.counters["faces_anonymized"] == 2
    for face in detector.detect(original):
        x1, y1, x2, y2 = face.box.astype(int)
        assert not np.array_equal(out[y1:y2, x1:x2], original[y1:y2, x1:x2])
    guard.close()


def test_missing_yunet_falls_back_to_centerface(make_config, photo, models_dir):
    if not (models_dir / "centerface.onnx").is_file():
        pytest.skip("centerface.onnx not in the model directory")
    config = make_config(models={"detector": {"file": "absent-yunet.onnx"}})
    models = Models(config)
    assert type(models.detector).__name__ == "CenterFace"
    assert len(models.detector.detect(photo)) == 2
