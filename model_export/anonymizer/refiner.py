"""Training of the refiner (``edge_agent.anonymize.refine``): pairs, teacher, distillation, export.

**Pairs without a ground truth for "donor on stranger".** A synthetic face is put into a scene
(random width 40-200 px, brightness and sensor noise as ``eval-realism``'s sweep), and the real
donor pipeline (:class:`~edge_agent.anonymize.donor.DonorAnonymizer` ``render``: warp, colour and
shading transfer, camera match, the blurred head region, the feathered paste) pastes a *degraded
copy of the same face* onto it: colour and contrast jitter, blur or sharpening, misplaced
landmarks. The composite then carries exactly the runtime's tell-tales (the blurred ring of hair,
seams, colour steps) while the natural face of that scene is known: the pair is (composite, scene).
Only synthetic faces (MobileStyleGAN, people who do not exist) are used; held-out ones never.

**Teacher**: a diffusers UNet2DModel (v-prediction, cosine schedule) conditioned on the composite
and the head-region weight, sampled SDEdit-like: the composite is noised to ``T_START`` and
denoised by DDIM in ``TEACHER_STEPS`` steps. **Student**: the teacher's weights fine-tuned by
regression to teacher samples (as ``student.py``) to do it in one step from the same noised
composite. The runtime graph takes (noise, condition) and does the noising inside.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from edge_agent.anonymize.diffusion import aligned_crop
from edge_agent.anonymize.donor import DonorAnonymizer, _Track, off_face, turn
from edge_agent.anonymize.refine import REFINE_CROP, head_weight, network_input
from edge_agent.faces import Face
from model_export.low_light import darken
from model_export.anonymizer.teacher import SCHEDULE, optimise, step_done, train_scheduler

UNET_CONFIG = dict(
    sample_size=REFINE_CROP,
    in_channels=3 + 4,  # x_t (RGB) + composite (RGB) + head weight
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(32, 64, 96),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
T_START = 600  # SDEdit start: the composite noised to this level keeps its layout, not its seams
TEACHER_STEPS = 8
DATA_WEIGHT = 0.5  # distillation: weight of the L1 term to the known scene beside the teacher regression


def build_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**UNET_CONFIG)


def alpha_bar(t: int) -> float:
    return float(train_scheduler().alphas_cumprod[t])


# -- pairs -------------------------------------------------------------------------------------
class _OneDonor:
    """A stand-in for the donor bank holding one face: the degraded copy being pasted."""

    def __init__(self, crop: np.ndarray, landmarks: np.ndarray) -> None:
        self.crop, self.landmarks = crop, landmarks

    def has_big(self, i: int) -> bool:
        return False

    def donor(self, i: int, big: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return self.crop, self.landmarks

    def off_face(self, i: int, big: bool = False) -> np.ndarray:
        return off_face(self.crop, turn(self.landmarks)).astype(np.uint8) * 255


def degrade(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of the face that no longer fits its scene: per-channel gain, gamma, contrast,
    blur or sharpening (what a donor from another photo brings)."""
    x = crop.astype(np.float32) / 255.0
    x = x ** rng.uniform(0.75, 1.35)
    x = (x - x.mean()) * rng.uniform(0.7, 1.4) + x.mean()
    x = x * rng.uniform(0.85, 1.15, 3).astype(np.float32) + rng.uniform(-0.06, 0.06)
    x = np.clip(x * 255.0, 0, 255)
    r = rng.random()
    if r < 0.35:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.6, 1.8))
    elif r < 0.6:
        x = x + rng.uniform(0.5, 1.5) * (x - cv2.GaussianBlur(x, (0, 0), 1.0))
    return np.clip(x, 0, 255).astype(np.uint8)


