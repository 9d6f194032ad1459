"""The student: the teacher's UNet fine-tuned to map (seed noise, conditions) straight to the
teacher's DDIM sample — knowledge distillation by regression to teacher samples (Luhman &
Luhman 2021), at two noise levels so that it runs in 1 step or 2 steps.

Why this method: the teacher's deterministic DDIM sampler defines a fixed map noise -> face, so
the student inherits its per-seed determinism (one track = one face) and the teacher's
conditioning; on a 2-core CPU it is by far the cheapest distillation (one teacher pass to
build the targets, then plain supervised regression), where progressive distillation needs
log2(N) rounds of training and consistency distillation many thousands of steps to converge.
Initialising from the teacher's weights makes the regression converge in a few hundred steps.

Sampling (also baked into the ONNX graph, see ``export.py``):
    x0_1 = S(noise, T)                                      # 1 step
    x_m  = sqrt(a_m) x0_1 + sqrt(1 - a_m) noise; x0 = S(x_m, t_m)   # 2nd step (DDIM update)
The student predicts x0 directly (not v).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model_export.anonymizer.teacher import CropData, build_unet, load_teacher, optimise, sample_teacher, step_done, train_scheduler

T_FIRST = 999
T_SECOND = 500


def alpha_bar(t: int) -> float:
    return float(train_scheduler().alphas_cumprod[t])


def student_sample(model, noise: torch.Tensor, cond: torch.Tensor, steps: int = 1) -> torch.Tensor:
    x0 = model(torch.cat([noise, cond], 1), torch.full((noise.shape[0],), T_FIRST)).sample
    if steps >= 2:
        a = alpha_bar(T_SECOND)
        xm = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
        x0 = model(torch.cat([xm, cond], 1), torch.full((noise.shape[0],), T_SECOND)).sample
    return x0.clamp(-1, 1)


def load_student(path: Path):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build_unet()
    model.load_state_dict({k: v.float() for k, v in ck["model"].items()})
    model.eval()
    return model, ck


def make_targets(data: CropData, teacher, n: int, steps: int, cache: Path) -> dict:
    """Teacher samples on training conditions (with the same identity-removal augmentation the
    teacher saw, so the student learns the whole degree range); cached to disk."""
    if cache.exists():
        d = dict(np.load(cache))
        if len(d["noise"]) >= n:
            print(f"re-using {len(d['noise'])} teacher samples from {cache}")
            return d
    idx = data.rng.choice(len(data), n, replace=False)
    noises, conds, outs = [], [], []
    gen = torch.Generator().manual_seed(1234)
    for s in tqdm(range(0, n, 64), desc=f"teacher samples ({steps} DDIM steps)", unit="batch"):
        _, cond = data.sample(idx[s : s + 64])
        cond = torch.from_numpy(cond)
        noise = torch.randn((len(cond), 1, cond.shape[2], cond.shape[3]), generator=gen)
        out = sample_teacher(teacher, noise, cond, steps)
        noises.append(noise.numpy()); conds.append(cond.numpy().astype(np.float16)); outs.append(out.numpy())
    d = {"noise": np.concatenate(noises), "cond": np.concatenate(conds), "target": np.concatenate(outs)}
    np.savez(cache, **d)
    return d


def distill(data_dir: Path, teacher_ckpt: Path, ckpt: Path, n_samples: int, teacher_steps: int,
            total_steps: int, batch: int, lr: float, minutes: float = 0, stop_at: int = 0) -> None:
    ckpt = Path(ckpt)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    data = CropData(data_dir, seed=7)
    teacher, tck = load_teacher(teacher_ckpt)
    targets = make_targets(data, teacher, n_samples, teacher_steps, ckpt.parent / f"teacher_samples_{teacher_steps}_step{tck['step']}.npz")
    model = build_unet()
    model.load_state_dict(teacher.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    step = 0
    if ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"]); opt.load_state_dict(ck["opt"]); step = ck["step"]
        print(f"resumed {ckpt} at step {step}")
    noise_all = torch.from_numpy(targets["noise"])
    cond_all = torch.from_numpy(targets["cond"].astype(np.float32))
    tgt_all = torch.from_numpy(targets["target"])
    n = len(noise_all)
    mask_w = 0.25 + 0.75 * cond_all[:1, 1:2]
    a2 = alpha_bar(T_SECOND)
    rng = np.random.default_rng(3)

    def save():
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "mean_pattern": tck["mean_pattern"],
                    "teacher_steps": teacher_steps, "t_first": T_FIRST, "t_second": T_SECOND}, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)

    model.train()
    t0 = time.time()
    bar = tqdm(total=total_steps, initial=step, desc="distill", unit="step")
    losses = []
    while step < total_steps:
        idx = torch.from_numpy(rng.integers(0, n, batch))
        noise, cond, tgt = noise_all[idx], cond_all[idx], tgt_all[idx]
        half = batch // 2
        # first half: 1st step from pure noise; second half: 2nd step from the DDIM re-noised target
        t = torch.cat([torch.full((half,), T_FIRST), torch.full((batch - half,), T_SECOND)])
        x_in = noise.clone()
        x_in[half:] = math.sqrt(a2) * tgt[half:] + math.sqrt(1 - a2) * noise[half:]
        pred = model(torch.cat([x_in, cond], 1), t).sample
        loss = (((pred - tgt) ** 2 + 0.5 * (pred - tgt).abs()) * mask_w).mean()
        optimise(model, opt, loss, lr, step, total_steps)
        step += 1
        if step_done(step, loss.item(), losses, bar, save, stop_at, minutes, t0):
            break
    save()
    bar.close()
    print(f"saved {ckpt} at step {step}")
