"""`sex-classifier`: train the apparent-sex classifier that steers the donor choice.

    python -m model_export.anonymizer sex-classifier

Why: a donor is chosen by pose and skin tone; a man's short hair and beard around a woman's
face with lipstick is the most visible failure on close-ups (3 of 6 deepface close-ups at 420 px
on 2026-12-05). A linear probe on the recogniser's embedding did not carry across domains (LFW
grey to colour photos, synthetic to real), so this is a small CNN on the aligned grey crop.

Data: LFW's grey 64 px crops (``prepare``), people labelled by first name with the US census
1990 first-name lists (the ``names`` package, MIT; requirements/eval.txt; a name ``RATIO`` times
as common for one sex as the other, others left out; at most ``PER_PERSON`` photos a person),
plus the synthetic donors hand-labelled in ``weights/donor_sex_labels.csv`` (2026-12-05, by
looking; children and faces I could not tell: ``unsure``, left out). Augmented toward cameras:
small faces (down to 16 px and back), blur, sensor noise, gain, flips, shifts. Held out: the
people ``prepare`` held out, and every colour photo of ../shared (scored against
``PHOTO_SEX``), by the exported model as the agent runs it, by distance from 0.5 too
(``--evaluate``: only that, for the committed model). Exports ``edge_agent/assets/apparent_sex.onnx`` (input ``crop`` [N,1,64,64]:
the grey aligned crop, each standardised; output ``male`` [N]: P(male)).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge_agent.anonymize.apparent_sex import SIDE, standardise

RATIO = 5.0  # a first name this many times as common for one sex as the other is labelled
PER_PERSON = 8  # LFW's most photographed people would outweigh the rest
LABELS = Path(__file__).resolve().parent / "weights" / "donor_sex_labels.csv"
# the colour photos' people (../shared/faces/identities.csv), for the held-out score only
PHOTO_SEX = {"alex_lacamoire": 1, "biden": 1, "eileen_collins": 0, "elon_musk": 1, "grace_hopper": 0, "guido_van_rossum": 1,
             "kit_harington": 1, "lin_manuel_miranda": 1, "obama": 1, "paul_allen": 1, "rose_leslie": 0, "steve_wozniak": 1,
             **{f"deepface_person_{k:02d}": s for k, s in zip(range(1, 14), (0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1))}}


class SexNet(nn.Module):
    """Four stride-2 stages (64 -> 4 px), global average, one logit: ~0.1 M parameters."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        chans, layers, c_in = (width, 2 * width, 4 * width, 6 * width), [], 1
        for c in chans:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(c_in, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3))).squeeze(1)


class Exported(nn.Module):
    """What the agent runs: P(male)."""

    def __init__(self, net: SexNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(crop))


def census_names() -> tuple[dict[str, float], dict[str, float]]:
    """(male, female) first name -> share of the census population, from the ``names`` package."""
    spec = importlib.util.find_spec("names")
    if spec is None or spec.origin is None:
        raise SystemExit("sex-classifier: the `names` package is not installed (pip install -r requirements/eval.txt)")
    root = Path(spec.origin).parent

    def read(f: str) -> dict[str, float]:
        return {p[0]: float(p[1]) for p in (line.split() for line in (root / f).read_text().splitlines()) if len(p) >= 2}

    return read("dist.male.first"), read("dist.female.first")


def name_label(person: str, male: dict, female: dict) -> int | None:
    """1 male, 0 female, None: a first name not in the lists or common to both."""
    first = person.split("_")[0].upper()
    m, f = male.get(first, 0.0), female.get(first, 0.0)
    if m > 0 and m >= RATIO * f:
        return 1
    if f > 0 and f >= RATIO * m:
        return 0
    return None


def lfw_set(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grey crops, labels, held out) of LFW's name-labelled people."""
    male, female = census_names()
    d = np.load(Path(data) / "lfw.npz")
    labels = [name_label(str(n), male, female) for n in d["names"]]
    taken: dict[int, int] = {}
    rows = []
    for k, pid in enumerate(d["identity"]):
        if labels[pid] is not None and taken.get(int(pid), 0) < PER_PERSON:
            taken[int(pid)] = taken.get(int(pid), 0) + 1
            rows.append(k)
    rows = np.array(rows)
    return d["y"][rows], np.array([labels[d["identity"][k]] for k in rows], np.float32), d["heldout"][rows]


def hand_labels() -> dict[tuple[int, str], str]:
    """(generator index, synth run's meta.txt line) -> male / female / unsure, from ``LABELS``."""
    return {(int(r["generator_index"]), r["synth_run"]): r["apparent_sex"] for r in csv.DictReader(open(LABELS))}