def scene_window(img: np.ndarray, box: np.ndarray, lm: np.ndarray, width: float, gain: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, Face]:
    """The generated image rescaled so its face is ``width`` px, a window of 2.6 face widths
    around it, darkened by ``gain`` in linear light with noise that grows as the light falls."""
    s = width / float(box[2] - box[0])
    cx, cy = (box[0] + box[2]) / 2 * s, (box[1] + box[3]) / 2 * s
    half = 1.3 * width
    m = np.array([[s, 0, half - cx], [0, s, half - cy]], np.float32)
    side = int(round(2 * half))
    im = cv2.warpAffine(img, m, (side, side), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    im = darken(im, gain, rng)
    pts = np.hstack([np.asarray(lm, np.float32), np.ones((5, 1), np.float32)]) @ m.T
    b = np.array([box[0], box[1], 1, box[2], box[3], 1], np.float32).reshape(2, 3) @ m.T
    return im, Face(b.reshape(-1).astype(np.float32), pts.astype(np.float32), 0.9)


def make_pairs(synth_dir: Path, n: int, seed: int = 0, heldout: bool = False) -> dict:
    """``n`` (composite with head weight, scene) pairs at the refiner's crop, from training faces
    (``heldout``: from the held-out ones, for validation)."""
    from model_export.anonymizer.synth import load

    data = load(synth_dir, heldout=heldout)
    rng = np.random.default_rng(seed)
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    cond, target = [], []
    with tqdm(total=n, desc="refiner pairs", unit="pair") as bar:
        while len(cond) < n:
            i = int(rng.integers(len(data["index"])))
            img = cv2.imread(str(Path(synth_dir) / "raw" / f"{int(data['index'][i]):06d}.jpg"))
            if img is None:
                continue
            width = float(np.exp(rng.uniform(np.log(40), np.log(200))))
            gain = float(rng.choice([1.0, 1.0, 0.5, 0.25]))
            scene, face = scene_window(img, data["box"][i], data["landmarks_src"][i], width, gain, rng)
            lm = data["landmarks128"][i] + rng.normal(0, 1.2, (5, 2)).astype(np.float32)
            anon.bank = _OneDonor(degrade(data["crop128"][i], rng), lm)
            out = scene.copy()
            try:
                anon.render(out, face, _Track(donor=0), int(rng.integers(1 << 30)))
                crop, matrix, _ = aligned_crop(out, face, REFINE_CROP)
                truth, _, _ = aligned_crop(scene, face, REFINE_CROP)
                weight = head_weight(out.shape, face, matrix)
            except (ValueError, cv2.error):
                continue
            cond.append(network_input(crop, weight)[0].astype(np.float16))
            target.append(network_input(truth, weight)[0, :3].astype(np.float16))
            bar.update(1)
    return {"cond": np.stack(cond), "target": np.stack(target)}


def load_pairs(synth_dir: Path, cache: Path, n: int) -> dict:
    if cache.exists():
        d = dict(np.load(cache))
        if len(d["cond"]) >= n:
            return {k: v[:n] for k, v in d.items()}
    d = make_pairs(synth_dir, n)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **d)
    return d


# -- teacher -----------------------------------------------------------------------------------
def noised(composite: torch.Tensor, noise: torch.Tensor, t: int = T_START) -> torch.Tensor:
    a = alpha_bar(t)
    return math.sqrt(a) * composite + math.sqrt(1 - a) * noise


@torch.no_grad()
def sample_teacher(model, noise: torch.Tensor, cond: torch.Tensor, steps: int = TEACHER_STEPS) -> torch.Tensor:
    """SDEdit: the composite noised to ``T_START``, then deterministic DDIM (v-prediction) in
    ``steps`` evenly spaced steps down to x0."""
    ts = np.linspace(T_START, 0, steps + 1).round().astype(int)
    x = noised(cond[:, :3], noise)
    for t, t_prev in zip(ts[:-1], ts[1:]):
        a, a_prev = alpha_bar(int(t)), (alpha_bar(int(t_prev)) if t_prev > 0 else 1.0)
        v = model(torch.cat([x, cond], 1), torch.full((len(x),), int(t))).sample
        x0 = math.sqrt(a) * x - math.sqrt(1 - a) * v
        eps = math.sqrt(1 - a) * x + math.sqrt(a) * v
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x.clamp(-1, 1)


def _resume(ckpt: Path, model, opt, extra: tuple = ()) -> int:
    if not ckpt.exists():
        return 0
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    for name, mod in extra:
        mod.load_state_dict(ck[name])
    print(f"resumed {ckpt} at step {ck['step']}")
    return int(ck["step"])


