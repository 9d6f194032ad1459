"""MobileStyleGAN (the ``random-face`` package's OpenVINO IR) as a seeded face generator.

Runs in its own virtualenv (``make gen-venv``: openvino, random-face, numpy, OpenCV, tqdm; never
the project's .venv) as a worker process that ``synth`` starts once per chunk:

    .venv-gen/bin/python -m model_export.anonymizer.stylegan --first 0 --count 100 --seed 7 \
        --psi 0.7 --side 512 --out chunk_dir

It writes ``<index>.jpg`` (RGB faces of people who do not exist, ``side`` px, JPEG q95) and
prints one line per face so the caller can drive its progress bar. Face ``i`` of run seed ``s``
comes from latent ``N(0, 1)`` drawn with seed ``(s, i)``: any face can be regenerated alone.

``--direction yaw.npy --shift LO HI`` turns the heads: face ``i``'s style is moved along the
direction (``model_export.anonymizer.pose_direction``) by a shift spread evenly over ``[LO, HI]``
(the golden-ratio sequence of ``i``), so a run covers the turns between; the donor bank mirrors
every face, so one sign is enough.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

MEAN_SAMPLES = 512  # mapped latents averaged for the truncation trick's mean style


def ir_dir() -> Path:
    """The IR files inside the installed package (located, not imported: its own loader pulls
    dependencies this tool does not need)."""
    import importlib.util

    spec = importlib.util.find_spec("random_face")
    if spec is None or spec.origin is None:
        raise SystemExit("random-face is not installed in this venv (make gen-venv)")
    return Path(spec.origin).resolve().parent / "data"


def shift_of(index: int, lo: float, hi: float) -> float:
    """How far along its direction face ``index`` is moved: spread over [lo, hi) by the golden ratio."""
    return lo + (hi - lo) * ((index * 0.6180339887498949) % 1.0)


class StyleGan:
    """Mapping + synthesis networks compiled for the CPU; ``face(i)`` -> RGB uint8 [side, side, 3]."""

    def __init__(self, seed: int, psi: float = 0.7, side: int = 512, threads: int = 1,
                 direction: np.ndarray | None = None, shift: tuple[float, float] = (0.0, 0.0), to: bool = False) -> None:
        import openvino as ov

        core = ov.Core()
        core.set_property("CPU", {"INFERENCE_NUM_THREADS": int(threads)})
        d = ir_dir()
        self.mapping = core.compile_model(core.read_model(d / "MappingNetwork.xml", d / "MappingNetwork.bin"), "CPU")
        self.synthesis = core.compile_model(core.read_model(d / "SynthesisNetwork.xml", d / "SynthesisNetwork.bin"), "CPU")
        self.seed, self.psi, self.side = int(seed), float(psi), int(side)
        self.direction, self.shift, self.to = direction, shift, bool(to)
        # The mean style comes from a fixed seed, independent of the run's, so every run truncates
        # toward the same point.
        rng = np.random.default_rng(20210721)
        styles = [self._map(rng.standard_normal((1, 512)).astype(np.float32)) for _ in range(MEAN_SAMPLES)]
        self.mean_style = np.mean(styles, axis=0)

    def _map(self, z: np.ndarray) -> np.ndarray:
        return next(iter(self.mapping([z]).values()))

    def style(self, index: int) -> np.ndarray:
        """Face ``index``'s truncated style [1, 512], before any turn."""
        z = np.random.default_rng([self.seed, int(index)]).standard_normal((1, 512)).astype(np.float32)
        return self.mean_style + self.psi * (self._map(z) - self.mean_style)

    def face(self, index: int) -> np.ndarray:
        style = self.style(index)
        if self.direction is not None:
            lo, hi = self.shift
            step = shift_of(index, lo, hi)
            if self.to:  # ``shift`` is where along the direction the face ends, not how far it moves
                step -= float(style[0] @ self.direction) / float(self.direction @ self.direction)
            style = style + step * self.direction[None]
        img = next(iter(self.synthesis([style.astype(np.float32)]).values()))[0]
        rgb = np.clip((img.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).astype(np.uint8)
        return cv2.resize(rgb, (self.side, self.side), interpolation=cv2.INTER_AREA)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m model_export.anonymizer.stylegan")
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--psi", type=float, default=0.7)
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--direction", type=Path, default=None, help="a style-space direction (.npy, [512]) to turn the heads along")
    p.add_argument("--shift", type=float, nargs=2, default=(0.0, 0.0), metavar=("LO", "HI"), help="how far along --direction")
    p.add_argument("--to", action="store_true", help="--shift is where along --direction each face ends (age_direction prints the children's)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    direction = np.load(a.direction).astype(np.float32) if a.direction else None
    gan = StyleGan(a.seed, a.psi, a.side, a.threads, direction, tuple(a.shift), a.to)
    for i in range(a.first, a.first + a.count):
        path = a.out / f"{i:06d}.jpg"
        if not path.exists():
            rgb = gan.face(i)
            tmp = path.with_suffix(".tmp.jpg")
            cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            tmp.rename(path)
        print(i, flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
