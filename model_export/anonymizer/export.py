"""Student -> ONNX (opset 17, static shapes [1,1,64,64] noise + [1,8,64,64] conditions), with the
1- or 2-step sampling loop unrolled into the graph so the runtime makes one onnxruntime call."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch

from edge_agent.anonymize.diffusion import COND_CHANNELS, CROP
from model_export.anonymizer.student import T_FIRST, T_SECOND, alpha_bar, load_student


class StudentGraph(torch.nn.Module):
    def __init__(self, unet, steps: int) -> None:
        super().__init__()
        self.unet = unet
        self.steps = steps
        self.a2 = alpha_bar(T_SECOND)

    def forward(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t1 = torch.full((1,), T_FIRST, dtype=torch.int64)
        x0 = self.unet(torch.cat([noise, cond], 1), t1).sample
        if self.steps >= 2:
            xm = math.sqrt(self.a2) * x0 + math.sqrt(1 - self.a2) * noise
            t2 = torch.full((1,), T_SECOND, dtype=torch.int64)
            x0 = self.unet(torch.cat([xm, cond], 1), t2).sample
        return x0.clamp(-1, 1)


def export(ckpt: Path, out: Path, steps: int = 1) -> Path:
    model, ck = load_student(ckpt)
    graph = StudentGraph(model, steps).eval()
    pattern = np.asarray(ck["mean_pattern"], np.float32).reshape(-1)
    meta = {"mean_pattern": ",".join(f"{v:.6f}" for v in pattern), "steps": str(steps), "crop": str(CROP),
            "method": "regression to 20-step DDIM teacher samples (x0 prediction)",
            "license": "project's own; trained on LFW (research use only)"}
    err = export_onnx(graph, (torch.randn(1, 1, CROP, CROP), torch.randn(1, COND_CHANNELS, CROP, CROP)), out, meta)
    print(f"exported {out} ({Path(out).stat().st_size / 1e6:.2f} MB, {steps} step(s)); max abs error onnx vs torch {err:.2e}")
    return Path(out)


def export_onnx(graph: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], out: Path, meta: dict) -> float:
    """A (noise, cond) -> y graph to ONNX (opset 17, static shapes, ``meta`` as metadata,
    weights stored float16); returns the max abs error of onnxruntime against torch with the
    same float16-rounded weights (the parity check)."""
    import onnxruntime as ort

    noise, cond = inputs
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(graph, (noise, cond), str(out), input_names=["noise", "cond"], output_names=["y"],
                          opset_version=17, dynamo=False, do_constant_folding=True)
    m = onnx.load(str(out))
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    store_fp16(out)
    with torch.no_grad():
        for p in graph.parameters():
            if p.numel() >= 256:
                p.copy_(p.half().float())
        ref = graph(noise, cond).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"noise": noise.numpy(), "cond": cond.numpy()})[0]
    return float(np.abs(ref - got).max())


def store_fp16(path: Path) -> None:
    """Halve the file: large float32 initializers are stored as float16 and cast back to float32
    inside the graph (onnxruntime folds the casts at load, so inference stays float32)."""
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    casts = []
    keep = []
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and int(np.prod(init.dims)) >= 256:
            arr = numpy_helper.to_array(init).astype(np.float16)
            name16 = init.name + "__fp16"
            keep.append(numpy_helper.from_array(arr, name16))
            casts.append(helper.make_node("Cast", [name16], [init.name], to=onnx.TensorProto.FLOAT, name=init.name + "__cast"))
        else:
            keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def save_slim(ckpt: Path, out: Path, key: str = "model") -> Path:
    """A float16 copy of a checkpoint's weights (+ the diffusion student's mean 4x4 pattern) small enough to commit."""
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    slim = {"model": {k: v.half() if v.numel() >= 256 else v for k, v in ck[key].items()}, "mean_pattern": ck.get("mean_pattern"),
            "step": ck.get("step"), "teacher_steps": ck.get("teacher_steps")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return out
