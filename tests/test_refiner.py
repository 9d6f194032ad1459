"""The donor refiner: the distilled 1-step student that renders a donor composite into the scene."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from edge_agent.anonymize.base import face_region
from edge_agent.anonymize.donor import REFINE_MIN_PX, DonorAnonymizer
from edge_agent.anonymize.refine import REFINE_CROP, REFINER, Refiner, head_weight, seed_noise3
from edge_agent.anonymize.diffusion import aligned_crop

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "edge_agent/assets/REFINER.md"
WEIGHTS = ROOT / "model_export/anonymizer/weights/refiner_student_fp16.pt"


@pytest.fixture(scope="module")
def models(portraits):
    _, emb, photos = portraits
    return emb, photos


@pytest.fixture(scope="module")
def refiner():
    return Refiner()


def test_refiner_matches_its_model_card_and_its_weights():
    """The shipped ONNX graph is the committed student: same checksum as the card, and onnxruntime
    agrees with torch on the committed float16 weights (the export's parity check, repeated)."""
    torch = pytest.importorskip("torch")
    from model_export.anonymizer.refiner import RefinerGraph, build_unet

    card = CARD.read_text()
    assert re.search(r"sha256 `([0-9a-f]{64})`", card).group(1) == hashlib.sha256(REFINER.read_bytes()).hexdigest()
    ck = torch.load(WEIGHTS, map_location="cpu", weights_only=False)
    unet = build_unet()
    unet.load_state_dict({k: v.float() for k, v in ck["model"].items()})
    graph = RefinerGraph(unet.eval())
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, 3, REFINE_CROP, REFINE_CROP)).astype(np.float32)
    cond = rng.uniform(-1, 1, (1, 4, REFINE_CROP, REFINE_CROP)).astype(np.float32)
    with torch.no_grad():
        ref = graph(torch.from_numpy(noise), torch.from_numpy(cond)).numpy()
    got = Refiner().session.run(None, {"noise": noise, "cond": cond})[0]
    assert np.abs(ref - got).max() < 2e-3


def test_refiner_changes_only_the_head_region_and_keeps_the_donor(models, refiner):
    emb, photos = models
    plain, refined = DonorAnonymizer(budget_ms=None), DonorAnonymizer(budget_ms=None, embedder=emb, refiner=refiner, refine_budget_ms=None)
    changed = []
    for k, (img, face) in enumerate(photos):
        a, b = img.copy(), img.copy()
        plain.anonymize(a, face, seed=k + 1)
        refined.anonymize(b, face, seed=k + 1)
        assert refined.donor_of(k + 1) == plain.donor_of(k + 1) is not None
        rows, cols, region = face_region(face, img.shape)
        outside = np.ones(img.shape[:2], bool)
        outside[rows, cols] = region == 0
        assert np.array_equal(a[outside], b[outside]), "the refiner touched pixels outside the head region"
        inside = ~outside
        if face.width < REFINE_MIN_PX:  # too narrow to refine: the composite as pasted
            assert np.array_equal(a, b)
            continue
        changed.append(float(np.abs(a[inside].astype(int) - b[inside]).mean()))
        # still another person to the recogniser, and not the donor composite's twin
        assert float(emb.embed(img, [face])[0] @ emb.embed(b, [face])[0]) < 0.35
        # ...and still the same synthetic person as the unrefined composite (0.42: the per-frame
        # same-person bound of tests/test_video.py), so a frame past the refine budget keeps it
        assert float(emb.embed(a, [face])[0] @ emb.embed(b, [face])[0]) > 0.42, "the refiner replaced the donor"
    # (the new track's recogniser check renders, refined, once more: at least one refinement a face)
    assert refined.stats["refined"] >= len(changed) >= 2 and refined.stats["refine_undone"] == 0
    assert max(changed) > 0.5, "the refiner made no difference"


def test_refiner_input_is_the_composite_only(models, refiner):
    """Two different originals under the same composite give the same refinement: the network is
    never shown the face it replaces."""
    _, photos = models
    img, face = photos[0]
    out = img.copy()
    DonorAnonymizer(budget_ms=None).anonymize(out, face, seed=5)
    one, two = out.copy(), out.copy()
    refiner.refine(one, face, seed=5)
    refiner.refine(two, face, seed=5)
    assert np.array_equal(one, two)
    crop, matrix, _ = aligned_crop(out, face, REFINE_CROP)
    w = head_weight(out.shape, face, matrix)
    assert w.shape == (REFINE_CROP, REFINE_CROP) and w.max() > 0.99 and w[0, 0] == 0.0
    assert np.array_equal(seed_noise3(5), seed_noise3(5)) and not np.array_equal(seed_noise3(5), seed_noise3(6))


