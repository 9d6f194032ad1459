"""What lets eval-realism's two-sample classifier tell donor faces from real ones.

    python -m model_export.anonymizer --threads 1 classifier-probe --shared $SHARED

Prints, for the donor as deployed (d=1) and for variants of its head-region blur and of the
paste's shape, the classifier's accuracy on the colour photos and on held-out synthetic faces
(64-200 px, full and half light), its accuracy per feature group (HOG; L*a*b* cell means; L* cell spread) and the
project recogniser's re-ID over held-out LFW identities (the blur is what hides the stranger's
face outline, so a variant that helps the classifier must also keep re-ID), and, pair by pair on
the colour photos' faces from 80 px, how close each anonymized face stays to its original for the
project recogniser (cosine) and dlib's (distance; under 0.6 dlib calls them one person), with
a solid fill of the face ellipse as the reference: what hair, outline and background alone leave.
"Own face pasted" pastes each synthetic scene's own aligned crop back through the same pipeline
at its own landmarks: what is left is the compositing. "No head blur" leaves out the blurred
head layer under the paste (the stranger's outline, hair and ears then stay as they are): a
diagnostic of what the blur costs the classifier, not a candidate.
Numbers only; nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
from tqdm import tqdm

import edge_agent.anonymize.donor as donor_mod
from model_export.anonymizer import realism

SIZES = (64, 128, 200)
GAINS = (1.0, 0.5)
PAIR_MIN_PX = 80  # photo faces this wide and wider are compared with their anonymized selves
SAME_COS, SAME_DLIB = 0.35, 0.6  # the donor check's bound until 2026-12-05 (0.25 since; kept so runs compare); dlib's same-person distance


def _no_head_layer(frame, face, inv, alpha):
    """The donor module's ``base_layer`` with nothing drawn: the frame as it is, at weight 0."""
    rows, cols, region = donor_mod.face_region(face, frame.shape)
    return frame[rows, cols].astype(np.float32), np.zeros(region.shape, np.float32)


BLUR_FLOOR = 0.001  # share of the head: the blurs fall to their 1.2 px floor
FLOOR = {"STRONG_BLUR": BLUR_FLOOR, "LIGHT_BLUR": BLUR_FLOOR}
# the paste a third wider (cheek to cheek past the face's outline, which it then redraws) with a
# feather half as wide: what the stranger's blurred outline gave away is the donor's now
WIDE = {"PASTE_REACH": (1.0, 0.95, 1.3), "FEATHER": 0.12}
VARIANTS = {"deployed": {}, "half the strong blur": {"STRONG_BLUR": donor_mod.STRONG_BLUR / 2},
            "blur at its floor": FLOOR, "wide paste, blur at its floor": {**WIDE, **FLOOR},
            "no head blur": {"base_layer": _no_head_layer}}
_CACHED = (donor_mod.paste_masks, donor_mod.forehead_band, donor_mod.rim_bands)  # depend on the paste's shape


class _AnyHog:
    """The HOG hit rate is not what is probed: skip dlib."""

    def finds(self, img, box) -> bool:
        return True


def _groups(real: np.ndarray, fake: np.ndarray) -> dict:
    """Accuracy per feature group of :func:`realism.crop_features` (HOG first, then 64 colour values)."""
    n_hog = real.shape[1] - 64
    cols = {"hog": slice(0, n_hog), "lab means": slice(n_hog, n_hog + 48), "L spread": slice(n_hog + 48, None)}
    return {k: realism.two_sample_accuracy(real[:, s], fake[:, s]) for k, s in cols.items()}


def _synthetic(args, anon, det, own: bool) -> list[dict]:
    from edge_agent.anonymize.diffusion import aligned_crop
    from edge_agent.anonymize.donor import _Track
    from model_export.anonymizer.refiner import _OneDonor
    from model_export.anonymizer.synth import load

    data = load(Path(args.synth), heldout=True)
    n = min(args.synth_faces, len(data["index"]))
    rng = np.random.default_rng(0)
    recs: list[dict] = []
    bank = anon.bank
    for j in tqdm(range(n), desc="synthetic", unit="face"):
        img0 = cv2.imread(str(Path(args.synth) / "raw" / f"{int(data['index'][j]):06d}.jpg"))
        if img0 is None:
            continue
        fw = float(data["box"][j, 2] - data["box"][j, 0])
        for width in SIZES:
            for gain in GAINS:
                img = realism.pad(realism.scene(img0, width, fw, gain, rng))
                faces = det.detect(img)
                if not faces:
                    continue
                face = max(faces, key=lambda f: f.width)
                out = img.copy()
                if own:
                    crop, _, landmarks = aligned_crop(img, face, donor_mod.BANK_SIDE)
                    anon.bank = _OneDonor(crop, landmarks)
                    anon.render(out, face, _Track(donor=0), j)
                else:
                    with realism.new_tracks(anon, j):
                        anon.anonymize(out, face, j)
                realism.measure(recs, img, out, [face], _AnyHog())
    anon.bank = bank
    return recs


