"""Who may be shown: showing needs pooled evidence, hiding needs one doubt.

A track is shown as a registered person only once its pooled template (``evidence.py``) holds
at least ``min_frames`` embeddings (never one frame of a video), enough weight, a cosine to that
person's templates of at least ``threshold`` and a lead of ``min_margin`` over anyone else.

A shown track is embedded and checked on every frame it is visible. Any one doubt hides it in
that frame and restarts its evidence, so nothing gathered before the doubt can vouch for the face
after it:

- ``disagree``: the new embedding's cosine to the pool is below ``min_agreement``;
- ``jump``: its cosine to the previous frame's embedding is below ``min_continuity`` (a
  stranger who takes the box at the same size barely moves a long pool, but differs from the
  last frame at once);
- ``blank``: the face carries no identity now (dark, blurred, covered): it cannot be verified;
- ``unverified``: visible but not embedded (too small): it cannot be verified;
- ``crowded``, ``weak``, ``reacquired``: the tracker may have handed the box to another face;
- ``scene`` (a whole-frame change: a cut, a reconnect, a registry change): the pipeline ends
  every track, so every face starts a new track without evidence.

The same doubts restart the evidence of a track that is still hidden, so a pool can never mix
two faces.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from edge_agent.config import RecognitionConfig
from edge_agent.tracker import Track

# per-person best cosine of [n, dim] embeddings: [n, people]
Scorer = Callable[[np.ndarray], np.ndarray]


class EvidencePolicy:
    def __init__(self, cfg: RecognitionConfig, reverify_iou: float, still: bool = False) -> None:
        self.cfg = cfg
        self.reverify_iou = reverify_iou
        # A still photo has no second frame: one confident recognition decides, as before.
        self.min_frames = 1 if still else cfg.min_frames
        self.min_weight = 0.0 if still else cfg.min_weight

    def association_doubt(self, track: Track) -> Optional[str]:
        """Could the face in this track have changed since the last frame?"""
        if track.reacquired:
            return "reacquired"
        if track.crowded:
            return "crowded"
        if track.matched_iou < self.reverify_iou:
            return "weak"
        return None

    def recognisable(self, track: Track) -> bool:
        return min(track.face.width, track.face.height) >= self.cfg.min_face_px

    def due(self, track: Track) -> bool:
        """Embed shown tracks, tracks still gathering evidence and tracks near a registered person
        every frame; strangers far from everyone every ``recheck_frames``."""
        return (
            track.shown_as is not None
            or track.best_score is None
            or track.best_score >= self.cfg.candidate_similarity
            or track.since_recognition >= self.cfg.recheck_frames
        )

    def restart(self, track: Track, reason: str) -> None:
        """Hide the track now and forget its evidence (``best_score`` stays: it only schedules
        recognition, so a registered person's track keeps being embedded every frame)."""
        track.evidence.restart()
        track.shown_as = None
        track.doubt = reason

    def before_embedding(self, track: Track) -> None:
        """Association doubts of this frame, checked before anything is added."""
        reason = self.association_doubt(track)
        if reason is not None and (track.evidence.frames or track.shown_as is not None):
            self.restart(track, reason)

    def not_embedded(self, track: Track) -> None:
        """A visible track that got no embedding this frame: a shown one cannot be verified."""
        if track.shown_as is not None:
            self.restart(track, "unverified")

    def observe(self, track: Track, embedding: np.ndarray, weight: float, person_ids: list[str], scorer: Scorer) -> None:
        """Add this frame's embedding (after its doubts) and decide whether the track may be shown."""
        ev = track.evidence
        track.since_recognition = 0
        if weight <= 0:
            if track.shown_as is not None or ev.frames:
                self.restart(track, "blank")
            if track.best_score is None:
                track.best_score = -1.0  # no identity to go by: back to the slow schedule
            return
        if ev.frames:
            reason = None
            if ev.agreement(embedding) < self.cfg.min_agreement:
                reason = "disagree"
            elif ev.last is not None and float(embedding @ ev.last) < self.cfg.min_continuity:
                reason = "jump"
            if reason is not None:
                # The doubtful embedding does not seed the new pool either: if it was the same
                # person looking away, the pool rebuilds from the next frames, not from it.
                self.restart(track, reason)
                return
        ev.add(embedding, weight)
        track.shown_as, track.best_score = self._verdict(ev, person_ids, scorer)

    def _verdict(self, ev, person_ids: list[str], scorer: Scorer) -> tuple[Optional[str], float]:
        pooled = ev.template()
        if pooled is None or not person_ids:
            return None, -1.0
        scores = scorer(pooled[None])[0]
        order = np.argsort(-scores)
        best = float(scores[order[0]])
        second = float(scores[order[1]]) if len(order) > 1 else -1.0
        confident = (
            ev.frames >= self.min_frames
            and ev.weight >= self.min_weight
            and best >= self.cfg.threshold
            and best - second >= self.cfg.min_margin
        )
        return (person_ids[int(order[0])] if confident else None), best