def train_teacher(synth_dir: Path, ckpt: Path, pairs: int, total_steps: int, batch: int, lr: float,
                  minutes: float = 0, stop_at: int = 0) -> None:
    ckpt = Path(ckpt)
    d = load_pairs(synth_dir, ckpt.parent / "refiner_pairs.npz", pairs)
    cond_all, tgt_all = torch.from_numpy(d["cond"].astype(np.float32)), torch.from_numpy(d["target"].astype(np.float32))
    model, ema = build_unet(), build_unet()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    step = _resume(ckpt, model, opt, (("ema", ema),))
    alphas = train_scheduler().alphas_cumprod.float()
    rng = np.random.default_rng(step)
    print(f"refiner teacher {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, {len(cond_all)} pairs")

    def save():
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                    "unet_config": UNET_CONFIG, "schedule": SCHEDULE}, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)

    bar = tqdm(total=total_steps, initial=step, desc="refiner teacher", unit="step")
    losses: list = []
    t0 = time.time()
    model.train()
    while step < total_steps:
        idx = torch.from_numpy(rng.integers(0, len(cond_all), batch))
        cond, x0 = cond_all[idx], tgt_all[idx]
        flip = torch.rand(batch) < 0.5  # mirrored scenes
        cond[flip], x0[flip] = cond[flip].flip(-1), x0[flip].flip(-1)
        w = 0.05 + cond[:, 3:4]
        noise = torch.randn_like(x0)
        t = torch.randint(0, T_START + 1, (batch,))
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        loss = ((model(torch.cat([xt, cond], 1), t).sample - v) ** 2 * w).mean()
        optimise(model, opt, loss, lr, step, total_steps, warmup=100, ema=ema)
        step += 1
        if step_done(step, loss.item(), losses, bar, save, stop_at, minutes, t0):
            break
    save()
    bar.close()
    print(f"saved {ckpt} at step {step}")


def load_model(ckpt: Path, key: str = "ema"):
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = build_unet()
    model.load_state_dict({k: v.float() for k, v in ck[key if key in ck else "model"].items()})
    return model.eval(), ck


# -- student -----------------------------------------------------------------------------------
def student_sample(model, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """One step from the noised composite straight to x0."""
    x = noised(cond[:, :3], noise)
    return model(torch.cat([x, cond], 1), torch.full((len(cond),), T_START)).sample.clamp(-1, 1)


def distill(synth_dir: Path, teacher_ckpt: Path, ckpt: Path, pairs: int, samples: int, total_steps: int,
            batch: int, lr: float, minutes: float = 0, stop_at: int = 0, data_weight: float = DATA_WEIGHT) -> None:
    """Regression to the teacher's samples, plus ``data_weight`` x an L1 term to the pair's own
    scene (known by construction): the student follows the teacher's map and is pulled toward
    the natural face where the teacher's few-step sample is still noisy."""
    ckpt = Path(ckpt)
    d = load_pairs(synth_dir, ckpt.parent / "refiner_pairs.npz", pairs)
    teacher, tck = load_model(teacher_ckpt)
    cache = ckpt.parent / f"refiner_teacher_samples_step{tck['step']}.npz"
    if cache.exists():
        tgt = dict(np.load(cache))
    else:
        gen = torch.Generator().manual_seed(1234)
        cond = torch.from_numpy(d["cond"][:samples].astype(np.float32))
        noises, outs = [], []
        for s in tqdm(range(0, len(cond), 64), desc=f"teacher samples ({TEACHER_STEPS} DDIM steps)", unit="batch"):
            noise = torch.randn((len(cond[s:s + 64]), 3, REFINE_CROP, REFINE_CROP), generator=gen)
            noises.append(noise.numpy())
            outs.append(sample_teacher(teacher, noise, cond[s:s + 64]).numpy())
        tgt = {"noise": np.concatenate(noises), "target": np.concatenate(outs), "cond": d["cond"][:samples], "truth": d["target"][:samples]}
        np.savez(cache, **tgt)
    noise_all = torch.from_numpy(tgt["noise"])
    cond_all = torch.from_numpy(tgt["cond"].astype(np.float32))
    out_all = torch.from_numpy(tgt["target"])
    truth_all = torch.from_numpy(tgt["truth"].astype(np.float32))
    model = build_unet()
    model.load_state_dict(teacher.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    step = _resume(ckpt, model, opt)
    rng = np.random.default_rng(3 + step)

    def save():
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "teacher_step": tck["step"],
                    "teacher_steps": TEACHER_STEPS, "t_start": T_START, "data_weight": data_weight}, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)

    bar = tqdm(total=total_steps, initial=step, desc="refiner distill", unit="step")
    losses: list = []
    t0 = time.time()
    model.train()
    while step < total_steps:
        idx = torch.from_numpy(rng.integers(0, len(cond_all), batch))
        cond, noise, want, truth = cond_all[idx], noise_all[idx], out_all[idx], truth_all[idx]
        w = 0.05 + cond[:, 3:4]
        pred = student_sample(model, noise, cond)
        loss = ((((pred - want) ** 2 + 0.5 * (pred - want).abs()) + data_weight * (pred - truth).abs()) * w).mean()
        optimise(model, opt, loss, lr, step, total_steps)
        step += 1
        if step_done(step, loss.item(), losses, bar, save, stop_at, minutes, t0):
            break
    save()
    bar.close()
    print(f"saved {ckpt} at step {step}")


