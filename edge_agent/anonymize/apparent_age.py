"""Child or adult, to steer the donor choice: a small CNN on the grey aligned crop.

Why: donors were chosen by pose, skin tone and apparent sex, and children got adults' faces (an
old woman's on a girl of about ten, 2026-12-06). A stranger the net is sure is a child draws among
child donors only; any other stranger never draws a child donor (a toddler's face on a grown man
is as wrong), and for one it takes for an adult a teenager counts as farther
(:func:`unsure_cost`). Like the apparent-sex score, it only narrows which synthetic person is drawn
(:func:`clash`): the recogniser check still bounds how close the drawn face may come, and the
score never leaves the process. The weights (``edge_agent/assets/apparent_child.onnx``) are the
project's own: ``python -m model_export.anonymizer age-classifier`` (model card: ``APPARENT_AGE.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.anonymize.apparent_sex import UNSURE_COST, ApparentSex

MODEL = Path(__file__).resolve().parent.parent / "assets" / "apparent_child.onnx"
CHILD = 0.8  # a stranger scored P(child) this high or higher draws among child donors only (held-out shares: APPARENT_AGE.md)...
DONOR_CHILD = 0.75  # ...which are those labelled child or scored this high (the young synthetic run)
ADULT = 0.2  # a stranger scored under this is taken for an adult: a donor of no sure age (a teenager) costs it UNSURE_COST
DONOR_ADULT = 0.25  # a donor labelled adult or scored under this is of sure age for an adult


class ApparentAge(ApparentSex):
    """``score(crop)``: P(child) of an aligned BGR face crop (the apparent-sex net's input)."""

    what = "apparent-age"

    def __init__(self, path: str | Path = MODEL, threads: int = 1) -> None:
        super().__init__(path, threads)


def is_child(stranger: float) -> bool:
    """Is a stranger's P(child) sure enough (``CHILD``) to draw among child donors only?"""
    return bool(np.isfinite(stranger) and stranger >= CHILD)


def clash(stranger: float, donors: np.ndarray) -> np.ndarray:
    """Bool per donor P(child): a child stranger (``CHILD``) clashes with every donor that is not
    a child (``DONOR_CHILD``), any other stranger with every child donor. A stranger not scored
    (NaN: ``match_age`` off) clashes with nobody; a donor not scored (NaN) is no child."""
    donors = np.asarray(donors, np.float32)
    if not np.isfinite(stranger):
        return np.zeros(donors.shape, bool)
    with np.errstate(invalid="ignore"):
        child = donors >= DONOR_CHILD
    return ~child if is_child(stranger) else child


def unsure_cost(stranger: float, donors: np.ndarray) -> np.ndarray:
    """Per donor P(child), what drawing it costs a stranger taken for an adult (``ADULT``):
    ``UNSURE_COST`` for a donor neither a sure adult nor a child (the hand-labelled teenagers, a
    score between): the demo clip's performer drew a teenage boy's face in a `process` run
    (2026-12-06). Nobody else pays (a child's donors are children already, see :func:`clash`)."""
    donors = np.asarray(donors, np.float32)
    if not (np.isfinite(stranger) and stranger < ADULT):
        return np.zeros(donors.shape, np.float32)
    with np.errstate(invalid="ignore"):
        teen = (donors >= DONOR_ADULT) & (donors < DONOR_CHILD)
    return np.where(teen, UNSURE_COST, 0.0).astype(np.float32)
