"""Small ONNX wrappers, one per model, and the files they load."""
