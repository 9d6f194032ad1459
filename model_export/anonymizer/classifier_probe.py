"""What lets eval-realism's two-sample classifier tell donor faces from real ones.

    python -m model_export.anonymizer --threads 1 classifier-probe --shared $SHARED

Prints, for the donor as deployed (d=1) and for variants of its head-region blur and of the
paste's shape, the classifier's accuracy on the colour photos and on held-out synthetic faces
(64-200 px, full and half light), its accuracy per feature group (HOG; L*a*b* cell means; L* cell spread) and the
project recogniser's re-ID over held-out LFW identities (the blur is what hides the stranger's
face outline, so a variant that helps the classifier must also keep re-ID). ``self`` pastes each
synthetic face's *own* aligned crop through the same pipeline: what is left is the compositing.
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
BLUR_FLOOR = 0.001  # share of the head: the blurs fall to their 1.2 px floor
FLOOR = {"STRONG_BLUR": BLUR_FLOOR, "LIGHT_BLUR": BLUR_FLOOR}
# the paste a third wider (cheek to cheek past the face's outline, which it then redraws) with a
# feather half as wide: what the stranger's blurred outline gave away is the donor's now
WIDE = {"PASTE_REACH": (1.0, 0.95, 1.3), "FEATHER": 0.12}
VARIANTS = {"deployed": {}, "half the strong blur": {"STRONG_BLUR": donor_mod.STRONG_BLUR / 2},
            "blur at its floor": FLOOR, "wide paste, blur at its floor": {**WIDE, **FLOOR}}
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
                anon.forget(j)
                if own:
                    anon.bank = _OneDonor(data["crop128"][j], data["landmarks128"][j])
                    anon.render(out, face, _Track(donor=0), j)
                else:
                    anon.anonymize(out, face, j)
                realism.measure(recs, img, out, [face], _AnyHog())
    anon.bank = bank
    return recs


def _line(name: str, recs: list[dict]) -> str:
    recs = [r for r in recs if r["width"] >= realism.REALISM_MIN_PX]
    real, fake = np.stack([r["feat_orig"] for r in recs]), np.stack([r["feat_anon"] for r in recs])
    g = _groups(real, fake)
    return (f"  {name}: classifier {realism.two_sample_accuracy(real, fake):.2f} ({len(recs)} faces; HOG {g['hog']:.2f}, "
            f"L*a*b* means {g['lab means']:.2f}, L* spread {g['L spread']:.2f})")


def probe(args) -> None:
    from edge_agent.anonymize.donor import DonorAnonymizer
    from edge_agent.models.yunet import YuNet
    from model_export.anonymizer.data import yunet_path

    det = YuNet(yunet_path(args.shared), threads=args.threads)
    deployed = {k: getattr(donor_mod, k) for setting in VARIANTS.values() for k in setting}
    try:
        for name, setting in VARIANTS.items():
            set_donor_constants({**deployed, **setting})
            anon = DonorAnonymizer(args.bank, degree=1.0, budget_ms=None, frame_budget_ms=None)
            print(f"{name} (strong blur {donor_mod.STRONG_BLUR:.4f}, light blur {donor_mod.LIGHT_BLUR:.4f} of the head, "
                  f"paste reach {donor_mod.PASTE_REACH}, feather {donor_mod.FEATHER}):")
            print(_line("colour photos", realism.photo_records(args.shared, {"d": anon}, det, _AnyHog())["d"]))
            print(_line("synthetic", _synthetic(args, anon, det, own=False)))
            print(_line("synthetic, own face pasted", _synthetic(args, anon, det, own=True)))
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