class RestoringRefinerStandIn:
    """A stand-in for a refiner gone wrong: it writes the person's own face back over the composite
    (the drift seen in CI, taken to its end)."""

    def __init__(self, original: np.ndarray) -> None:
        self.original = original

    def refine(self, frame: np.ndarray, face, seed: int) -> None:
        rows, cols, region = face_region(face, frame.shape)
        np.copyto(frame[rows, cols], self.original[rows, cols], where=(region > 0)[..., None])


def test_a_refinement_that_brings_the_person_back_is_undone(models):
    """Every refined face is checked against the person: a refinement at the bound is undone and the
    (checked) composite stays; a composite that is itself too close at this pose gets the mosaic."""
    from edge_agent.anonymize.classical import Pixelate

    emb, photos = models
    img, face = next(p for p in photos if p[1].width >= REFINE_MIN_PX)
    plain = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, embedder=emb, max_similarity=0.99)  # the same donor order
    guarded = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, embedder=emb, max_similarity=0.99,
                              refiner=RestoringRefinerStandIn(img), refine_budget_ms=None)
    a, b = img.copy(), img.copy()
    plain.anonymize(a, face, seed=7)
    guarded.anonymize(b, face, seed=7)
    assert guarded.stats["refine_undone"] >= 1 and guarded.stats["refined"] == 0
    assert np.array_equal(a, b), "the undone refinement left something of the person"
    # the same track at a bound its composite does not pass: the mosaic goes over the composite
    guarded.check.max_similarity = guarded.check.similarity(guarded.check.person(img, face), a, face) - 0.01
    c = img.copy()
    guarded.anonymize(c, face, seed=7)
    mosaic = a.copy()
    Pixelate().anonymize(mosaic, face, 7)
    assert np.array_equal(c, mosaic)


def test_the_refiner_needs_the_embedder_for_its_check(refiner):
    with pytest.raises(ValueError, match="needs the embedder"):
        DonorAnonymizer(refiner=refiner)


def test_refine_budget_keeps_the_unrefined_composite(models, refiner):
    """Past the frame's refine time the next faces keep their donor composite (already anonymized)."""
    emb, photos = models
    (img1, face1), (img2, face2) = [p for p in photos if p[1].width >= REFINE_MIN_PX][:2]
    over = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, embedder=emb, refiner=refiner, refine_budget_ms=None)
    plain = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    for anon in (over, plain):  # a first frame starts both tracks (their checks refine too)
        anon.begin_frame()
        anon.anonymize(img1.copy(), face1, seed=3)
        anon.anonymize(img2.copy(), face2, seed=4)
    over.refine_budget_ms = 1e-6
    over.stats["refined"] = 0
    over.begin_frame()
    plain.begin_frame()
    a, b = img1.copy(), img1.copy()
    over.anonymize(a, face1, seed=3)  # the first face is refined: nothing was spent yet
    plain.anonymize(b, face1, seed=3)
    assert over.stats["refined"] == 1 and not np.array_equal(a, b)
    a, b = img2.copy(), img2.copy()
    over.anonymize(a, face2, seed=4)
    plain.anonymize(b, face2, seed=4)
    assert over.stats["refine_skipped"] == 1
    assert np.array_equal(a, b), "a face over the refine budget keeps the (anonymized) donor composite"


def test_config_turns_the_refiner_on_and_fails_closed_without_its_model(models, tmp_path, caplog):
    from edge_agent.anonymize import build_anonymizers
    from edge_agent.config import AnonymizerConfig

    emb, _ = models
    engine, _ = build_anonymizers(AnonymizerConfig.model_validate({"mode": "donor", "donor": {"refiner": True}}), emb)
    assert isinstance(engine, DonorAnonymizer) and isinstance(engine.refiner, Refiner)
    with caplog.at_level(logging.WARNING):  # recognition off: nothing to check a refined face with
        engine, _ = build_anonymizers(AnonymizerConfig.model_validate({"mode": "donor", "donor": {"refiner": True}}))
    assert isinstance(engine, DonorAnonymizer) and engine.refiner is None and "donor.refiner is off" in caplog.text
    with caplog.at_level(logging.ERROR):
        engine, fallback = build_anonymizers(AnonymizerConfig.model_validate(
            {"mode": "donor", "donor": {"refiner": True, "refiner_model": str(tmp_path / "none.onnx")}}), emb)
    assert engine is fallback and "refiner model not found" in caplog.text
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with caplog.at_level(logging.ERROR):
        engine, fallback = build_anonymizers(AnonymizerConfig.model_validate(
            {"mode": "donor", "donor": {"refiner": True, "refiner_model": str(bad)}}), emb)
    assert engine is fallback
    with pytest.raises(ValueError, match="refine_budget_ms"):
        AnonymizerConfig.model_validate({"mode": "donor", "donor": {"refine_budget_ms": 0}})
