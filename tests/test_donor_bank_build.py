"""Building the donor bank: the generator's head-turn direction and packing several synth runs."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.anonymize.donor import BANK_SIDE, DonorBank
from model_export.anonymizer.donor_bank import MAX_YAW, pack
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
    """A synth directory of one chunk with plain-coloured 128 px crops (what ``synth`` writes)."""
    root.mkdir()
    n = len(yaw)
    rng = np.random.default_rng(first)
    crops = rng.integers(60, 200, (n, 1, 1, 3)).astype(np.uint8) * np.ones((1, BANK_SIDE, BANK_SIDE, 1), np.uint8)
    lm = np.tile(np.array([[44, 56], [84, 56], [64, 76], [48, 96], [80, 96]], np.float32), (n, 1, 1))
    np.savez(root / "chunk_0000.npz", index=np.arange(first, first + n), score=np.array(score, np.float32),
             yaw=np.array(yaw, np.float32), pitch=np.full(n, 0.55, np.float32), tone=np.tile(np.float32([60, 10, 15, 8]), (n, 1)),
             crop128=crops, landmarks128=lm, missing=np.zeros(0, np.int64))
    (root / "meta.txt").write_text(meta + "\n")
    return root


def test_pack_joins_plain_and_turned_runs(tmp_path):
    plain = _synth_run(tmp_path / "plain", 0, [0.0, 0.1, -0.1, 0.05, 0.0, 0.2, 0.1, 0.3], [0.9, 0.9, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9],
                       "seed=9 psi=0.7")
    turned = _synth_run(tmp_path / "turned", 100000, [0.4, 0.6, 0.8, MAX_YAW + 0.2, 0.5, 0.45, 0.7, 0.35], [0.9] * 8,
                        "seed=9 psi=0.7 first=100000 turned")
    out = tmp_path / "bank.npz"
    pack([plain, turned], out)
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


def test_pack_refuses_runs_that_share_indices(tmp_path):
    a = _synth_run(tmp_path / "a", 0, [0.0] * 4, [0.9] * 4, "seed=9 psi=0.7")
    b = _synth_run(tmp_path / "b", 0, [0.5] * 4, [0.9] * 4, "seed=9 psi=0.7 turned")
    with pytest.raises(SystemExit, match="share generator indices"):
        pack([a, b], tmp_path / "bank.npz")
