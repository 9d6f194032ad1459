"""The recogniser check a generative anonymizer makes before its face leaves: is it still the person?

The agent's recogniser embeds the original face and the anonymized one; at cosine
``max_similarity`` or above the anonymized face is not let out. A recogniser downstream does not
use our detector: another detector places the same face a few per cent off, and on the demo clip
that alone can move an anonymized face from below the bound to above it. So both
can be embedded at the face's own landmarks and at shifted ones (``views``), the closest pair
counting. A check also holds only for the pose it was made at, and a face that passed close to
the bound is checked on every frame it is drawn (:func:`drifted`).
"""

from __future__ import annotations

import numpy as np

from edge_agent.anonymize.descriptors import pose
from edge_agent.faces import Face

# (dx, dy, scale) in eye distances / box scale: how another detector may place the same face
JITTER = ((0.0, 0.0, 1.0), (0.08, 0.0, 1.0), (-0.08, 0.0, 1.0), (0.0, 0.08, 1.0), (0.0, -0.08, 1.0), (0.0, 0.0, 0.9), (0.0, 0.0, 1.1))
# The first views of JITTER the agent checks: its own only. Three (its own and the two sideways
# shifts) were tried in a scratch harness on the demo clip: no clear gain for more time per frame.
CHECK_VIEWS = 1
RECHECK_DRIFT = (0.15, 0.1, 1.5)  # yaw, pitch, width ratio from the last check past which it is made again
# A check passed within this of the bound is made again on every frame the face is drawn: on the
# demo clip the diffusion mode's re-used face passed at 0.28-0.30 and, the person laughing, stood
# at 0.40 to the original a few frames later, between two checks.
WATCH_MARGIN = 0.1


def jittered(face: Face, views: int = len(JITTER)) -> list[Face]:
    """The face as other detectors might report it (the unjittered face first)."""
    lm = np.asarray(face.landmarks, np.float32)
    eye_d = float(np.hypot(*(lm[1] - lm[0]))) or float(face.width) / 3
    centre = lm.mean(0)
    out = []
    for dx, dy, s in JITTER[:views]:
        shift = np.array([dx, dy], np.float32) * eye_d
        box = ((np.asarray(face.box, np.float32).reshape(2, 2) - centre) * s + centre + shift).reshape(4)
        out.append(Face(box, (lm - centre) * s + centre + shift, face.score))
    return out


class IdentityCheck:
    """``person(frame, face)`` before the face is replaced, ``too_close(person, frame, face)`` after."""

    def __init__(self, embedder, max_similarity: float, views: int = CHECK_VIEWS) -> None:
        self.embedder, self.max_similarity, self.views = embedder, float(max_similarity), int(views)

    def person(self, frame: np.ndarray, face: Face) -> np.ndarray:
        """[views, dim]: the original face as the views see it."""
        return self.embedder.embed(frame, jittered(face, self.views))

    def similarity(self, person: np.ndarray, frame: np.ndarray, face: Face) -> float:
        """The closest the anonymized face in ``frame`` comes to ``person`` over the views."""
        return float(np.max(np.sum(person * self.embedder.embed(frame, jittered(face, self.views)), axis=1)))

    def too_close(self, person: np.ndarray, frame: np.ndarray, face: Face) -> bool:
        return self.similarity(person, frame, face) >= self.max_similarity

    def passed(self, person: np.ndarray, frame: np.ndarray, face: Face,
               before: tuple[float, float, float, bool] | None = None) -> tuple[float, float, float, bool] | None:
        """None when the anonymized face in ``frame`` is too close to ``person``; else what the check
        was made at (:func:`drifted` takes it). A face once close to the bound (``before``, its
        previous check) stays watched: its similarity moves from frame to frame (0.25 to 0.40)."""
        similarity = self.similarity(person, frame, face)
        if similarity >= self.max_similarity:
            return None
        yaw, pitch = pose(face.landmarks)
        close = similarity >= self.max_similarity - WATCH_MARGIN or (before is not None and before[3])
        return yaw, pitch, float(face.width), close


def drifted(checked: tuple[float, float, float, bool] | None, face: Face) -> bool:
    """Is a new check due: the check passed close to the bound (``WATCH_MARGIN``), or the face
    turned or neared (``RECHECK_DRIFT``) since ``checked`` (:meth:`IdentityCheck.passed`)? A check
    at one pose says nothing of the head turned or twice as near: how much of the person's shading
    and outline an anonymized face keeps changes with both."""
    if checked is None:
        return False
    if checked[3]:
        return True
    yaw, pitch = pose(face.landmarks)
    ratio = float(face.width) / max(checked[2], 1e-6)
    return (abs(yaw - checked[0]) > RECHECK_DRIFT[0] or abs(pitch - checked[1]) > RECHECK_DRIFT[1]
            or not 1 / RECHECK_DRIFT[2] <= ratio <= RECHECK_DRIFT[2])