def donor_set(synth_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(grey crops, labels) of the hand-labelled synthetic donors."""
    from model_export.anonymizer.synth import load

    want = hand_labels()
    crops, ys = [], []
    for d in synth_dirs:
        data = load(Path(d))
        meta = (Path(d) / "meta.txt").read_text().strip()
        for i, idx in enumerate(data["index"]):
            lab = want.get((int(idx), meta))
            if lab in ("male", "female"):
                crops.append(cv2.cvtColor(data["crop64"][i], cv2.COLOR_BGR2GRAY))
                ys.append(float(lab == "male"))
    return np.array(crops), np.array(ys, np.float32)


def photo_set(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(grey crops, labels) of the colour photos' faces, as ``prepare`` aligned them (colour.npz)."""
    d = np.load(Path(data) / "colour.npz")
    keep = np.array([str(i) in PHOTO_SEX for i in d["identity"]])
    return d["y"][keep], np.array([PHOTO_SEX[str(i)] for i in d["identity"][keep]], np.float32)


def augment(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera-like copies: flipped, shifted, shrunk to 16-64 px and back, blurred, gained, noisy."""
    out = np.empty((len(grey), SIDE, SIDE), np.float32)
    for i, g in enumerate(grey):
        g = g.astype(np.float32)
        if rng.random() < 0.5:
            g = g[:, ::-1]
        m = np.float32([[1, 0, rng.integers(-3, 4)], [0, 1, rng.integers(-3, 4)]])
        g = cv2.warpAffine(np.ascontiguousarray(g), m, (SIDE, SIDE), borderMode=cv2.BORDER_REPLICATE)
        if rng.random() < 0.5:
            s = int(rng.integers(16, SIDE))
            g = cv2.resize(cv2.resize(g, (s, s), interpolation=cv2.INTER_AREA), (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.3:
            g = cv2.GaussianBlur(g, (0, 0), float(rng.uniform(0.5, 1.5)))
        g = g * float(rng.uniform(0.3, 1.2)) + rng.normal(0.0, float(rng.uniform(0.0, 6.0)), g.shape)
        out[i] = g
    return out


def train_and_export(x: np.ndarray, y: np.ndarray, epochs: int, batch: int, rng: np.random.Generator, out: Path,
                     output: str, what: str) -> Path:
    """A :class:`SexNet` trained on grey crops ``x`` (labels ``y``, classes balanced, augmented
    toward cameras), exported to ``out`` as the agent runs it (output ``output``: the sigmoid)."""
    w = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean())).astype(np.float32)
    torch.manual_seed(0)
    net = SexNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    bar = tqdm(total=steps, desc=f"{what}: train", unit="step")
    for _ in range(epochs):
        net.train()
        for b in np.array_split(rng.permutation(len(x)), len(x) // batch):
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
    out.parent.mkdir(parents=True, exist_ok=True)
    net.eval()
    torch.onnx.export(Exported(net), torch.zeros(1, 1, SIDE, SIDE), str(out), input_names=["crop"], output_names=[output],
                      dynamic_axes={"crop": {0: "n"}, output: {0: "n"}}, opset_version=17, dynamo=False)
    print(f"{what}: wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    return out


BANDS = (0.0, 0.1, 0.15, 0.25, 0.51)  # distance of a score from 0.5: where the agent takes a side (LEANS) is chosen from these


def report(name: str, p: np.ndarray, y: np.ndarray) -> str:
    """Accuracy, overall and by distance from 0.5 (:data:`BANDS`)."""
    d = np.abs(p - 0.5)
    right = (p > 0.5) == (y == 1)
    bands = ", ".join(f"{lo:.2f}-{hi:.2f} from 0.5: {right[(d >= lo) & (d < hi)].mean():.2f} of {int(((d >= lo) & (d < hi)).sum())}"
                      for lo, hi in zip(BANDS[:-1], BANDS[1:]) if ((d >= lo) & (d < hi)).any())
    return (f"{name}: accuracy {right.mean():.3f} of {len(y)} (men {right[y == 1].mean():.2f}, women {right[y == 0].mean():.2f}); "
            f"right by band: {bands}")


def evaluate(model: Path, lfw: tuple, photos: tuple) -> None:
    """The exported model, as the agent runs it (:class:`ApparentSex`), on the held-out sets."""
    from edge_agent.anonymize.apparent_sex import ApparentSex

    net = ApparentSex(model)

    def scores(grey: np.ndarray) -> np.ndarray:
        return np.array([net.score(cv2.cvtColor(np.clip(g, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)) for g in grey])

    (lx, ly), (px, py) = lfw, photos
    print(report("held-out LFW people (labels by first name)", scores(lx), ly))
    print(report("colour photos (held out)", scores(px), py))
    dark = px.astype(np.float32) * 0.35 + np.random.default_rng(0).normal(0, 5, px.shape)
    print(report("colour photos, dark and noisy", scores(dark), py))
    small = np.stack([cv2.resize(cv2.resize(g, (20, 20), interpolation=cv2.INTER_AREA), (SIDE, SIDE)) for g in px])
    print(report("colour photos at 20 px", scores(small), py))


def train_sex_classifier(args) -> None:
    rng = np.random.default_rng(0)
    lx, ly, lheld = lfw_set(args.data)
    px, py = photo_set(args.data)
    if args.evaluate:
        evaluate(Path(args.out), (lx[lheld], ly[lheld]), (px, py))
        return
    dx, dy = donor_set(args.synth)
    x = np.concatenate([lx[~lheld], dx, dx])  # the donors twice: a colour domain the net must also serve
    y = np.concatenate([ly[~lheld], dy, dy])
    print(f"sex-classifier: {int((~lheld).sum())} LFW photos ({ly[~lheld].mean():.0%} men), {len(dx)} donors ({dy.mean():.0%} men); "
          f"held out: {int(lheld.sum())} LFW photos, {len(px)} colour photos")
    out = train_and_export(x, y, args.epochs, args.batch, rng, Path(args.out), "male", "sex-classifier")
    evaluate(out, (lx[lheld], ly[lheld]), (px, py))
