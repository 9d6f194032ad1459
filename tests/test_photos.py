"""Registered people stay pixel-identical; everyone else no longer matches their own embedding."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import main
from edge_agent.enroll import read_image
from edge_agent.faces import Face
from edge_agent.process import process_file
from edge_agent.service import Models

REGISTER = {"obama": "face_recognition/examples/obama.jpg", "biden": "face_recognition/examples/biden.jpg"}


def _face_at(faces: list[Face], x: float, y: float) -> Face:
    inside = [f for f in faces if f.box[0] <= x <= f.box[2] and f.box[1] <= y <= f.box[3]]
    assert inside, f"no detected face contains ({x}, {y})"
    return min(inside, key=lambda f: f.width * f.height)


def _cases(shared: Path) -> list[tuple[Path, str, tuple[float, float] | None]]:
    """(photo, identity, face centre or None for single-face photos), registration photos excluded."""
    cases = []
    for row in csv.DictReader(open(shared / "faces/identities.csv")):
        if row["path"] not in REGISTER.values():
            cases.append((shared / "faces" / row["path"], row["identity"], None))
    for row in csv.DictReader(open(shared / "faces/group_photos.csv")):
        cases.append((shared / "faces" / row["path"], row["identity"], (float(row["face_center_x"]), float(row["face_center_y"]))))
    return cases


@pytest.fixture(scope="module")
def registered(shared_dir, models_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    env = {"EDGE_AGENT_MODELS": str(models_dir), "EDGE_AGENT_DATA_DIR": str(data)}
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    for name, photo in REGISTER.items():
        assert main(["registry", "add", "--name", name, str(shared_dir / "faces" / photo)]) == 0
    yield data
    mp.undo()


def test_registered_faces_untouched_and_strangers_anonymized(shared_dir, registered, make_config, face_models, tmp_path):
    detector, embedder = face_models
    config = make_config(data_dir=str(registered))
    models = Models(config)
    threshold = config.recognition.threshold
    assert models.registry.count() == 2
    outputs: dict[Path, np.ndarray] = {}
    checked = {"shown": 0, "anonymized": 0}
    for photo, identity, centre in _cases(shared_dir):
        if photo not in outputs:
            out = tmp_path / f"{len(outputs)}.bmp"
            process_file(models, photo, out, progress=False)
            outputs[photo] = read_image(out)
        original, output = read_image(photo), outputs[photo]
        faces = detector.detect(original)
        if centre is None:
            if not faces:
                continue  # nothing detectable to check in this photo
            face = max(faces, key=lambda f: f.width * f.height)
        else:
            face = _face_at(faces, *centre)
        x1, y1, x2, y2 = face.box.astype(int)
        if identity in REGISTER:
            assert np.array_equal(output[y1:y2, x1:x2], original[y1:y2, x1:x2]), f"{photo.name}: registered {identity} was modified"
            checked["shown"] += 1
        else:
            before, after = embedder.embed(original, [face])[0], embedder.embed(output, [face])[0]
            cosine = float(before @ after)
            assert cosine < threshold, f"{photo.name}: {identity} still matches the original (cosine {cosine:.2f})"
            assert not np.array_equal(output[y1:y2, x1:x2], original[y1:y2, x1:x2])
            checked["anonymized"] += 1
    assert checked["shown"] >= 6 and checked["anonymized"] >= 60, checked