def _pairs(args, anon, det, emb, check) -> str:
    """Each colour-photo face from ``PAIR_MIN_PX`` against its anonymized self: the worst cosine
    (project recogniser) and the least dlib distance, and how many pass those bounds."""
    cos, dist = [], []
    for k, img in realism.colour_photos(args.shared, "photo pairs"):
        faces = det.detect(img)
        out, served = realism.anonymized(anon, img, faces, [1000 * k + j for j in range(len(faces))])
        for f in served:
            if f.width >= PAIR_MIN_PX:
                cos.append(float(emb.embed(img, [f])[0] @ emb.embed(out, [f])[0]))
                shape = check.shape(img, f.box)
                dist.append(float(np.linalg.norm(check.embed(img, shape) - check.embed(out, shape))))
    if not cos:
        return f"  photo pairs: no face from {PAIR_MIN_PX} px"
    cos, dist = np.array(cos), np.array(dist)
    return (f"  photo pairs ({len(cos)} faces from {PAIR_MIN_PX} px): cosine max {cos.max():.2f}, {int((cos >= SAME_COS).sum())} at "
            f"{SAME_COS} or more; dlib distance min {dist.min():.2f}, {int((dist < SAME_DLIB).sum())} under {SAME_DLIB}")


def _line(name: str, recs: list[dict]) -> str:
    recs = [r for r in recs if r["width"] >= realism.REALISM_MIN_PX]
    real, fake = np.stack([r["feat_orig"] for r in recs]), np.stack([r["feat_anon"] for r in recs])
    g = _groups(real, fake)
    return (f"  {name}: classifier {realism.two_sample_accuracy(real, fake):.2f} ({len(recs)} faces; HOG {g['hog']:.2f}, "
            f"L*a*b* means {g['lab means']:.2f}, L* spread {g['L spread']:.2f})")


def probe(args) -> None:
    from edge_agent.anonymize.classical import Solid
    from edge_agent.anonymize.donor import DonorAnonymizer
    from edge_agent.models.arcface import ArcFaceEmbedder
    from edge_agent.models.yunet import YuNet
    from model_export.anonymizer.data import arcface_path, yunet_path
    from model_export.anonymizer.independent import DlibCheck

    det = YuNet(yunet_path(args.shared), threads=args.threads)
    emb = ArcFaceEmbedder(arcface_path(args.shared), threads=args.threads)
    check = DlibCheck()
    print(f"solid fill (reference):\n{_pairs(args, Solid(), det, emb, check)}")
    deployed = {k: getattr(donor_mod, k) for setting in VARIANTS.values() for k in setting}
    try:
        for name, setting in VARIANTS.items():
            set_donor_constants({**deployed, **setting})
            anon = DonorAnonymizer(args.bank, degree=1.0, budget_ms=None, frame_budget_ms=None)
            blurs = ("no head layer" if donor_mod.base_layer is _no_head_layer else
                     f"strong blur {donor_mod.STRONG_BLUR:.4f}, light blur {donor_mod.LIGHT_BLUR:.4f} of the head")
            print(f"{name} ({blurs}, paste reach {donor_mod.PASTE_REACH}, feather {donor_mod.FEATHER}):")
            print(_line("colour photos", realism.photo_records(args.shared, {"d": anon}, det, _AnyHog())["d"]))
            print(_line("synthetic", _synthetic(args, anon, det, own=False)))
            print(_line("synthetic, own face pasted", _synthetic(args, anon, det, own=True)))
            print(_pairs(args, anon, det, emb, check))
            if args.gallery:
                reid = SimpleNamespace(data=args.data, shared=args.shared, threads=args.threads, gallery=args.gallery,
                                       cache=args.cache, dlib_probes=args.dlib_probes)
                realism.reid_rows(reid, {name: anon}, det)
    finally:
        set_donor_constants(deployed)


def set_donor_constants(values: dict) -> None:
    """Set the donor module's constants (and drop the masks cached for the old paste shape)."""
    for k, v in values.items():
        setattr(donor_mod, k, v)
    for f in _CACHED:
        f.cache_clear()
    donor_mod._CLEAR_FOREHEAD.clear()
