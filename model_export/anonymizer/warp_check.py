"""`warp-check`: how far the donor's warp for small faces stretches the face along one axis.

    python -m model_export.anonymizer warp-check --shared $SHARED

Faces narrower than ``SMALL_FACE_PX`` get their donor by an affine warp of its 5 points onto
theirs (:func:`~edge_agent.anonymize.donor.landmark_affine`). For every such face the detector
finds on the crowd photos (from the donor's ``min_face_px``), with each of its 3 nearest donors, the check prints the
share of warps that stretch the face past 1.3x and 1.5x along one axis against the other, and the
largest stretch, for the deployed least-squares fit and for the robust fit (LMEDS) it replaced.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

NEAREST = 3


def warp_check(args) -> None:
    from edge_agent.anonymize.descriptors import pose
    from edge_agent.anonymize.diffusion import aligned_crop
    from edge_agent.anonymize.donor import SIZE_CLASSES, SMALL_FACE_PX, DonorBank, landmark_affine, stretch, target_landmarks
    from edge_agent.config import DonorConfig
    from edge_agent.models.yunet import YuNet
    from model_export.anonymizer.data import yunet_path

    det = YuNet(yunet_path(args.shared), threads=args.threads)
    bank = DonorBank()
    side, smallest = SIZE_CLASSES[0], DonorConfig().min_face_px
    fits: dict[str, list[float]] = {"least squares (deployed)": [], "LMEDS (before)": []}
    faces = 0
    for path in tqdm(sorted((Path(args.shared) / "faces/crowds").glob("*.jpg")), desc="warp-check", unit="photo"):
        img = cv2.imread(str(path))
        for face in det.detect(img):
            if not smallest <= face.width < SMALL_FACE_PX:
                continue
            faces += 1
            _, _, crop_lm = aligned_crop(img, face, side)
            for d in bank.nearest(*pose(face.landmarks), np.full(3, np.nan, np.float32), k=NEAREST):
                donor, donor_lm = bank.donor(d, False)
                donor_lm = donor_lm * side / donor.shape[0]
                target = target_landmarks(crop_lm, donor_lm, 1.0)
                fits["least squares (deployed)"].append(stretch(landmark_affine(donor_lm, target)))
                robust, _ = cv2.estimateAffine2D(donor_lm, target, method=cv2.LMEDS)
                fits["LMEDS (before)"].append(stretch(robust) if robust is not None else np.inf)
    for name, values in fits.items():
        v = np.array(values)
        print(f"{name}: {len(v)} warps of {faces} faces ({smallest:.0f}-{SMALL_FACE_PX:.0f} px, {NEAREST} donors each): "
              f"{(v > 1.3).mean():.1%} stretch past 1.3x, {(v > 1.5).mean():.1%} past 1.5x, largest {v.max():.2f}x")
