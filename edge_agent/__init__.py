"""Edge privacy filter: every face not in the consent registry is replaced before a frame leaves."""

import os

# onnxruntime writes a device id and usage telemetry (OS, CPU, model names, run times) under
# ~/.cache/Microsoft/ as soon as it is imported. A privacy filter leaves no such trace: the switch
# must be set before the first `import onnxruntime`, and every entry point imports this package first.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
