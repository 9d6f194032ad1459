"""The vote: unknown counts against, and a tracker ID switch cannot un-hide a stranger."""

from __future__ import annotations

import numpy as np

from edge_agent.config import RecognitionConfig
from edge_agent.decide import UNKNOWN, VotePolicy
from edge_agent.faces import Face
from edge_agent.tracker import IouTracker


def face(x: float, y: float, size: float = 60) -> Face:
    box = np.array([x, y, x + size, y + size], np.float32)
    pts = np.array([[x + 0.3 * size, y + 0.4 * size], [x + 0.7 * size, y + 0.4 * size], [x + 0.5 * size, y + 0.6 * size],
                    [x + 0.35 * size, y + 0.8 * size], [x + 0.65 * size, y + 0.8 * size]], np.float32)
    return Face(box, pts, 0.9)


def policy(**kw) -> VotePolicy:
    return VotePolicy(RecognitionConfig(**kw), reverify_iou=0.5)


def test_unknown_votes_count_against():
    p = policy(min_votes=2, window=5)
    tracker = IouTracker()
    (track,), _ = tracker.update([face(100, 100)])
    p.record(track, "lin")
    assert p.shown_as(track) is None  # one vote is not enough
    p.record(track, "lin")
    assert p.shown_as(track) == "lin"
    p.record(track, UNKNOWN)
    assert p.shown_as(track) is None  # 2 for, 1 against: margin too small
    p.record(track, "lin")
    p.record(track, "lin")
    assert p.shown_as(track) == "lin"


def test_due_schedule():
    p = policy(min_votes=2, recheck_frames=10)
    tracker = IouTracker()
    (track,), _ = tracker.update([face(100, 100)])
    assert p.due(track)
    p.record(track, UNKNOWN)
    p.record(track, UNKNOWN)
    for _ in range(5):
        tracker.update([face(101, 100)])
    assert not p.due(track)  # a stranger is re-checked only every recheck_frames
    p.record(track, "lin")
    assert p.due(track)  # leaning toward a registered person: checked every frame


def test_id_switch_to_a_stranger_hides_in_the_same_frame():
    """Lin's track; a stranger walks in front, the tracker hands Lin's track to the stranger."""
    p = policy(min_votes=2)
    tracker = IouTracker(iou_match=0.3)
    (track,), _ = tracker.update([face(100, 100)])
    p.record(track, "lin")
    p.record(track, "lin")
    assert p.shown_as(track) == "lin"
    # Crossing: two overlapping detections, the stranger's box now best matches Lin's track.
    seen, _ = tracker.update([face(110, 100), face(150, 100)])
    lin_track = next(t for t in seen if t.track_id == track.track_id)
    assert lin_track.crowded and p.due(lin_track)
    p.record(lin_track, UNKNOWN)  # the recognition of the face now in the track: a stranger
    assert p.shown_as(lin_track) is None
    assert lin_track.votes == [UNKNOWN]  # the old votes cannot carry over


def test_reacquired_track_is_reverified():
    p = policy(min_votes=2)
    tracker = IouTracker(hold_frames=5)
    (track,), _ = tracker.update([face(100, 100)])
    p.record(track, "lin")
    p.record(track, "lin")
    _, coasting = tracker.update([])
    assert coasting == [track]
    (again,), _ = tracker.update([face(102, 100)])
    assert again is track and again.reacquired and p.due(again)
    p.record(again, UNKNOWN)
    assert p.shown_as(again) is None


def test_removed_person_loses_votes():
    p = policy(min_votes=2)
    tracker = IouTracker()
    (track,), _ = tracker.update([face(100, 100)])
    p.record(track, "lin")
    p.record(track, "lin")
    p.forget_people(track, present={"alex"})
    assert p.shown_as(track) is None


def test_tracker_holds_then_drops_lost_tracks():
    tracker = IouTracker(hold_frames=2)
    (track,), _ = tracker.update([face(100, 100)])
    for expected in (1, 1, 0):
        _, coasting = tracker.update([])
        assert len(coasting) == expected
    assert tracker.ended == [track]
