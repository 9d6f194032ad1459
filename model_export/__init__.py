"""Offline tools: ONNX export, calibration, engine builds, diffusion anonymizer training."""

import edge_agent  # noqa: E402,F401  (turns onnxruntime telemetry off before any model is loaded)
