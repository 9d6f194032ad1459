"""Building the donor bank: the generator's head-turn direction and packing several synth runs."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from edge_agent.align import template
from edge_agent.anonymize.diffusion import MARGIN
from edge_agent.anonymize.donor import BANK_SIDE, BIG_SIDE, DonorBank
from model_export.anonymizer.donor_bank import MAX_YAW, OCCLUDERS, darkest_eyes, pack, review, spread
from model_export.anonymizer.pose_direction import fit


def test_turn_direction_is_recovered_from_noisy_yaw():
    """A yaw that is a noisy linear read-out of the style: the fitted direction points along the
    planted one."""
    rng = np.random.default_rng(0)
    styles = rng.standard_normal((800, 64))
    planted = rng.standard_normal(64)
    planted /= np.linalg.norm(planted)
    yaw = 0.2 * styles @ planted + 0.02 * rng.standard_normal(800)
    w = fit(styles, yaw, ridge=1.0)
    assert float(w @ planted) / np.linalg.norm(w) > 0.99


def _synth_run(root, first: int, yaw: list[float], score: list[float], meta: str):
    """A synth directory of one chunk with plain-coloured 128 px crops and 512 px generator
    images of the same colour (what ``synth`` writes)."""
    (root / "raw").mkdir(parents=True)
    n = len(yaw)
    rng = np.random.default_rng(first)
    colours = rng.integers(60, 200, (n, 1, 1, 3)).astype(np.uint8)
    crops = colours * np.ones((1, BANK_SIDE, BANK_SIDE, 1), np.uint8)
    lm = np.tile(np.array([[44, 56], [84, 56], [64, 76], [48, 96], [80, 96]], np.float32), (n, 1, 1))
    src = np.tile(np.array([[200, 230], [312, 230], [256, 290], [215, 350], [297, 350]], np.float32), (n, 1, 1))
    for k in range(n):
        cv2.imwrite(str(root / "raw" / f"{first + k:06d}.jpg"), colours[k] * np.ones((512, 512, 1), np.uint8))
    np.savez(root / "chunk_0000.npz", index=np.arange(first, first + n), score=np.array(score, np.float32),
             yaw=np.array(yaw, np.float32), pitch=np.full(n, 0.55, np.float32), tone=np.tile(np.float32([60, 10, 15, 8]), (n, 1)),
             crop128=crops, landmarks128=lm, box=np.tile(np.float32([150, 150, 362, 420]), (n, 1)), landmarks_src=src,
             missing=np.zeros(0, np.int64))
    (root / "meta.txt").write_text(meta + "\n")
    return root


def test_pack_joins_plain_and_turned_runs(tmp_path):
    plain = _synth_run(tmp_path / "plain", 0, [0.0, 0.1, -0.1, 0.05, 0.0, 0.2, 0.1, 0.3], [0.9, 0.9, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9],
                       "seed=9 psi=0.7")
    turned = _synth_run(tmp_path / "turned", 100000, [0.4, 0.6, 0.8, MAX_YAW + 0.2, 0.5, 0.45, 0.7, 0.35], [0.9] * 8,
                        "seed=9 psi=0.7 first=100000 turned")
    out = tmp_path / "bank.npz"
    pack([plain, turned], out, big=4)
    with np.load(out, allow_pickle=False) as z:
        index, yaw, source = z["index"], z["yaw"], str(z["source"])
    # index % 8 == 7 is held out; score < 0.8 and |yaw| > MAX_YAW are left out
    assert sorted(index.tolist()) == [0, 1, 3, 4, 5, 6, 100000, 100001, 100002, 100004, 100005, 100006]
    assert np.abs(yaw).max() <= MAX_YAW and "turned" in source and "seed=9 psi=0.7;" in source
    bank = DonorBank(out)
    assert bank.size == 12
    crop, _ = bank.donor(bank.size + 6)  # a mirrored turned donor
    assert crop.shape == (BANK_SIDE, BANK_SIDE, 3)
    turned_left = bank.nearest(-0.7, 0.55, np.float32([60, 10, 15]), k=1)[0]
    assert turned_left >= bank.size and bank.pose[turned_left, 0] < -0.6, "the mirror of a turned donor serves the other side"
    # four donors also at 256 px, cut from their own generator image (same colour as their crop)
    big = [i for i in range(bank.size) if bank.has_big(i)]
    assert len(big) == 4
    for i in big:
        crop, lm = bank.donor(i, big=True)
        small, _ = bank.donor(i)
        assert crop.shape == (BIG_SIDE, BIG_SIDE, 3)
        np.testing.assert_allclose(lm, template(BIG_SIDE, MARGIN), atol=3)  # aligned like every crop
        assert np.abs(crop.reshape(-1, 3).mean(0) - small.reshape(-1, 3).mean(0)).max() < 3
    near = bank.nearest(0.0, 0.55, np.float32([60, 10, 15]), k=3, big=True)
    assert all(bank.has_big(i) for i in near), "a close-up picks among the donors with a 256 px crop"
    assert bank.donor(next(i for i in range(bank.size) if not bank.has_big(i)), big=True)[0].shape[0] == BANK_SIDE


def test_spread_reaches_every_corner_and_keeps_the_common_dense():
    """A quarter by farthest-point sampling: the extremes of each axis are among the picks. The
    rest at random: the common rows are picked about as often as the bank holds them, where
    farthest-point sampling alone leaves them thin (every track picks among these donors)."""
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((2000, 3))
    picked = spread(feats, 200)
    assert len(set(picked.tolist())) == 200
    for axis in range(3):
        assert int(np.argmax(feats[:, axis])) in picked or int(np.argmin(feats[:, axis])) in picked
    common = np.linalg.norm(feats, axis=1) < 1.5
    assert abs(common[picked].mean() - common.mean()) < 0.1
    assert common[spread(feats, 200, covering=1.0)].mean() < common.mean() - 0.2


def test_pack_refuses_a_missing_generator_image(tmp_path):
    run = _synth_run(tmp_path / "a", 0, [0.0] * 4, [0.9] * 4, "seed=9 psi=0.7")
    for f in (run / "raw").iterdir():
        f.unlink()
    with pytest.raises(SystemExit, match="is missing"):
        pack([run], tmp_path / "bank.npz", big=2)


def test_pack_refuses_runs_that_share_indices(tmp_path):
    a = _synth_run(tmp_path / "a", 0, [0.0] * 4, [0.9] * 4, "seed=9 psi=0.7")
    b = _synth_run(tmp_path / "b", 0, [0.5] * 4, [0.9] * 4, "seed=9 psi=0.7 turned")
    with pytest.raises(SystemExit, match="share generator indices"):
        pack([a, b], tmp_path / "bank.npz")


def test_pack_flags_the_donors_the_occluder_list_names_and_the_bank_never_draws_them(tmp_path, monkeypatch):
    """A donor named in the occluder list (generator index and synth run) is flagged ``occluded``;
    the same index of another run is not. The bank leaves the flagged one out of its choice for
    a face of exactly its pose."""
    import model_export.anonymizer.donor_bank as donor_bank

    plain = _synth_run(tmp_path / "plain", 0, [0.0, 0.1, 0.2, 0.3], [0.9] * 4, "seed=9 psi=0.7")
    turned = _synth_run(tmp_path / "turned", 100, [0.4, 0.5, 0.6, 0.7], [0.9] * 4, "seed=9 psi=0.7 turned")
    names = tmp_path / "occluders.csv"
    names.write_text("generator_index,synth_run,occluder\n1,seed=9 psi=0.7,hand\n101,seed=9 psi=0.7,hand\n")
    monkeypatch.setattr(donor_bank, "OCCLUDERS", names)
    out = tmp_path / "bank.npz"
    pack([plain, turned], out, big=0)
    with np.load(out, allow_pickle=False) as z:
        flagged = z["index"][z["occluded"]].tolist()
    assert flagged == [1]  # 101 is of the turned run, which the list does not name
    bank = DonorBank(out)
    row = int(np.nonzero(np.load(out)["index"] == 1)[0][0])
    assert not bank.clear(row) and row not in bank.nearest(0.1, 0.55, np.float32([60, 10, 15]), k=3)


def test_the_review_sheet_puts_every_listed_pair_of_sunglasses_among_its_first_donors(tmp_path):
    """``review`` ranks the close-up donors by how dark their eyes are: every donor the occluder list
    names for sunglasses ranks among the darkest 24 of the bank's 601 (a score blind to sunglasses
    spreads them over all 601), and the sheet is written, 12 tiles a row."""
    from edge_agent.anonymize.donor import BANK

    ranked = darkest_eyes(BANK)
    sunglasses = {int(r["generator_index"]) for r in csv.DictReader(open(OCCLUDERS)) if r["occluder"] == "sunglasses"}
    darkest = {index for index, _, _ in ranked[:24]}
    assert len(ranked) == 601
    assert len(sunglasses) == 8 and sunglasses <= darkest
    review(BANK, tmp_path / "review.png", n=30)
    assert cv2.imread(str(tmp_path / "review.png")).shape == (3 * 96, 12 * 96, 3)
