"""The generator's child direction: the line in MobileStyleGAN's style space from adults to
children, fitted to the close-up donors hand-labelled by apparent age.

    .venv-gen/bin/python -m model_export.anonymizer.age_direction --seed 9 --psi 0.7 \
        --yaw data/anonymizer/yaw_direction.npy --out data/anonymizer/child_direction.npy

Why: a child's head with an adult's face (an old woman's on a girl, crowds of school children
rendered 2026-12-06) is the anonymizer's most jarring look, and the bank held 55 children among
its 480 close-up donors, few in each pose and skin tone. Moved along this line, an adult becomes a
child of the same pose and colouring (``synth --turn``), which gives the bank more children and
the apparent-age classifier (``age-classifier``) its training faces.

Runs in the generator's virtualenv (``make gen-venv``). Labels: ``weights/donor_age_labels.csv``
(``child`` / ``adult``; ``unsure``, the teenagers, left out) of the ``--synth`` runs (the plain and
turned faces; the faces already moved along this line, which the file also labels, are left out). A ridge regression of the label on
each face's style (a turned donor's style moved along ``--yaw`` as ``synth`` moved it); the saved
direction is one standard deviation of the labelled styles along that line. Its 5-fold held-out
AUC is printed. Also written beside it (``--along``): how far along the line every face of the
``--synth`` runs lies, in those units with the labelled adults' median at 0, which gives the
age classifier the unlabelled faces that are surely adults.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from model_export.anonymizer.pose_direction import RIDGE, fit
from model_export.anonymizer.stylegan import shift_of

LABELS = Path(__file__).resolve().parent / "weights" / "donor_age_labels.csv"
TURNED_FIRST = 100000  # the turned synth run's first index (Makefile: synth-turned)...
TURN_SHIFT = (2.0, 5.0)  # ...and how far it moved each face along the yaw direction
FOLDS = 5


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Share of (child, adult) pairs the score orders right."""
    pos, neg = score[label == 1], score[label == 0]
    return float((pos[:, None] > neg[None]).mean())


def held_out_auc(styles: np.ndarray, label: np.ndarray, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(label))
    scores = np.empty(len(label))
    for part in np.array_split(order, FOLDS):
        train = np.setdiff1d(order, part)
        scores[part] = (styles[part] - styles[train].mean(0)) @ fit(styles[train], label[train])
    return auc(scores, label)


def main(argv=None) -> None:
    from model_export.anonymizer.stylegan import StyleGan

    p = argparse.ArgumentParser(prog="python -m model_export.anonymizer.age_direction")
    p.add_argument("--labels", type=Path, default=LABELS)
    p.add_argument("--seed", type=int, default=9, help="the labelled synth runs' seed")
    p.add_argument("--psi", type=float, default=0.7, help="their truncation")
    p.add_argument("--yaw", type=Path, default=Path("data/anonymizer/yaw_direction.npy"), help="the direction the turned run moved along")
    p.add_argument("--out", type=Path, default=Path("data/anonymizer/child_direction.npy"))
    p.add_argument("--synth", type=Path, nargs="+", default=[Path("data/anonymizer/synth"), Path("data/anonymizer/synth_turned")],
                   help="the runs whose labels fit the line and whose faces are placed along it")
    p.add_argument("--along", type=Path, default=Path("data/anonymizer/child_along.npz"))
    a = p.parse_args(argv)
    # labels of the --synth runs only: the faces already moved along the line (the children run)
    # would fit it to itself
    runs = {(Path(d) / "meta.txt").read_text().strip() for d in a.synth}
    rows = [r for r in csv.DictReader(a.labels.open()) if r["apparent_age"] in ("child", "adult") and r["synth_run"] in runs]
    if not rows:
        raise SystemExit(f"edge-agent: error: no child or adult labels of the runs {sorted(runs)} in {a.labels}")
    yaw = np.load(a.yaw).astype(np.float64)
    gan = StyleGan(a.seed, a.psi)

    def style(i: int) -> np.ndarray:
        s = gan.style(i)[0].astype(np.float64)
        return s + shift_of(i, *TURN_SHIFT) * yaw if i >= TURNED_FIRST else s

    styles = np.array([style(int(r["generator_index"])) for r in rows])
    label = np.array([float(r["apparent_age"] == "child") for r in rows])
    w = fit(styles, label, RIDGE)
    unit = w / np.linalg.norm(w)
    along = styles @ unit
    direction = (unit * along.std()).astype(np.float32)
    gap = (along[label == 1].mean() - along[label == 0].mean()) / along.std()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(a.out, direction)
    index = np.concatenate([np.load(c)["index"] for d in a.synth for c in sorted(Path(d).glob("chunk_*.npz"))]).astype(np.int64)
    zero, sd = np.median(along[label == 0]), along.std()
    np.savez(a.along, index=index, along=np.array([(style(int(i)) @ unit - zero) / sd for i in index], np.float32))
    pos = along / along.std()  # where each face lies along the line, in its units (``synth --to``'s targets)
    print(f"child direction from {int(label.sum())} children and {int((1 - label).sum())} adults: held-out AUC "
          f"{held_out_auc(styles, label):.3f}, children {gap:.2f} units further along it than adults; written to {a.out}")
    print("position along it (synth --to), 25/50/75th percentile: children " + " / ".join(f"{v:.2f}" for v in np.percentile(pos[label == 1], [25, 50, 75]))
          + ", adults " + " / ".join(f"{v:.2f}" for v in np.percentile(pos[label == 0], [25, 50, 75])))


if __name__ == "__main__":
    main()
