"""Apparent sex of a face, to steer the donor choice: a small CNN on the grey aligned crop.

Why: donors are chosen by pose and skin tone; without this, a man's short hair and beard got a
woman's face with lipstick in 3 of 6 close-ups rendered on 2026-12-05. The score only narrows
which synthetic person is drawn (:func:`clash`); the recogniser check still bounds how close the
drawn face may come to the stranger, and the score never leaves the process. The weights
(``edge_agent/assets/apparent_sex.onnx``) are the project's own:
``python -m model_export.anonymizer sex-classifier`` (model card: ``APPARENT_SEX.md``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_agent.models.runtime import open_session

MODEL = Path(__file__).resolve().parent.parent / "assets" / "apparent_sex.onnx"
SIDE = 64  # the net's input: the aligned crop (template margin as the donors'), grey
SURE = 0.25  # a donor scored this far from 0.5 or farther is taken as of that apparent sex...
LEANS = 0.15  # ...and a stranger from this far: right on 0.77 of held-out LFW faces scored 0.15-0.25 from 0.5 (0.95 past 0.25), where a random donor is of the other sex half the time
UNSURE_COST = 3.0  # a donor of no sure sex (:func:`unsure_cost`): this much farther (DonorBank.nearest's pose and tone units; its 12th nearest lies ~2 away)


def standardise(grey: np.ndarray) -> np.ndarray:
    """[N, 64, 64] grey -> float32, each crop to zero mean and unit spread (floored: a flat
    crop's noise is not blown up): a dark camera's face and a bright one's look alike to the net."""
    g = np.asarray(grey, np.float32)
    mu = g.mean((1, 2), keepdims=True)
    sd = g.std((1, 2), keepdims=True)
    return (g - mu) / np.maximum(sd, 4.0)


class ApparentSex:
    """``score(crop)``: P(male) of an aligned BGR face crop of any side (resized to ``SIDE``)."""

    what = "apparent-sex"  # named in errors

    def __init__(self, path: str | Path = MODEL, threads: int = 1) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{self.what} model not found: {path}")
        self.session = open_session(path, "cpu", threads)

    def score(self, crop: np.ndarray) -> float:
        grey = cv2.cvtColor(cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        p = float(self.session.run(None, {"crop": standardise(grey[None])[:, None]})[0][0])
        if not np.isfinite(p):
            raise ValueError(f"{self.what} model gave a non-finite score")
        return p


def leans(stranger: float) -> bool:
    """Does a stranger's score take a side?"""
    return bool(np.isfinite(stranger)) and abs(stranger - 0.5) >= LEANS


def unsure_cost(stranger: float, donors: np.ndarray) -> np.ndarray:
    """Per donor score, what drawing it costs a scored stranger (``UNSURE_COST``; else 0): a donor
    of no sure sex (a child, a face nobody could tell, NaN) for any stranger, and for a stranger
    the net is sure of (``SURE`` from 0.5) also one not sure of that sex. At par, such donors went
    to men as faces that read as old women (a grid of held-out synthetic faces), and the demo
    clip's performer wore a baby's face in `make run` (2026-12-05; sure of him, the net offers
    adult men only). A stranger not scored (``match_sex`` off, NaN) pays nothing."""
    donors = np.asarray(donors, np.float32)
    if not np.isfinite(stranger):
        return np.zeros(donors.shape, np.float32)
    with np.errstate(invalid="ignore"):
        ok = np.abs(donors - 0.5) >= SURE
        if abs(stranger - 0.5) >= SURE:
            ok &= (donors > 0.5) == (stranger > 0.5)
    return np.where(ok, 0.0, UNSURE_COST).astype(np.float32)


def clash(stranger: float, donors: np.ndarray) -> np.ndarray:
    """Bool per donor score: sure of the other sex than the one a stranger's score leans to. A
    stranger or donor near 0.5 (a child, a face the net cannot tell) clashes with nobody; NaN never
    clashes."""
    donors = np.asarray(donors, np.float32)
    if not leans(stranger):
        return np.zeros(donors.shape, bool)
    with np.errstate(invalid="ignore"):
        return (np.abs(donors - 0.5) >= SURE) & ((donors > 0.5) != (stranger > 0.5))