# -- export ------------------------------------------------------------------------------------
class RefinerGraph(torch.nn.Module):
    """(noise [1,3,64,64], cond [1,4,64,64]) -> x0 [1,3,64,64]: the noising and the one step."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return student_sample(self.unet, noise, cond)


def export(ckpt: Path, out: Path) -> float:
    """ONNX (opset 17, static shapes, float16-stored weights); returns the max abs error against
    torch with the same rounded weights."""
    from model_export.anonymizer.export import export_onnx

    model, ck = load_model(ckpt, key="model")
    graph = RefinerGraph(model).eval()
    inputs = (torch.randn(1, 3, REFINE_CROP, REFINE_CROP), torch.rand(1, 4, REFINE_CROP, REFINE_CROP) * 2 - 1)
    meta = {"t_start": str(T_START), "teacher_steps": str(ck.get("teacher_steps")), "student_step": str(ck.get("step")),
            "method": "1-step regression to SDEdit DDIM teacher samples over donor self-composites",
            "license": "project's own; trained on MobileStyleGAN synthetic faces only"}
    err = export_onnx(graph, inputs, out, meta)
    print(f"exported {out} ({Path(out).stat().st_size / 1e6:.2f} MB); max abs error onnx vs torch {err:.2e}")
    return err


# -- the teacher behind the runtime's interface (evaluation and bench) -------------------------
class TeacherRefiner:
    """The teacher at its full ``TEACHER_STEPS`` SDEdit steps, with the runtime refiner's call
    signature, so the evaluation can put teacher and student through the same donor pipeline."""

    def __init__(self, ckpt: Path) -> None:
        self.model, _ = load_model(Path(ckpt))

    def __call__(self, crop: np.ndarray, weight: np.ndarray, noise: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = sample_teacher(self.model, torch.from_numpy(noise), torch.from_numpy(network_input(crop, weight)))
        return ((y[0].numpy().transpose(1, 2, 0)[..., ::-1] + 1.0) * 127.5).astype(np.float32)

    def refine(self, frame: np.ndarray, face: Face, seed: int) -> None:
        from edge_agent.anonymize.refine import Refiner

        Refiner.refine(self, frame, face, seed)  # the same warp-back, around this __call__


def bench_refiner(student: Path, teacher: Path, repeats: int = 30, threads: int = 1) -> dict:
    """Per-face refiner latency: the 1-step student through onnxruntime vs the teacher at its full
    step count in torch, on the same 64 px input."""
    from edge_agent.anonymize.refine import Refiner, seed_noise3
    from model_export.anonymizer.bench import _median_ms

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (REFINE_CROP, REFINE_CROP, 3), dtype=np.uint8)
    weight = np.ones((REFINE_CROP, REFINE_CROP), np.float32)
    noise = seed_noise3(1)
    ref = Refiner(student, threads=threads)
    out = {"student_ms": _median_ms(lambda: ref(crop, weight, noise), repeats), "threads": threads}
    if Path(teacher).exists():
        tr = TeacherRefiner(teacher)
        out["teacher_ms"] = _median_ms(lambda: tr(crop, weight, noise), max(3, repeats // 5))
        out["teacher_steps"] = TEACHER_STEPS
        out["speedup"] = out["teacher_ms"] / out["student_ms"]
    print(f"refiner, {REFINE_CROP}x{REFINE_CROP}, {threads} thread(s): student (1 step, ONNX) {out['student_ms']:.1f} ms"
          + (f", teacher ({TEACHER_STEPS} steps, torch) {out['teacher_ms']:.1f} ms: {out['speedup']:.1f}x" if "teacher_ms" in out else ""))
    return out
