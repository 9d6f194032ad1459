"""The teacher: a conditional diffusers UNet2DModel (v-prediction, cosine schedule) that
regenerates the aligned face's luminance from identity-free conditions, sampled with DDIM.

Identity removal is built into the data it sees (see ``edge_agent.anonymize.diffusion``):
- the face interior is never an input: only the blurred context ring outside the regenerated
  ellipse, the face's 4x4 luminance cells (lighting) and 5 landmark heat-maps (pose/expression);
- during training the 4x4 cells are moved toward a generic face's layout (or another person's)
  by a random degree, so the model learns to produce a coherent face from a *generic* layout and
  the degree knob at inference is in-distribution; landmarks are jittered.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from tqdm import tqdm

from edge_agent.anonymize.diffusion import COND_CHANNELS, CROP, conditions, lowfreq, to_unit

UNET_CONFIG = dict(
    sample_size=CROP,
    in_channels=1 + COND_CHANNELS,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(24, 48, 96, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=32,
)
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False)
FLIP_ORDER = [1, 0, 2, 4, 3]


def optimise(model, opt, loss, lr: float, step: int, total_steps: int, warmup: int = 0, ema=None) -> None:
    """One optimiser step, shared by every training loop here: cosine learning rate (to 0.1 x,
    after ``warmup`` linear steps), gradient clipping at 1, and the EMA copy when given."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    cos = 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
    for g in opt.param_groups:
        g["lr"] = lr * warm * (0.1 + 0.9 * cos)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if ema is not None:
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


def step_done(step: int, loss: float, losses: list, bar, save, stop_at: int, minutes: float, t0: float) -> bool:
    """Bookkeeping after one optimiser step, shared by teacher and student training: progress,
    a checkpoint every 100 steps (runs resume from it), and the stop rules. True = stop."""
    losses.append(loss)
    bar.update(1)
    if step % 20 == 0:
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    if step % 100 == 0:
        save()
    if stop_at and step >= stop_at:
        print(f"stop-at reached at step {step}")
        return True
    if minutes and time.time() - t0 > minutes * 60:
        print(f"time limit reached at step {step}")
        return True
    return False


def build_unet() -> UNet2DModel:
    return UNet2DModel(**UNET_CONFIG)


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def ddim_scheduler(steps: int) -> DDIMScheduler:
    s = DDIMScheduler(**SCHEDULE, timestep_spacing="trailing", set_alpha_to_one=True)
    s.set_timesteps(steps)
    return s


class CropData:
    """Training crops with on-the-fly conditions and identity-removal augmentation."""

    def __init__(self, data_dir: Path, split: str = "train", seed: int = 0) -> None:
        d = np.load(Path(data_dir) / "lfw.npz")
        keep = ~d["heldout"] if split == "train" else d["heldout"]
        self.y = d["y"][keep]
        self.lm = d["landmarks"][keep].astype(np.float32)
        self.identity = d["identity"][keep]
        self.rng = np.random.default_rng(seed)
        cells = np.stack([lowfreq(to_unit(y)) for y in self.y[:4000]])
        pattern = cells.mean(0)
        self.mean_pattern = (pattern - pattern.mean()).astype(np.float32)

    def __len__(self) -> int:
        return len(self.y)

    def sample(self, idx: np.ndarray, augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
        xs, cs = [], []
        rng = self.rng
        for i in idx:
            y = to_unit(self.y[i])
            lm = self.lm[i].copy()
            degree = 0.0
            pattern = self.mean_pattern
            if augment:
                if rng.random() < 0.5:
                    y = y[:, ::-1].copy()
                    lm[:, 0] = CROP - lm[:, 0]
                    lm = lm[FLIP_ORDER]
                y = np.clip(y * rng.uniform(0.8, 1.2) + rng.uniform(-0.15, 0.15), -1, 1).astype(np.float32)
                lm = lm + rng.normal(0, 0.6, lm.shape).astype(np.float32)
                r = rng.random()
                if r < 0.6:  # toward the generic layout (the degree knob's direction)
                    degree = float(rng.uniform(0.0, 1.5))
                elif r < 0.8:  # toward another person's layout (structural mixing)
                    other = to_unit(self.y[rng.integers(len(self.y))])
                    c = lowfreq(other)
                    pattern = c - c.mean()
                    degree = float(rng.uniform(0.3, 1.0))
            xs.append(y[None])
            cs.append(conditions(y, lm, degree, pattern))
        return np.stack(xs), np.stack(cs)


@torch.no_grad()
def sample_teacher(model: UNet2DModel, noise: torch.Tensor, cond: torch.Tensor, steps: int) -> torch.Tensor:
    """Deterministic DDIM from ``noise`` (x_T) to x_0 in ``steps`` steps."""
    sched = ddim_scheduler(steps)
    x = noise
    for t in sched.timesteps:
        v = model(torch.cat([x, cond], 1), t).sample
        x = sched.step(v, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1)


def load_teacher(path: Path, ema: bool = True) -> tuple[UNet2DModel, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build_unet()
    state = ck["ema"] if ema and "ema" in ck else ck["model"]
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    return model, ck


def train_teacher(data_dir: Path, ckpt: Path, total_steps: int, batch: int, lr: float, minutes: float = 0, stop_at: int = 0) -> None:
    ckpt = Path(ckpt)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    data = CropData(data_dir)
    model = build_unet()
    ema = build_unet()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = train_scheduler()
    alphas = sched.alphas_cumprod.float()
    step = 0
    if ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        print(f"resumed {ckpt} at step {step}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"teacher UNet {n_params / 1e6:.2f} M params, {len(data)} training crops")
    mask_w = None

    def save():
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                    "mean_pattern": data.mean_pattern, "unet_config": UNET_CONFIG, "schedule": SCHEDULE}, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)

    t0 = time.time()
    bar = tqdm(total=total_steps, initial=step, desc="teacher", unit="step")
    model.train()
    losses = []
    while step < total_steps:
        idx = data.rng.integers(0, len(data), batch)
        x0, cond = (torch.from_numpy(a) for a in data.sample(idx))
        if mask_w is None:
            mask_w = 0.25 + 0.75 * cond[:1, 1:2]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        pred = model(torch.cat([xt, cond], 1), t).sample
        loss = ((pred - v) ** 2 * mask_w).mean()
        optimise(model, opt, loss, lr, step, total_steps, warmup=100, ema=ema)
        step += 1
        if step_done(step, loss.item(), losses, bar, save, stop_at, minutes, t0):
            break
    save()
    bar.close()
    print(f"saved {ckpt} at step {step}")
