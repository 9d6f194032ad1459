"""Shared test fixtures: the real models and data, found through environment variables.

``EDGE_AGENT_SHARED_DIR`` points at the shared data folder (faces, video, LFW) and
``EDGE_AGENT_MODELS`` at a model directory filled by ``make setup``; tests that need either
skip with the reason when it is unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _dir_from_env(name: str) -> Path:
    value = os.environ.get(name)
    if not value or not Path(value).is_dir():
        pytest.skip(f"{name} is not set to a directory")
    return Path(value)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _dir_from_env("EDGE_AGENT_SHARED_DIR")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return _dir_from_env("EDGE_AGENT_MODELS")


@pytest.fixture
def make_config(models_dir, tmp_path):
    """A validated Config over the real models with a fresh registry in tmp_path."""
    from edge_agent.config import Config

    def make(**overrides) -> "Config":
        raw = {"data_dir": str(tmp_path / "data"), "models": {"dir": str(models_dir)}}
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        return Config.model_validate(raw)

    return make


@pytest.fixture(scope="session")
def face_models(models_dir):
    """The real detector and embedder, loaded once per session."""
    from edge_agent.models.arcface import ArcFaceEmbedder
    from edge_agent.models.files import resolve
    from edge_agent.models.yunet import YuNet

    return YuNet(resolve(models_dir, "yunet_s_dynamic.onnx")), ArcFaceEmbedder(resolve(models_dir, "mobilefacenet.onnx"))


PORTRAITS = ["face_recognition/examples/obama.jpg", "face_recognition/examples/biden.jpg",
             "face_recognition/examples/lin-manuel-miranda.png", "face_recognition/examples/alex-lacamoire.png"]


@pytest.fixture(scope="session")
def portraits(shared_dir):
    """(detector, embedder, [(photo at camera-like 480 px, its largest face)]) for the generative
    anonymizers' tests: faces of about 100-200 px."""
    import cv2

    from edge_agent.models.arcface import ArcFaceEmbedder
    from edge_agent.models.yunet import YuNet

    det = YuNet(shared_dir / "models/yunet/yunet_s_dynamic.onnx", threads=2)
    emb = ArcFaceEmbedder(shared_dir / "models/mobilefacenet/mobilefacenet.onnx", threads=2)
    photos = []
    for rel in PORTRAITS:
        img = cv2.imread(str(shared_dir / "faces" / rel))
        assert img is not None, rel
        scale = 480 / max(img.shape[:2])
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        faces = det.detect(img)
        assert faces, rel
        photos.append((img, max(faces, key=lambda f: f.width * f.height)))
    return det, emb, photos


@pytest.fixture
def one_frame():
    """``one_frame(anonymizer, image, face, seed)``: ``image`` filtered as the pipeline filters a
    frame with one hidden face (begin_frame with the frame as it came, the face, end_frame with its
    due checks); returns the filtered copy."""

    def run(anon, image, face, seed):
        out = image.copy()
        anon.begin_frame([face], image)
        anon.anonymize(out, face, seed)
        anon.end_frame(out)
        return out

    return run
