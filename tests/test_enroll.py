"""Enrolment at camera scale: several templates per photo, an existing name needs --replace or
--append, a poor photo gets a warning; all through the real CLI, models and registry file."""

from __future__ import annotations

import numpy as np

from edge_agent.registry import Registry
from tests.test_bad_input import env, run_cli  # noqa: F401  (fixture)


def test_add_replace_append(env, capsys, shared_dir):
    examples = shared_dir / "faces/face_recognition/examples"
    obama, obama2, biden = (str(examples / n) for n in ("obama.jpg", "obama2.jpg", "biden.jpg"))
    code, out = run_cli(capsys, "registry", "add", "--name", "obama", obama)
    assert code == 0, out
    registry = Registry(env / "data" / "registry.db")
    one = registry.find("obama").embeddings
    assert len(one) > 1 and f"{len(one)} stored" in out
    assert np.allclose(np.linalg.norm(one, axis=1), 1, atol=1e-5)

    code, out = run_cli(capsys, "registry", "add", "--name", "obama", obama2)
    assert code == 2 and "already registered" in out and "--replace" in out and "--append" in out
    assert np.array_equal(registry.find("obama").embeddings, one)  # nothing changed

    code, out = run_cli(capsys, "registry", "add", "--name", "obama", "--append", obama2)
    assert code == 0, out
    both = registry.find("obama").embeddings
    assert len(both) > len(one) and np.array_equal(both[: len(one)], one)

    code, out = run_cli(capsys, "registry", "add", "--name", "obama", "--append", biden)
    assert code == 2 and "do not look like the registered person" in out
    assert len(registry.find("obama").embeddings) == len(both)

    code, out = run_cli(capsys, "registry", "add", "--name", "obama", "--replace", obama)
    assert code == 0 and len(registry.find("obama").embeddings) == len(one)
    assert registry.count() == 1


def test_templates_stay_within_the_sync_limit(env, capsys, shared_dir, tmp_path):
    people = shared_dir / "faces/people/train/guido_van_rossum"
    photos = sorted(str(p) for p in people.glob("*.jpg"))
    config = tmp_path / "c.yaml"
    config.write_text("mqtt:\n  enabled: false\n  admin_public_key: /nonexistent.pub\n  max_embeddings_per_person: 8\n")
    code, out = run_cli(capsys, "--config", str(config), "registry", "add", "--name", "guido", *photos)
    assert code == 0, out
    stored = Registry(env / "data" / "registry.db").find("guido").embeddings
    assert len(photos) <= len(stored) <= 8


def test_a_small_photo_gets_a_warning(env, capsys, shared_dir, tmp_path):
    import cv2

    image = cv2.imread(str(shared_dir / "faces/face_recognition/examples/obama.jpg"))
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.resize(image, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA))
    code, out = run_cli(capsys, "registry", "add", "--name", "obama", str(small))
    assert code == 0, out
    assert "warning" in out and "px wide" in out
