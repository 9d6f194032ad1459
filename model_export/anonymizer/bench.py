"""Per-face latency: the student through onnxruntime (the agent's path) vs the teacher at its
full DDIM step count in torch, on this CPU with the given threads."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_agent.anonymize.diffusion import COND_CHANNELS, CROP, DiffusionAnonymizer
from edge_agent.faces import Face


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def synthetic_face(size: int = 96) -> tuple[np.ndarray, Face]:
    frame = np.full((360, 640, 3), 120, np.uint8)
    cx, cy = 320, 180
    lm = np.array([[cx - 18, cy - 10], [cx + 18, cy - 10], [cx, cy + 8], [cx - 14, cy + 28], [cx + 14, cy + 28]], np.float32)
    box = np.array([cx - 40, cy - 50, cx + 40, cy + 50], np.float32)
    return frame, Face(box=box, landmarks=lm, score=0.9)


def bench(student: Path, teacher: Path, teacher_steps: int = 20, repeats: int = 30, threads: int = 2) -> dict:
    import torch

    torch.set_num_threads(threads)
    anon = DiffusionAnonymizer(student, threads=threads, budget_ms=None, regenerate_every=1)
    frame, face = synthetic_face()
    noise = np.random.default_rng(0).standard_normal((1, 1, CROP, CROP)).astype(np.float32)
    cond = np.random.default_rng(1).standard_normal((1, COND_CHANNELS, CROP, CROP)).astype(np.float32)
    onnx_ms = _median_ms(lambda: anon.generate(noise, cond), repeats)

    def full_face():
        anon.forget(1)
        anon.begin_frame()
        anon.anonymize(frame.copy(), face, seed=1)

    face_ms = _median_ms(full_face, repeats)
    anon2 = DiffusionAnonymizer(student, threads=threads, budget_ms=None, regenerate_every=0, regenerate_on_motion=0)
    anon2.anonymize(frame.copy(), face, seed=1)
    cached_ms = _median_ms(lambda: anon2.anonymize(frame.copy(), face, seed=1), repeats)
    out = {"student_onnx_ms": onnx_ms, "student_face_ms": face_ms, "cached_face_ms": cached_ms, "student_steps": anon.steps}
    if Path(teacher).exists():
        from model_export.anonymizer.teacher import load_teacher, sample_teacher

        model, _ = load_teacher(teacher)
        tn, tc = torch.from_numpy(noise), torch.from_numpy(cond)
        with torch.no_grad():
            teacher_ms = _median_ms(lambda: sample_teacher(model, tn, tc, teacher_steps), max(3, repeats // 10))
        out.update(teacher_ms=teacher_ms, teacher_steps=teacher_steps, speedup=teacher_ms / face_ms)
    print(f"crop {CROP}x{CROP}, {threads} thread(s), median of {repeats}:")
    print(f"  student ONNX call ({anon.steps} step): {onnx_ms:7.1f} ms")
    print(f"  student per face (align + generate + paste): {face_ms:7.1f} ms")
    print(f"  cached per face (warp re-used face + paste):  {cached_ms:7.1f} ms")
    if "teacher_ms" in out:
        print(f"  teacher per face ({teacher_steps} DDIM steps, torch): {out['teacher_ms']:7.1f} ms")
        print(f"  speed-up student vs teacher: {out['speedup']:.1f}x")
    return out
