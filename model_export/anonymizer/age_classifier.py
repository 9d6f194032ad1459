"""`age-classifier`: train the child-or-adult classifier that steers the donor choice.

    python -m model_export.anonymizer --threads 2 age-classifier --shared $SHARED

Why: donors were chosen by pose, skin tone and apparent sex only, and children got adults' faces
(an old woman's on a girl of about ten, ``crowds/9.jpg``, 2026-12-06). No age model installs
from PyPI and no labelled photos of children could be had offline, so the children are synthetic:
faces moved along the generator's child direction (``age_direction``): far along it (the
``synth_young`` run, mostly toddlers, labelled child by construction) and to where the labelled
children lie (``synth_children``, school age, hand-labelled by looking), with the close-up donors
hand-labelled in ``weights/donor_age_labels.csv`` (each hand-labelled child three times).
Adults: LFW's training people (grey press photos), the faces hand-labelled adult, and the
unlabelled synthetic faces that lie further from the children along the child direction than
the median labelled adult (``age_direction``'s ``child_along.npz``): with LFW as the only adults,
the net learnt press photo against synthetic face as much as adult against child. The net, its
input and its camera-like augmentation are the apparent-sex net's (:func:`train_and_export`).

Held out: LFW's held-out people and the colour photos (adults), the synthetic runs' every 8th
face, and real photos judged by looking (:data:`CHILD_PHOTOS`: every face a child;
:data:`ADULT_PHOTOS`: every face an adult), detected and aligned as the agent does.
``--evaluate``: only score the model at ``--out``, and with ``--shared`` also count how many
tracks of the children it takes for children get a donor past the recogniser check
(:func:`donors_drawn`). Exports ``edge_agent/assets/apparent_child.onnx`` (input ``crop``
[N,1,64,64] as the apparent-sex net's; output ``child`` [N]: P(child)).
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from edge_agent.anonymize.apparent_age import CHILD
from edge_agent.anonymize.apparent_sex import SIDE
from model_export.anonymizer.data import yunet_path
from model_export.anonymizer.sex_classifier import train_and_export

LABELS = Path(__file__).resolve().parent / "weights" / "donor_age_labels.csv"
LFW_ADULTS = 3000  # LFW training photos drawn as adults (one a person first): as many as the synthetic faces
CHILD_PHOTOS = ("faces/crowds/9.jpg", "faces/crowds/3.jpg")  # ../shared photos whose every face is a child (looked at)
ADULT_PHOTOS = tuple(f"faces/crowds/{k}.jpg" for k in (2, 10, 12, 13, 20, 23)) + ("faces/deepface/couple.jpg",)  # ...an adult
MIN_PX = 40  # faces this wide and wider are scored on those photos
THRESHOLDS = (0.5, 0.7, 0.8, 0.9)  # the shares scored child at these are printed (the agent's CHILD is chosen from them)
HAND_CHILD_COPIES = 3  # a hand-labelled child is trained on this many times (school age: the young run is mostly toddlers)


def hand_labels() -> dict[tuple[int, str], str]:
    """(generator index, synth run's meta.txt line) -> child / adult / unsure."""
    return {(int(r["generator_index"]), r["synth_run"]): r["apparent_age"] for r in csv.DictReader(open(LABELS))}


def synth_set(labelled: list[Path], young: list[Path], along: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grey crops, labels, held out) of the hand-labelled donors, the unlabelled faces surely
    adults by ``along`` and the young run."""
    from model_export.anonymizer.synth import heldout_index, load

    want = hand_labels()
    with np.load(along) as z:
        adult_along = {int(i) for i, v in zip(z["index"], z["along"]) if v < 0}
    crops, ys, held = [], [], []
    for d in labelled:
        data = load(Path(d))
        meta = (Path(d) / "meta.txt").read_text().strip()
        for i, idx in enumerate(data["index"]):
            lab = want.get((int(idx), meta))
            if lab is None and int(idx) in adult_along:
                lab = "adult"
            if lab in ("child", "adult"):
                copies = HAND_CHILD_COPIES if lab == "child" and not heldout_index(int(idx)) else 1
                crops += [cv2.cvtColor(data["crop64"][i], cv2.COLOR_BGR2GRAY)] * copies
                ys += [float(lab == "child")] * copies
                held += [bool(heldout_index(int(idx)))] * copies
    for d in young:
        data = load(Path(d))
        crops += [cv2.cvtColor(c, cv2.COLOR_BGR2GRAY) for c in data["crop64"]]
        ys += [1.0] * len(data["index"])
        held += list(heldout_index(data["index"]))
    return np.array(crops), np.array(ys, np.float32), np.array(held, bool)


def lfw_adults(data: Path, rng: np.random.Generator, n: int = LFW_ADULTS) -> tuple[np.ndarray, np.ndarray]:
    """(``n`` training crops, held-out crops) of LFW: adults (press photos of public figures)."""
    d = np.load(Path(data) / "lfw.npz")
    train = np.nonzero(~d["heldout"])[0]
    _, first = np.unique(d["identity"][train], return_index=True)  # one photo a person first, then the rest at random
    rest = np.setdiff1d(np.arange(len(train)), first)
    order = np.concatenate([rng.permutation(first), rng.permutation(rest)])[:n]
    return d["y"][train[order]], d["y"][d["heldout"]]


def photo_faces(shared: Path, names: tuple[str, ...]) -> list[tuple[np.ndarray, object]]:
    """(photo, face) for every face from ``MIN_PX`` wide on ``names`` (the agent's detector)."""
    from edge_agent.models.yunet import YuNet

    det = YuNet(yunet_path(shared), threads=1)
    out = []
    for name in names:
        img = cv2.imread(str(Path(shared) / name))
        if img is None:
            raise SystemExit(f"age-classifier: cannot read {Path(shared) / name}")
        out += [(img, face) for face in det.detect(img) if face.width >= MIN_PX]
    return out


def grey_crops(faces: list) -> np.ndarray:
    """The grey 64 px aligned crops of ``photo_faces`` (the agent's alignment)."""
    from edge_agent.anonymize.diffusion import aligned_crop

    return np.array([cv2.cvtColor(cv2.resize(aligned_crop(img, face, 128)[0], (SIDE, SIDE), interpolation=cv2.INTER_AREA),
                                  cv2.COLOR_BGR2GRAY) for img, face in faces])


def donors_drawn(shared: Path, faces: list, seeds: int = 12) -> None:
    """For the faces the agent takes for children: how many of ``seeds`` tracks each (a still
    photo's draw: three donors, then the first veiled) pass the recogniser check with child donors
    (``match_age``) and with the adults' donors drawn before it; the rest keep the mosaic until
    a retry (on video, ``RETRY_FRAMES`` later)."""
    from edge_agent.anonymize.apparent_age import ApparentAge
    from edge_agent.anonymize.diffusion import aligned_crop
    from edge_agent.anonymize.donor import DonorAnonymizer
    from edge_agent.models.arcface import ArcFaceEmbedder
    from model_export.anonymizer.data import arcface_path
    from model_export.anonymizer.realism import new_tracks

    net, emb = ApparentAge(), ArcFaceEmbedder(arcface_path(shared), threads=1)
    sure = [(img, f) for img, f in faces if net.score(aligned_crop(img, f, 128)[0]) >= CHILD]
    for match in (True, False):
        anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, match_age=match, embedder=emb)
        safe = 0
        for k, (img, face) in enumerate(sure):
            for seed in range(seeds):
                anon.begin_frame()
                with new_tracks(anon, 1000 * k + seed):
                    anon.anonymize(img.copy(), face, 1000 * k + seed)
                    safe += int(anon._tracks[1000 * k + seed].safe)
        print(f"{len(sure)} children taken for children, {seeds} tracks each, {'child donors' if match else 'as before (adults)'}: "
              f"{safe} of {len(sure) * seeds} tracks got a donor that passed the recogniser check")


def evaluate(model: Path, sets: dict[str, tuple[np.ndarray, int]]) -> None:
    """The exported model as the agent runs it: per held-out set, the share scored child at each
    of :data:`THRESHOLDS` and the percentiles of P(child)."""
    from edge_agent.anonymize.apparent_age import ApparentAge

    net = ApparentAge(model)
    for name, (grey, label) in sets.items():
        p = np.array([net.score(cv2.cvtColor(np.clip(g, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)) for g in grey])
        q = np.percentile(p, [10, 25, 50, 75, 90])
        at = " / ".join(f"{np.mean(p >= t):.1%}" for t in THRESHOLDS)
        print(f"{name} ({'children' if label else 'adults'}, {len(p)}): scored child at {' / '.join(map(str, THRESHOLDS))} or more "
              f"(the agent's CHILD: {CHILD}): {at}; P(child) 10/25/50/75/90th percentile {' / '.join(f'{v:.2f}' for v in q)}")


def train_age_classifier(args) -> None:
    rng = np.random.default_rng(0)
    lx, lheld = lfw_adults(args.data, rng, LFW_ADULTS if args.lfw is None else args.lfw)
    sx, sy, sheld = synth_set(args.synth, args.young, args.along)
    px = np.load(Path(args.data) / "colour.npz")["y"]
    real = {}
    if args.shared is not None:
        kids = photo_faces(args.shared, CHILD_PHOTOS)
        real = {"children on photos (age_classifier.CHILD_PHOTOS)": (grey_crops(kids), 1),
                "adults on photos (ADULT_PHOTOS)": (grey_crops(photo_faces(args.shared, ADULT_PHOTOS)), 0)}
    sets = {"held-out LFW people": (lheld, 0), "colour photos": (px, 0),
            "synthetic children (young run and hand-labelled), held out": (sx[sheld & (sy == 1)], 1),
            "synthetic adults (hand-labelled or by the child direction), held out": (sx[sheld & (sy == 0)], 0), **real}
    if args.evaluate:
        evaluate(Path(args.out), sets)
        if args.shared is not None:
            donors_drawn(args.shared, kids)
        return
    x = np.concatenate([lx, sx[~sheld]])
    y = np.concatenate([np.zeros(len(lx), np.float32), sy[~sheld]])
    print(f"age-classifier: {len(lx)} LFW adults, {int((~sheld).sum())} synthetic faces ({int(sy[~sheld].sum())} children)")
    evaluate(train_and_export(x, y, args.epochs, args.batch, rng, Path(args.out), "child", "age-classifier"), sets)
