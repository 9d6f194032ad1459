"""Diffusion face anonymizer: dataset, teacher, distilled student, ONNX export, evaluation, bench.

Run ``python -m model_export.anonymizer --help``.
"""
