"""The pooled rule: showing needs evidence from several frames, hiding needs one doubt.

Embeddings here are unit vectors built to sit at known cosines from a registered template, so
each doubt is exercised on its own; the composited clips (test_hard_clips.py) run the real models."""

from __future__ import annotations

import numpy as np

from edge_agent.config import RecognitionConfig
from edge_agent.decide import EvidencePolicy
from edge_agent.faces import Face
from edge_agent.registry import Gallery
from edge_agent.scene import SceneCut
from edge_agent.tracker import IouTracker

RNG = np.random.default_rng(7)
LIN = RNG.standard_normal(128).astype(np.float32)
LIN /= np.linalg.norm(LIN)
GALLERY = Gallery(["lin"], ["Lin"], LIN[None], np.zeros(1, np.int64), 1)


def near(template: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector at ``cosine`` from ``template`` (random direction otherwise)."""
    noise = RNG.standard_normal(template.shape).astype(np.float32)
    noise -= (noise @ template) * template
    noise /= np.linalg.norm(noise)
    return (cosine * template + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def face(x: float, y: float, size: float = 60) -> Face:
    box = np.array([x, y, x + size, y + size], np.float32)
    pts = np.array([[x + 0.3 * size, y + 0.4 * size], [x + 0.7 * size, y + 0.4 * size], [x + 0.5 * size, y + 0.6 * size],
                    [x + 0.35 * size, y + 0.8 * size], [x + 0.65 * size, y + 0.8 * size]], np.float32)
    return Face(box, pts, 0.9)


def policy(still: bool = False, **kw) -> EvidencePolicy:
    return EvidencePolicy(RecognitionConfig(**kw), reverify_iou=0.5, still=still)


def observe(p: EvidencePolicy, track, embedding, weight: float = 1.0) -> None:
    p.before_embedding(track)
    p.observe(track, embedding, weight, GALLERY.person_ids, GALLERY.person_scores)


def shown_track(p: EvidencePolicy, tracker: IouTracker, x: float = 100, cosine: float = 0.8):
    (track,), _ = tracker.update([face(x, 100)])
    for i in range(p.min_frames + 1):
        observe(p, track, near(LIN, cosine))
        tracker.update([face(x + i + 1, 100)])
    assert track.shown_as == "lin"
    return track


def test_never_shown_on_one_frame_of_a_video_but_a_photo_may_be():
    p = policy(min_frames=4)
    (track,), _ = IouTracker().update([face(100, 100)])
    observe(p, track, near(LIN, 0.95))
    assert track.shown_as is None  # however confident: one frame is not evidence
    for _ in range(2):
        observe(p, track, near(LIN, 0.8))
    assert track.shown_as is None
    observe(p, track, near(LIN, 0.8))
    assert track.shown_as == "lin"  # the fourth agreeing frame
    photo = policy(still=True)
    (still,), _ = IouTracker().update([face(100, 100)])
    observe(photo, still, near(LIN, 0.8))
    assert still.shown_as == "lin"


def test_pooling_shows_a_person_no_single_frame_would():
    """Per-frame cosines around 0.40 (below the 0.42 a frame would need): their pool is steadier."""
    p = policy(threshold=0.42, min_frames=4, min_margin=0.0)
    (track,), _ = IouTracker().update([face(100, 100)])
    frames = [near(LIN, 0.40) for _ in range(12)]
    assert max(float(f @ LIN) for f in frames) < 0.42
    p.cfg = p.cfg.model_copy(update={"min_agreement": -0.5, "min_continuity": -0.5})
    for f in frames:
        observe(p, track, f)
    assert track.shown_as == "lin" and track.best_score > 0.6


def test_a_stranger_never_gathers_evidence():
    p = policy()
    (track,), _ = IouTracker().update([face(100, 100)])
    for _ in range(30):
        observe(p, track, near(LIN, 0.25))
    assert track.shown_as is None


def test_one_disagreeing_embedding_hides_and_restarts():
    p = policy()
    tracker = IouTracker()
    track = shown_track(p, tracker)
    stranger = near(LIN, 0.1)
    observe(p, track, stranger)
    assert track.shown_as is None and track.doubt == "disagree" and track.evidence.frames == 0
    # The old pool is gone: Lin again must earn min_frames agreeing frames before being shown.
    for _ in range(p.min_frames - 1):
        observe(p, track, near(LIN, 0.8))
        assert track.shown_as is None
    observe(p, track, near(LIN, 0.8))
    assert track.shown_as == "lin"


def test_a_jump_in_appearance_hides_even_when_the_long_pool_barely_moves():
    """A face that still agrees with a long pool (cosine above min_agreement) but not with the
    previous frame: the box changed hands."""
    p = policy(min_agreement=0.3, min_continuity=0.8)
    tracker = IouTracker()
    track = shown_track(p, tracker, cosine=0.97)
    last = track.evidence.last
    other = near(LIN, 0.55)
    assert other @ track.evidence.template() >= 0.3 and other @ last < 0.8
    observe(p, track, other)
    assert track.shown_as is None and track.doubt == "jump"


def test_a_blank_frame_hides_a_shown_track():
    p = policy()
    track = shown_track(p, IouTracker())
    observe(p, track, near(LIN, 0.8), weight=0.0)  # too dark or covered to carry identity
    assert track.shown_as is None and track.doubt == "blank"


def test_a_visible_track_that_cannot_be_embedded_is_hidden():
    p = policy(min_face_px=50)
    tracker = IouTracker()
    track = shown_track(p, tracker)
    tracker.update([face(track.face.box[0], 100, size=45)])  # the face shrank below min_face_px: cannot be verified
    assert not p.recognisable(track)
    p.before_embedding(track)
    p.not_embedded(track)
    assert track.shown_as is None and track.doubt == "unverified"


def test_crowded_weak_and_reacquired_associations_hide_at_once():
    p = policy()
    tracker = IouTracker(iou_match=0.3, hold_frames=5)
    track = shown_track(p, tracker)
    seen, _ = tracker.update([face(track.face.box[0] + 5, 100), face(track.face.box[0] + 40, 100)])  # a face overlaps
    assert track.crowded
    p.before_embedding(track)
    assert track.shown_as is None and track.doubt == "crowded"

    track = shown_track(p, tracker := IouTracker(iou_match=0.3), x=300)
    tracker.update([face(track.face.box[0] + 25, 100)])  # matched, but only at IoU ~0.4
    assert track.matched_iou < 0.5
    p.before_embedding(track)
    assert track.shown_as is None and track.doubt == "weak"

    track = shown_track(p, tracker := IouTracker(hold_frames=5), x=500)
    _, coasting = tracker.update([])
    assert coasting == [track]
    tracker.update([face(track.face.box[0], 100)])
    assert track.reacquired
    p.before_embedding(track)
    assert track.shown_as is None and track.doubt == "reacquired"


def test_shown_tracks_are_embedded_every_frame_and_far_strangers_rarely():
    p = policy(recheck_frames=10, candidate_similarity=0.25)
    tracker = IouTracker()
    track = shown_track(p, tracker)
    assert p.due(track)
    (stranger,), _ = IouTracker().update([face(300, 100)])
    assert p.due(stranger)  # never embedded: find out who it is
    observe(p, stranger, near(LIN, 0.05))
    stranger.since_recognition = 3
    assert not p.due(stranger)
    stranger.since_recognition = 10
    assert p.due(stranger)


def test_scene_cut_detects_a_whole_frame_change_not_motion():
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, :320] = 200
    cut = SceneCut(threshold=30)
    assert not cut.is_cut(frame)
    moved = np.roll(frame, 8, axis=1)  # a pan of 8 px
    moved[100:160, 300:360] = 255  # someone walks in
    assert not cut.is_cut(moved)
    assert cut.is_cut(255 - moved)  # another scene


def test_tracker_reset_ends_every_track():
    tracker = IouTracker()
    tracker.update([face(100, 100), face(300, 100)])
    old = list(tracker.tracks)
    tracker.reset()
    seen, _ = tracker.update([face(100, 100)])
    assert tracker.ended == old and seen[0] not in old and seen[0].evidence.frames == 0


def test_tracker_holds_then_drops_lost_tracks():
    tracker = IouTracker(hold_frames=2)
    (track,), _ = tracker.update([face(100, 100)])
    for expected in (1, 1, 0):
        _, coasting = tracker.update([])
        assert len(coasting) == expected
    assert tracker.ended == [track]
