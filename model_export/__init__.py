"""Offline tools: ONNX export, calibration, engine builds, diffusion anonymizer training."""
