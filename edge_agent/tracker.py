"""A light IoU tracker: it carries each face's pooled evidence from frame to frame, flags the
associations where a box may have changed hands, and keeps hiding a face for a few frames after
the detector loses it."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edge_agent.evidence import TrackEvidence
from edge_agent.faces import Face


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [N,4] and [M,4] boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


def box_iou(a, b) -> float:
    """IoU of two (x0, y0, x1, y1, ...) boxes."""
    return float(iou_matrix(np.asarray([a[:4]], np.float32), np.asarray([b[:4]], np.float32))[0, 0])


@dataclass
class Track:
    track_id: int
    face: Face
    seed: int
    age: int = 0  # frames since creation
    missed: int = 0  # consecutive frames without a detection
    since_recognition: int = 0
    evidence: TrackEvidence = field(default_factory=TrackEvidence)
    shown_as: Optional[str] = None  # the registered person this track is shown as, else hidden
    best_score: Optional[float] = None  # last pool's cosine to its closest registered person (None: never embedded)
    doubt: Optional[str] = None  # why its evidence last restarted
    matched_iou: float = 1.0
    crowded: bool = False  # another detection overlaps: an identity swap is possible
    reacquired: bool = False  # matched again after coasting: maybe not the same face


class IouTracker:
    """Greedy highest-IoU association; tracks coast for ``hold_frames`` frames when missed."""

    def __init__(self, iou_match: float = 0.3, hold_frames: int = 8) -> None:
        self.iou_match = iou_match
        self.hold_frames = hold_frames
        self.tracks: list[Track] = []
        self.ended: list[Track] = []
        self._reset_ended: list[Track] = []
        self._ids = itertools.count(1)
        self._rng = random.SystemRandom()

    def reset(self) -> None:
        """End every track (a scene cut, a reconnect): nothing carries over to the next frame;
        the ended tracks are reported by the next ``update``."""
        self._reset_ended = self.tracks
        self.tracks = []

    def update(self, faces: list[Face]) -> tuple[list[Track], list[Track]]:
        """Associate this frame's faces; returns (tracks seen now, tracks coasting unseen).

        Tracks that coast too long are dropped and their ids are returned nowhere: callers
        learn of the end through ``ended``."""
        self.ended, self._reset_ended = self._reset_ended, []
        boxes = np.array([f.box for f in faces], np.float32).reshape(-1, 4)
        previous = np.array([t.face.box for t in self.tracks], np.float32).reshape(-1, 4)
        ious = iou_matrix(previous, boxes)
        matched_tracks: set[int] = set()
        matched_faces: set[int] = set()
        for flat in np.argsort(-ious, axis=None):
            ti, fi = divmod(int(flat), max(len(faces), 1))
            if ious[ti, fi] < self.iou_match:
                break
            if ti in matched_tracks or fi in matched_faces:
                continue
            track = self.tracks[ti]
            track.reacquired = track.missed > 0
            track.face, track.matched_iou, track.missed = faces[fi], float(ious[ti, fi]), 0
            matched_tracks.add(ti)
            matched_faces.add(fi)
        seen, coasting, kept = [], [], []
        for ti, track in enumerate(self.tracks):
            track.age += 1
            track.since_recognition += 1
            if ti in matched_tracks:
                seen.append(track)
                kept.append(track)
            else:
                track.missed += 1
                if track.missed <= self.hold_frames:
                    coasting.append(track)
                    kept.append(track)
                else:
                    self.ended.append(track)
        for fi, face in enumerate(faces):
            if fi not in matched_faces:
                track = Track(next(self._ids), face, seed=self._rng.getrandbits(31))
                seen.append(track)
                kept.append(track)
        self.tracks = kept
        # A detection overlapping another one (or its track) is where a tracker swaps ids.
        if len(boxes) > 1:
            overlap = iou_matrix(boxes, boxes)
            np.fill_diagonal(overlap, 0)
            busy = {i for i in range(len(faces)) if overlap[i].max() > 0.05}
        else:
            busy = set()
        index = {id(f): i for i, f in enumerate(faces)}
        for track in seen:
            track.crowded = index.get(id(track.face)) in busy
        return seen, coasting
