"""The generator's head-turn direction: the line in MobileStyleGAN's style space along which faces
turn, fitted to the yaw of faces already generated.

    .venv-gen/bin/python -m model_export.anonymizer.pose_direction --synth data/anonymizer/synth \
        --seed 9 --psi 0.7 --out data/anonymizer/yaw_direction.npy

Runs in the generator's virtualenv (``make gen-venv``; it maps each face's latent again). A ridge
regression of each face's yaw proxy (5 landmarks, ``synth``'s descriptors) on its style; the saved
direction is one standard deviation of the generated styles along that line: moved 2-5 of them,
faces turn to three-quarter views and near-profiles and stay clean (a weaker ridge, or a step
sized to the predicted yaw, went far past the styles' spread and drew doubled, smeared faces).
Few generated faces are turned (on 1,000 faces of seed 9, 16 beyond |yaw| 0.4), so the bank's
turned donors come from faces moved along this line (``stylegan --direction``). The fit's
correlation on the held-out faces (every 8th) is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

RIDGE = 100.0


def fit(styles: np.ndarray, yaw: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Least-squares direction (ridge ``ridge``) whose dot with a centred style predicts the yaw."""
    x = styles - styles.mean(0)
    return np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ (yaw - yaw.mean()))


def main(argv=None) -> None:
    from model_export.anonymizer.stylegan import StyleGan

    p = argparse.ArgumentParser(prog="python -m model_export.anonymizer.pose_direction")
    p.add_argument("--synth", type=Path, default=Path("data/anonymizer/synth"), help="a synth run: its chunks' yaw and indices")
    p.add_argument("--seed", type=int, default=9, help="that run's seed")
    p.add_argument("--psi", type=float, default=0.7, help="that run's truncation")
    p.add_argument("--out", type=Path, default=Path("data/anonymizer/yaw_direction.npy"))
    a = p.parse_args(argv)
    index, yaw = [], []
    for chunk in sorted(a.synth.glob("chunk_*.npz")):
        with np.load(chunk) as z:
            if "index" in z:
                index.append(z["index"])
                yaw.append(z["yaw"])
    if not index:
        raise SystemExit(f"edge-agent: error: no synthetic faces under {a.synth} (python -m model_export.anonymizer synth)")
    index, yaw = np.concatenate(index), np.concatenate(yaw).astype(np.float64)
    gan = StyleGan(a.seed, a.psi)
    styles = np.concatenate([gan.style(int(i)) for i in index]).astype(np.float64)
    train = index % 8 != 7
    held = fit(styles[train], yaw[train])
    r = float(np.corrcoef((styles[~train] - styles[train].mean(0)) @ held, yaw[~train])[0, 1])
    w = fit(styles, yaw)
    unit = w / np.linalg.norm(w)
    direction = (unit * (styles @ unit).std()).astype(np.float32)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(a.out, direction)
    print(f"yaw direction from {len(index)} faces: held-out correlation {r:.3f}, {float(direction @ w):.3f} yaw per unit; written to {a.out}")


if __name__ == "__main__":
    main()
