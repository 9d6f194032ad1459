"""One way to open an ONNX model: onnxruntime with the best execution provider available.

TensorRT engines built by ``model_export`` are opened through onnxruntime's TensorRT provider
where it exists; torch is never needed here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

# Belt and braces beside ORT_DISABLE_TELEMETRY (edge_agent/__init__.py): also off when something
# imported onnxruntime before this package.
ort.disable_telemetry_events()

# Config name -> onnxruntime provider, in order of preference for "auto".
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def providers_for(backend: str, cache_dir: Path | None = None) -> list:
    """Providers for a config backend name, keeping only those this onnxruntime build has."""
    available = set(ort.get_available_providers())
    wanted = list(PROVIDERS) if backend == "auto" else [backend, "cpu"]
    chosen: list = []
    for name in dict.fromkeys(wanted):
        provider = PROVIDERS[name]
        if provider not in available:
            continue
        if name == "tensorrt" and cache_dir is not None:
            chosen.append(
                (provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir), "trt_fp16_enable": True})
            )
        else:
            chosen.append(provider)
    if backend not in ("auto", "cpu") and PROVIDERS[backend] not in available:
        log.warning("backend %r is not available in this onnxruntime build; using %s", backend, chosen)
    return chosen


def open_session(path: Path, backend: str = "cpu", threads: int = 0, cache_dir: Path | None = None) -> ort.InferenceSession:
    """An inference session for ``path``; ``threads`` = 0 lets onnxruntime decide."""
    if cache_dir is None and os.environ.get("CACHE_DIRECTORY"):
        cache_dir = Path(os.environ["CACHE_DIRECTORY"])  # systemd's CacheDirectory: engines survive restarts
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle worker threads must not spin: on a 2-core edge box they would steal the CPU from the
    # next stage (the other model, the anonymizer, the encoder) after every call.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers_for(backend, cache_dir))
