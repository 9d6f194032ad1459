"""Static INT8 quantization (onnxruntime, QDQ format, per-channel weights) of the detector and
the embedder, calibrated on real frames and aligned faces.

Each INT8 file gets ONNX metadata naming what it was made from; the embedder's carries
``edge_agent.embedding_space`` = the FP32 model's signature, so that the registry (filled with
FP32 embeddings) stays usable: the loader takes that key as the model signature. The file's
sha256 goes into ``SHA256SUMS`` beside it, the list ``edge_agent.models.files.resolve`` checks.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnx

from edge_agent.models.files import SUMS_FILE, model_signature, sha256_of

EMBEDDING_SPACE_KEY = "edge_agent.embedding_space"
SOURCE_SHA_KEY = "edge_agent.source_sha256"
SOURCE_NAME_KEY = "edge_agent.source_file"
RECIPE_KEY = "edge_agent.quantization"

METHODS = ("minmax", "entropy", "percentile")


def int8_name(fp32_name: str) -> str:
    """``yunet_s_dynamic.onnx`` -> ``yunet_s_dynamic.int8.onnx``."""
    path = Path(fp32_name)
    return f"{path.stem}.int8{path.suffix or '.onnx'}"


@dataclass
class Recipe:
    """How one model is quantized (written into the file's metadata)."""

    method: str = "minmax"
    per_channel: bool = True
    activation: str = "uint8"
    weight: str = "int8"
    exclude_nodes: list[str] = field(default_factory=list)
    exclude_op_types: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=list)  # empty = onnxruntime's default set
    reduce_range: bool = False  # 7-bit weights: avoids U8S8 saturation on AVX2 without VNNI
    keep_heads_fp32: bool = False  # leave the convolutions that produce the outputs in FP32
    keep_depthwise_fp32: bool = False
    samples: int = 0


class _Reader:
    """onnxruntime CalibrationDataReader over a list of input blobs, with a progress callback."""

    def __init__(self, input_name: str, blobs: Sequence[np.ndarray], on_item: Optional[Callable[[], None]] = None) -> None:
        self.input_name = input_name
        self.blobs = list(blobs)
        self.on_item = on_item
        self.index = 0

    def get_next(self):
        if self.index >= len(self.blobs):
            return None
        blob = self.blobs[self.index]
        self.index += 1
        if self.on_item is not None:
            self.on_item()
        return {self.input_name: blob}

    def rewind(self) -> None:
        self.index = 0


def _ort_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[name]


def quantize_model(
    fp32_path: Path,
    out_path: Path,
    blobs: Sequence[np.ndarray],
    recipe: Recipe,
    embedding_space: bool = False,
    on_item: Optional[Callable[[], None]] = None,
) -> Path:
    """Quantize ``fp32_path`` to ``out_path`` calibrated on ``blobs`` (model inputs).

    ``embedding_space``: write the FP32 signature under ``edge_agent.embedding_space``
    (for embedders, whose outputs are compared with FP32 registry embeddings).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if recipe.method not in METHODS:
        raise ValueError(f"unknown calibration method {recipe.method!r} (choose from {', '.join(METHODS)})")
    if not blobs:
        raise ValueError("no calibration samples")
    fp32_path = Path(fp32_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    recipe.samples = len(blobs)
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        source = upgrade_opset(fp32_path, Path(tmp) / "opset.onnx")
        # Shape inference + constant folding first, as onnxruntime recommends for static quantization.
        # ONNX shape inference suffices for these CNNs (onnxruntime's symbolic inference spends
        # ~20 s on YuNet's Resize and then gives up).
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        staging = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(staging),
            _Reader(input_name, blobs, on_item),
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            activation_type=qtype[recipe.activation],
            weight_type=qtype[recipe.weight],
            calibrate_method=_ort_method(recipe.method),
            nodes_to_exclude=excluded_nodes(prepared, recipe),
            op_types_to_quantize=list(recipe.op_types) or None,
            reduce_range=recipe.reduce_range,
            extra_options={"CalibTensorRangeSymmetric": False, "ActivationSymmetric": False, "WeightSymmetric": True},
        )
        model = onnx.load(str(staging))
        meta = {
            SOURCE_NAME_KEY: fp32_path.name,
            SOURCE_SHA_KEY: sha256_of(fp32_path.resolve()),
            RECIPE_KEY: json.dumps(recipe.__dict__, sort_keys=True),
        }
        if embedding_space:
            meta[EMBEDDING_SPACE_KEY] = model_signature(fp32_path.resolve())
        set_metadata(model, meta)
        tmp_out = out_path.with_name(out_path.name + ".tmp")
        onnx.save(model, str(tmp_out))
        os.replace(tmp_out, out_path)
    return out_path


def head_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the last Conv on the way to each graph output (the prediction heads)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    for output in model.graph.output:
        stack, seen = [output.name], set()
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "Conv":
                found.append(node.name)
                continue
            stack.extend(i for i in node.input[:1])
    return list(dict.fromkeys(found))


def depthwise_convs(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def excluded_nodes(path: Path, recipe: "Recipe") -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    names = list(recipe.exclude_nodes)
    if recipe.keep_heads_fp32:
        names += head_convs(model)
    if recipe.keep_depthwise_fp32:
        names += depthwise_convs(model)
    if recipe.exclude_op_types:
        names += [n.name for n in model.graph.node if n.op_type in recipe.exclude_op_types]
    return list(dict.fromkeys(names))


MIN_OPSET = 13  # per-channel QDQ (DequantizeLinear ``axis``) needs opset 13


def upgrade_opset(path: Path, out: Path) -> Path:
    """``path`` itself when its opset is recent enough, else a converted copy at ``out``."""
    from onnx import version_converter

    model = onnx.load(str(path))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=MIN_OPSET)
    if opset >= MIN_OPSET:
        return path
    converted = version_converter.convert_version(model, MIN_OPSET)
    onnx.save(converted, str(out))
    return out


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set (replace) metadata_props keys on ``model``."""
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def record_checksum(path: Path) -> str:
    """Add or replace ``path``'s line in ``SHA256SUMS`` beside it (sha256sum format); returns the hex."""
    path = Path(path)
    sums_path = path.parent / SUMS_FILE
    digest = sha256_of(path)
    lines = []
    if sums_path.is_file():
        for line in sums_path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == path.name:
                continue
            if line.strip():
                lines.append(line)
    lines.append(f"{digest}  {path.name}")
    tmp = sums_path.with_name(SUMS_FILE + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, sums_path)
    return digest
