"""Who may be shown: a vote over recent recognitions per track, where unknown counts against.

A track is shown only when its leading person has at least ``min_votes`` votes *and* leads
every other outcome (unknown or another person) by ``min_votes``. Anything that could mean a
different face now sits in the track (a weak or crowded association, a re-acquired track)
triggers a recognition in the same frame, and a disagreeing result wipes the votes, so a
tracker ID switch cannot carry a registered person's status onto a stranger.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from edge_agent.config import RecognitionConfig
from edge_agent.tracker import Track

UNKNOWN = None


class VotePolicy:
    def __init__(self, cfg: RecognitionConfig, reverify_iou: float) -> None:
        self.cfg = cfg
        self.reverify_iou = reverify_iou

    def suspicious(self, track: Track) -> bool:
        """Could the face in this track have changed identity since the last frame?"""
        return track.crowded or track.matched_iou < self.reverify_iou or track.reacquired

    def due(self, track: Track) -> bool:
        """Recognise new tracks until they have enough votes, undecided tracks that lean toward
        a registered person every frame (so a hidden registered person reappears quickly), and
        everyone else every ``recheck_frames``."""
        undecided = self.leader(track) is not UNKNOWN and self.shown_as(track) is None
        return (
            len(track.votes) < self.cfg.min_votes
            or undecided
            or track.since_recognition >= self.cfg.recheck_frames
            or self.suspicious(track)
        )

    def recognisable(self, track: Track) -> bool:
        return min(track.face.width, track.face.height) >= self.cfg.min_face_px

    def record(self, track: Track, person_id: Optional[str]) -> None:
        """Add one recognition outcome (a person id, or UNKNOWN)."""
        if self.suspicious(track) and track.votes and person_id != self.leader(track):
            track.votes.clear()
        track.votes.append(person_id)
        del track.votes[: -self.cfg.window]
        track.since_recognition = 0

    @staticmethod
    def leader(track: Track) -> Optional[str]:
        known = Counter(v for v in track.votes if v is not UNKNOWN)
        return known.most_common(1)[0][0] if known else UNKNOWN

    def shown_as(self, track: Track) -> Optional[str]:
        """The registered person this track may be shown as, or None (hide it)."""
        leader = self.leader(track)
        if leader is UNKNOWN:
            return None
        support = sum(1 for v in track.votes if v == leader)
        against = len(track.votes) - support
        if support >= self.cfg.min_votes and support - against >= self.cfg.min_votes:
            return leader
        return None

    def forget_people(self, track: Track, present: set) -> None:
        """After a registry change: votes for people no longer registered turn into unknown."""
        track.votes[:] = [v if v in present else UNKNOWN for v in track.votes]
