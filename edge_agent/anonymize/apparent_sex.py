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


def standardise(grey: np.ndarray) -> np.ndarray:
    """[N, 64, 64] grey -> float32, each crop to zero mean and unit spread (floored: a flat
    crop's noise is not blown up): a dark camera's face and a bright one's look alike to the net."""
    g = np.asarray(grey, np.float32)
    mu = g.mean((1, 2), keepdims=True)
    sd = g.std((1, 2), keepdims=True)
    return (g - mu) / np.maximum(sd, 4.0)


class ApparentSex:
    """``score(crop)``: P(male) of an aligned BGR face crop of any side (resized to ``SIDE``)."""

    def __init__(self, path: str | Path = MODEL, threads: int = 1) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"apparent-sex model not found: {path}")
        self.session = open_session(path, "cpu", threads)

    def score(self, crop: np.ndarray) -> float:
        grey = cv2.cvtColor(cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        p = float(self.session.run(None, {"crop": standardise(grey[None])[:, None]})[0][0])
        if not np.isfinite(p):
            raise ValueError("apparent-sex model gave a non-finite score")
        return p


def clash(stranger: float, donors: np.ndarray) -> np.ndarray:
    """Bool per donor score: sure of the other sex than the one a stranger's score leans to. A
    stranger or donor near 0.5 (a child, a face the net cannot tell) clashes with nobody; NaN never
    clashes."""
    donors = np.asarray(donors, np.float32)
    if not np.isfinite(stranger) or abs(stranger - 0.5) < LEANS:
        return np.zeros(donors.shape, bool)
    with np.errstate(invalid="ignore"):
        return (np.abs(donors - 0.5) >= SURE) & ((donors > 0.5) != (stranger > 0.5))
