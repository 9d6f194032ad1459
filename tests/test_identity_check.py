"""The recogniser check of the generative anonymizers: shifted views, the bound, the drift that
calls for a new check."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.anonymize.identity_check import WATCH_MARGIN, IdentityCheck, drifted, jittered
from edge_agent.faces import Face


@pytest.fixture(scope="module")
def photo(portraits):
    _, emb, photos = portraits
    img, face = photos[0]
    return emb, img, face


def test_views_are_the_face_then_shifted_copies(photo):
    _, _, face = photo
    views = jittered(face, 3)
    assert len(views) == 3
    assert np.array_equal(views[0].landmarks, face.landmarks) and np.array_equal(views[0].box, face.box)
    eye_d = float(np.hypot(*(face.landmarks[1] - face.landmarks[0])))
    for view, sign in zip(views[1:], (1, -1)):
        shift = view.landmarks - face.landmarks
        assert np.allclose(shift[:, 0], sign * 0.08 * eye_d, atol=1e-3) and np.allclose(shift[:, 1], 0, atol=1e-3)
        assert np.allclose(view.box - face.box, [sign * 0.08 * eye_d, 0, sign * 0.08 * eye_d, 0], atol=1e-3)


def test_similarity_is_the_closest_view_and_the_bound_decides(photo):
    emb, img, face = photo
    check = IdentityCheck(emb, 0.35, views=3)
    person = check.person(img, face)
    assert person.shape == (3, emb.dim)
    # the face itself is the person at every view
    assert check.similarity(person, img, face) > 0.99 and check.too_close(person, img, face)
    # a mirrored copy: the closest of the views, computed by hand
    mirrored = np.ascontiguousarray(img[:, ::-1])
    by_hand = max(float(person[k] @ emb.embed(mirrored, [v])[0]) for k, v in enumerate(jittered(face, 3)))
    assert check.similarity(person, mirrored, face) == pytest.approx(by_hand, abs=1e-5)
    # another person entirely (a grey frame): far below the bound
    grey = np.full_like(img, 128)
    assert not check.too_close(person, grey, face)


def test_a_check_holds_until_the_head_turns_or_nears_unless_it_was_close(photo):
    emb, img, face = photo
    grey = np.full_like(img, 128)
    check = IdentityCheck(emb, 0.35)
    person = check.person(img, face)
    key = check.passed(person, grey, face)
    assert key is not None and key[3] is False and check.passed(person, img, face) is None
    assert not drifted(None, face) and not drifted(key, face)
    # passed, but within WATCH_MARGIN of the bound: checked on every frame it is drawn
    check.max_similarity = check.similarity(person, grey, face) + WATCH_MARGIN / 2
    close = check.passed(person, grey, face)
    assert close is not None and close[3] is True and drifted(close, face)
    # ...and stays watched after a check that is further from the bound
    check.max_similarity = 0.35
    assert check.passed(person, grey, face, close)[3] is True and check.passed(person, grey, face)[3] is False
    lm = np.asarray(face.landmarks, np.float32).copy()
    eye_d = float(lm[1, 0] - lm[0, 0])
    turned = lm.copy()
    turned[2, 0] += 0.3 * eye_d  # the nose toward one eye: the head turned
    assert drifted(key, Face(face.box.copy(), turned, face.score))
    assert drifted(key, Face(face.box * 1.6, lm * 1.6, face.score))  # 1.6 times as wide: nearer
    assert not drifted(key, Face(face.box + 7, lm + 7, face.score))  # moved, not turned or nearer
