"""Where a turned face lies in the aligned crop: the paste ellipse's ``TURN_SHIFT`` and ``TURN_WIDEN``.

Fits, over the donor bank's 128 px crops, the middle and the half width of each face (the convex
hull of MediaPipe's 468-point face mesh, in eye distances from the eyes' middle) against its yaw
(:func:`~edge_agent.anonymize.descriptors.pose`), and prints the table by yaw and the fit. Runs in
its own virtualenv (``make mesh-venv``: mediapipe 0.10.14 ships its face-mesh model in the wheel
and needs numpy < 2 and protobuf < 5; never the project's .venv):

    .venv-mesh/bin/python -m model_export.anonymizer.face_hulls --bank edge_agent/assets/donor_bank.npz

The convex hull, not the mesh's face-oval ring: on a turned face the far side of that ring folds
over the nose. Numbers only; nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

YAW_BINS = (-1.0, -0.4, -0.2, -0.05, 0.05, 0.2, 0.4, 1.0)


def hull_extent(points: np.ndarray, landmarks: np.ndarray) -> tuple[float, float]:
    """(left, right) x of the convex hull of ``points`` ([N, 2] pixels), in eye distances from the
    middle of the eyes of ``landmarks`` (the 5 points, eyes first)."""
    ring = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2)
    eyes_x = float(landmarks[:2, 0].mean())
    eye_d = float(np.hypot(*(landmarks[1] - landmarks[0])))
    return (float(ring[:, 0].min()) - eyes_x) / eye_d, (float(ring[:, 0].max()) - eyes_x) / eye_d


def bank_extents(bank: Path) -> tuple[np.ndarray, np.ndarray]:
    """(yaw [n], (left, right) [n, 2]) of the bank's 128 px crops the mesh finds a face in."""
    import mediapipe as mp
    from tqdm import tqdm

    with np.load(bank, allow_pickle=False) as z:
        jpeg, offsets, landmarks, yaw = z["jpeg"], z["offsets"], z["landmarks"], z["yaw"]
    yaws, extents = [], []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, min_detection_confidence=0.3) as mesh:
        for i in tqdm(range(len(yaw)), desc="face mesh", unit="face"):
            crop = cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
            found = mesh.process(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)).multi_face_landmarks
            if found:
                pts = np.array([(p.x, p.y) for p in found[0].landmark], np.float32) * crop.shape[1]
                yaws.append(float(yaw[i]))
                extents.append(hull_extent(pts, landmarks[i]))
    return np.array(yaws), np.array(extents).reshape(-1, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bank", type=Path, default=Path("edge_agent/assets/donor_bank.npz"))
    yaw, ext = bank_extents(p.parse_args().bank)
    middle, half = ext.mean(1), (ext[:, 1] - ext[:, 0]) / 2
    print(f"{len(yaw)} crops with a face; per yaw bin, median in eye distances from the eyes' middle:")
    for lo, hi in zip(YAW_BINS, YAW_BINS[1:]):
        s = (yaw >= lo) & (yaw < hi)
        if s.any():
            print(f"  yaw {lo:+.2f}..{hi:+.2f}: {s.sum():4d} faces, left {np.median(ext[s, 0]):+.2f}, right {np.median(ext[s, 1]):+.2f}, "
                  f"middle {np.median(middle[s]):+.2f}, half width {np.median(half[s]):.2f}")
    shift = np.linalg.lstsq(np.stack([yaw, np.ones_like(yaw)], 1), middle, rcond=None)[0]
    widen = np.linalg.lstsq(np.stack([np.abs(yaw), np.ones_like(yaw)], 1), half, rcond=None)[0]
    print(f"middle = {shift[0]:+.3f} * yaw {shift[1]:+.3f}  (TURN_SHIFT {-shift[0]:.2f})")
    print(f"half width = {widen[0]:.3f} * |yaw| + {widen[1]:.3f}  (TURN_WIDEN {widen[0]:.2f})")


if __name__ == "__main__":
    main()
