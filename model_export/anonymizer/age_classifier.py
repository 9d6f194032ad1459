"""`age-classifier`: train the child-or-adult classifier that steers the donor choice.

    python -m model_export.anonymizer age-classifier --shared $SHARED

Why: donors were chosen by pose, skin tone and apparent sex only, and children got adults' faces
(an old woman's on a girl of about ten, ``crowds/9.jpg``, 2026-12-06). No age model installs
from PyPI and no labelled photos of children could be had offline, so the children are synthetic:
the generator's faces moved along its child direction (``age_direction``; the ``synth_young``
run, labelled child by construction), plus the close-up donors hand-labelled in
``weights/donor_age_labels.csv`` (three times: older children than the young run's many
toddlers). Adults: LFW's training people (grey press photos), the donors hand-labelled adult,
and the unlabelled synthetic faces that lie further from the children along the child direction
than the median labelled adult (``age_direction``'s ``child_along.npz``): with LFW alone, the
net learnt press photo against synthetic face as much as adult against child. Same small CNN, input and camera-like augmentation as the
apparent-sex net (:mod:`model_export.anonymizer.sex_classifier`).

Held out: LFW's held-out people and the colour photos (adults), the young run's every 8th face,
and real photos judged by looking (:data:`CHILD_PHOTOS`: every face a child; :data:`ADULT_PHOTOS`:
every face an adult), detected and aligned as the agent does. ``--evaluate``: only score the
model at ``--out``, and with ``--shared`` also count how many tracks of the children it takes for
children get a donor past the recogniser check (:func:`donors_drawn`). Exports ``edge_agent/assets/apparent_child.onnx`` (input ``crop``
[N,1,64,64] as the apparent-sex net's; output ``child`` [N]: P(child)).
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge_agent.anonymize.apparent_age import CHILD
from edge_agent.anonymize.apparent_sex import SIDE, standardise
from model_export.anonymizer.data import yunet_path
from model_export.anonymizer.sex_classifier import Exported, SexNet, augment

LABELS = Path(__file__).resolve().parent / "weights" / "donor_age_labels.csv"
LFW_ADULTS = 3000  # LFW training photos drawn as adults (one a person first): as many as the synthetic faces
CHILD_PHOTOS = ("faces/crowds/9.jpg", "faces/crowds/3.jpg")  # ../shared photos whose every face is a child (looked at)
ADULT_PHOTOS = tuple(f"faces/crowds/{k}.jpg" for k in (2, 10, 12, 13, 20, 23)) + ("faces/deepface/couple.jpg",)  # ...an adult
MIN_PX = 40  # faces this wide and wider are scored on those photos
THRESHOLDS = (0.5, 0.7, 0.8, 0.9)  # the shares scored child at these are printed (the agent's CHILD is chosen from them)


def hand_labels() -> dict[tuple[int, str], str]:
    """(generator index, synth run's meta.txt line) -> child / adult / unsure."""
    return {(int(r["generator_index"]), r["synth_run"]): r["apparent_age"] for r in csv.DictReader(open(LABELS))}


HAND_CHILD_COPIES = 3


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

    net, emb = ApparentAge(), ArcFaceEmbedder(arcface_path(shared), threads=1)
    sure = [(img, f) for img, f in faces if net.score(aligned_crop(img, f, 128)[0]) >= CHILD]
    for match in (True, False):
        anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, match_age=match, embedder=emb)
        safe = 0
        for k, (img, face) in enumerate(sure):
            for seed in range(seeds):
                anon.begin_frame()
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
    torch.manual_seed(0)
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
    w = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean())).astype(np.float32)
    print(f"age-classifier: {len(lx)} LFW adults, {int((~sheld).sum())} synthetic faces ({int(sy[~sheld].sum())} children)")
    net = SexNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    steps = args.epochs * (len(x) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    bar = tqdm(total=steps, desc="age-classifier: train", unit="step")
    for _ in range(args.epochs):
        net.train()
        for b in np.array_split(rng.permutation(len(x)), len(x) // args.batch):
            xb = torch.from_numpy(standardise(augment(x[b], rng)))[:, None]
            loss = (nn.functional.binary_cross_entropy_with_logits(net(xb), torch.from_numpy(y[b]), reduction="none")
                    * torch.from_numpy(w[b])).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net.eval()
    torch.onnx.export(Exported(net), torch.zeros(1, 1, SIDE, SIDE), str(out), input_names=["crop"], output_names=["child"],
                      dynamic_axes={"crop": {0: "n"}, "child": {0: "n"}}, opset_version=17, dynamo=False)
    print(f"age-classifier: wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    evaluate(out, sets)
