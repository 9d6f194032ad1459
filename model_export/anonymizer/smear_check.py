"""`smear-check`: how often the donor's motion-smear matching fires on sharp close-ups, and how
often it finds a real smear.

    python -m model_export.anonymizer smear-check --shared $SHARED [--share 0]

Two samples of the shared photos: the one the block test of :func:`~edge_agent.anonymize.donor.
smeared_throughout` was chosen on, and one it was not. Each has sharp faces (14 deepface photos
scaled to 200 and 520 px faces) and smeared ones (three photos at 120-520 px, smeared 13-41 px
along a row, a column and both diagonals); every face is rendered with 12 donors. A render
"smeared" is one whose donor :func:`~edge_agent.anonymize.donor.match_smear` smeared.
``--share 0`` switches the block test off (the rule before it).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

SAMPLES = {  # name: (deepface photos, every 4th from this one; smeared sources; donors, every 40th from this one)
    "chosen on": (0, ("face_recognition/examples/biden.jpg", "face_recognition/examples/obama.jpg", "deepface/img1.jpg"), 0),
    "not chosen on": (2, ("deepface/img2.jpg", "deepface/img5.jpg", "face_recognition/examples/alex-lacamoire.png"), 7),
}
SHARP_WIDTHS = (200, 520)
SMEARS = ((120, 13), (200, 21), (400, 41), (520, 31))  # face width, smear length (px)
PHOTOS, DONORS = 14, 12


def _scaled(det, img: np.ndarray, width: float):
    """``img`` scaled so that its largest face is ``width`` px wide, and that face (None: no face)."""
    faces = det.detect(img)
    if not faces:
        return None
    scale = width / max(faces, key=lambda f: f.width).width
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    faces = det.detect(img)
    return (img, max(faces, key=lambda f: f.width)) if faces else None


def _kernels(length: int) -> list[np.ndarray]:
    diag = np.eye(length, dtype=np.float32) / length
    return [np.ones((1, length), np.float32) / length, np.ones((length, 1), np.float32) / length, diag, np.ascontiguousarray(diag[:, ::-1])]


def sample_faces(shared: Path, det, first: int, sources: tuple[str, ...]) -> tuple[list, list]:
    """(sharp faces, smeared faces) of one sample: (image, face) pairs."""
    sharp = []
    for path in sorted((Path(shared) / "faces/deepface").glob("*.jpg"))[first::4][:PHOTOS]:
        for width in SHARP_WIDTHS:
            got = _scaled(det, cv2.imread(str(path)), width)
            if got:
                sharp.append(got)
    smeared = []
    for source in sources:
        img = cv2.imread(str(Path(shared) / "faces" / source))
        for width, length in SMEARS:
            got = _scaled(det, img, width)
            if not got:
                continue
            for kernel in _kernels(length):
                blurred = cv2.filter2D(got[0], -1, kernel)
                faces = det.detect(blurred)
                if faces:
                    smeared.append((blurred, max(faces, key=lambda f: f.width)))
    return sharp, smeared


def smeared_share(anon, faces: list, donors: list[int], desc: str) -> float:
    """Share of the renders (each face with each donor) whose donor was smeared."""
    import edge_agent.anonymize.donor as donor

    fired = []
    real = donor.smear
    donor.smear = lambda *a: fired.append(1) or real(*a)
    try:
        hits = 0
        for img, face in tqdm(faces, desc=desc, unit="face"):
            for i in donors:
                before = len(fired)
                anon.render(img.copy(), face, donor._Track(donor=i), 1)
                hits += len(fired) > before
    finally:
        donor.smear = real
    return hits / max(len(faces) * len(donors), 1)


def smear_check(args) -> None:
    import edge_agent.anonymize.donor as donor
    from edge_agent.models.yunet import YuNet
    from model_export.anonymizer.data import yunet_path

    det = YuNet(yunet_path(args.shared), threads=args.threads)
    anon = donor.DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    pool = [i for i in range(anon.bank.size) if anon.bank.has_big(i) and anon.bank.clear(i)]
    deployed = donor.SMEAR_SHARE
    donor.SMEAR_SHARE = deployed if args.share is None else args.share
    try:
        for name, (first, sources, donor_first) in SAMPLES.items():
            sharp, smeared = sample_faces(args.shared, det, first, sources)
            donors = pool[donor_first::40][:DONORS]
            false = smeared_share(anon, sharp, donors, f"sharp ({name})")
            found = smeared_share(anon, smeared, donors, f"smeared ({name})")
            print(f"sample {name!r}, block share {donor.SMEAR_SHARE:g}: {len(sharp)} sharp faces, {false:.1%} of their renders "
                  f"smeared; {len(smeared)} smeared faces, {found:.1%} of their renders smeared ({len(donors)} donors each)")
    finally:
        donor.SMEAR_SHARE = deployed
