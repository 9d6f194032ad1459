"""TensorRT engines from the ONNX files: FP16, and INT8 (from a calibration cache, or from a
QDQ ONNX made by ``quantize``), with a timing cache, stored under a key that changes whenever
the model, the TensorRT version or the GPU does.

Layout of the engine cache (default ``<models>/engines``)::

    engines/
      timing-trt<version>-<gpu>.cache                 # TensorRT timing cache, one per TRT+GPU
      <model stem>/
        <sha256[:16]>-trt<version>-<gpu>-<precision>-<profile>/
          model.engine                                # serialized engine
          meta.json                                   # the full key + build settings
        <sha256[:16]>-int8-<calibration data hash>.calib   # INT8 calibration cache

An engine is used only if ``meta.json`` matches the key exactly; otherwise it is rebuilt.
tensorrt (and cuda-python/pycuda for calibration and running) are imported lazily: everything
else here (keys, layout, lookup, planning) works on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from edge_agent.models.files import sha256_of

PRECISIONS = ("fp16", "int8")
ENGINE_FILE = "model.engine"
META_FILE = "meta.json"


class EngineError(Exception):
    """An engine cannot be built or loaded (worded for the command line)."""


# ---------------------------------------------------------------- environment probes
def import_tensorrt():
    """The tensorrt module, or EngineError saying how to get it."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise EngineError(
            "tensorrt is not installed: on a Jetson it comes with JetPack (python3-libnvinfer); "
            "on x86 `pip install tensorrt` with an NVIDIA driver. Engines cannot be built here."
        ) from exc
    return tensorrt


def tensorrt_version() -> Optional[str]:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return None


def gpu_name(env: Optional[dict] = None) -> Optional[str]:
    """The GPU's name: ``$EDGE_AGENT_GPU_NAME``, CUDA (cuda-python), nvidia-smi, then the Jetson
    device-tree model (Jetsons have no nvidia-smi). None when no GPU is found."""
    env = os.environ if env is None else env
    if env.get("EDGE_AGENT_GPU_NAME"):
        return env["EDGE_AGENT_GPU_NAME"]
    try:
        from cuda import cudart  # type: ignore

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name
            return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    model = Path("/proc/device-tree/model")
    if model.is_file():
        text = model.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
        if "jetson" in text.lower() or "nvidia" in text.lower():
            return text
    return None


def slug(text: str) -> str:
    """A file-name-safe form: ``NVIDIA Jetson Orin Nano (8GB)`` -> ``nvidia-jetson-orin-nano-8gb``."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


# ---------------------------------------------------------------- keys and layout
@dataclass(frozen=True)
class Profile:
    """Optimization profile of the model's (single) input: min/opt/max shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def tag(self) -> str:
        return hashlib.sha256(json.dumps([self.min, self.opt, self.max]).encode()).hexdigest()[:8]


DETECTOR_PROFILE = Profile((1, 3, 32, 32), (1, 3, 384, 640), (1, 3, 640, 640))
EMBEDDER_PROFILE = Profile((1, 3, 112, 112), (8, 3, 112, 112), (32, 3, 112, 112))


def default_profile(model_path: Path) -> Optional[Profile]:
    """Profile for a dynamic-shape model (None for a fully static one)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if len(shape) == 4 and shape[2:] == [112, 112]:
        return EMBEDDER_PROFILE
    if len(shape) == 4:
        return DETECTOR_PROFILE
    raise EngineError(f"{model_path.name}: dynamic input {shape} needs an explicit --profile")


def static_shape(model_path: Path) -> tuple[int, ...]:
    import onnx

    dims = onnx.load(str(model_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims)


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on; any change means a rebuild."""

    model: str  # file name
    model_sha256: str
    tensorrt: str
    gpu: str
    precision: str
    profile: Optional[Profile] = None
    calibration: str = ""  # hash of the INT8 calibration data ("" for fp16 / QDQ models)

    def dirname(self) -> str:
        parts = [self.model_sha256[:16], f"trt{self.tensorrt}", slug(self.gpu), self.precision]
        if self.profile is not None:
            parts.append(self.profile.tag())
        if self.calibration:
            parts.append(f"cal{self.calibration[:8]}")
        return "-".join(parts)

    def to_json(self) -> dict:
        data = asdict(self)
        if self.profile is not None:
            data["profile"] = {"min": list(self.profile.min), "opt": list(self.profile.opt), "max": list(self.profile.max)}
        return data


def make_key(model_path: Path, precision: str, trt_version: str, gpu: str, profile: Optional[Profile] = None, calibration: str = "") -> EngineKey:
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if not trt_version or not gpu:
        raise EngineError("an engine key needs the TensorRT version and the GPU name")
    model_path = Path(model_path)
    return EngineKey(model_path.name, sha256_of(model_path.resolve()), str(trt_version), str(gpu), precision, profile, calibration)


@dataclass
class EngineCache:
    """The on-disk layout; see the module docstring."""

    root: Path

    def engine_dir(self, key: EngineKey) -> Path:
        return Path(self.root) / Path(key.model).stem / key.dirname()

    def engine_path(self, key: EngineKey) -> Path:
        return self.engine_dir(key) / ENGINE_FILE

    def timing_cache_path(self, trt_version: str, gpu: str) -> Path:
        return Path(self.root) / f"timing-trt{trt_version}-{slug(gpu)}.cache"

    def calibration_cache_path(self, model_sha256: str, model_name: str, data_hash: str) -> Path:
        return Path(self.root) / Path(model_name).stem / f"{model_sha256[:16]}-int8-{data_hash[:8]}.calib"

    def lookup(self, key: EngineKey) -> Optional[Path]:
        """The engine for ``key`` if it was built for exactly that key, else None."""
        path = self.engine_path(key)
        meta = self.engine_dir(key) / META_FILE
        if not path.is_file() or not meta.is_file():
            return None
        try:
            recorded = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if recorded.get("key") != key.to_json():
            return None
        if recorded.get("engine_sha256") and recorded["engine_sha256"] != sha256_of(path):
            return None
        return path

    def store(self, key: EngineKey, engine_bytes: bytes, build: dict) -> Path:
        """Write the engine and its meta atomically (a crash leaves no half engine behind)."""
        directory = self.engine_dir(key)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (ENGINE_FILE + ".tmp")
        tmp.write_bytes(engine_bytes)
        os.replace(tmp, directory / ENGINE_FILE)
        meta = {"key": key.to_json(), "engine_sha256": sha256_of(directory / ENGINE_FILE), "build": build}
        tmp = directory / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / META_FILE)
        return directory / ENGINE_FILE

    def stale(self, key: EngineKey) -> list[Path]:
        """Other engines of the same model (older model, TensorRT or GPU): candidates for removal."""
        model_dir = Path(self.root) / Path(key.model).stem
        if not model_dir.is_dir():
            return []
        current = self.engine_dir(key)
        return sorted(d for d in model_dir.iterdir() if d.is_dir() and d != current and (d / META_FILE).is_file())

def is_qdq(model_path: Path) -> bool:
    """True for an explicitly quantized (QDQ) model: TensorRT runs it as INT8 without calibration."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


# ---------------------------------------------------------------- planning (no tensorrt needed)
@dataclass
class Job:
    model: Path
    key: EngineKey
    engine: Path
    cached: bool
    calibration_cache: Optional[Path] = None


def plan(
    models: Sequence[Path],
    precisions: Sequence[str],
    cache: EngineCache,
    trt_version: str,
    gpu: str,
    calibration_hash: str = "",
    force: bool = False,
) -> list[Job]:
    """One job per (model, precision): the key, where the engine goes and whether it is cached.
    A QDQ model is built only as INT8 (its precision is in the file)."""
    jobs = []
    for model in models:
        model = Path(model)
        if not model.is_file():
            raise EngineError(f"model {model} is missing")
        qdq = is_qdq(model)
        profile = default_profile(model)
        for precision in precisions:
            if qdq and precision != "int8":
                continue
            cal = calibration_hash if precision == "int8" and not qdq else ""
            if precision == "int8" and not qdq and not cal:
                raise EngineError(f"{model.name}: INT8 from an FP32 model needs calibration data (--calib) or use the QDQ model from `quantize`")
            key = make_key(model, precision, trt_version, gpu, profile, cal)
            cached = cache.lookup(key) is not None and not force
            calib = cache.calibration_cache_path(key.model_sha256, model.name, cal) if cal else None
            jobs.append(Job(model, key, cache.engine_path(key), cached, calib))
    return jobs


def calibration_hash(blobs: Iterable[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(str(blob.shape).encode())
        digest.update(np.ascontiguousarray(blob).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- building (tensorrt)
class _DeviceBuffers:
    """Minimal CUDA memory through cuda-python, else pycuda (both optional, lazy)."""

    def __init__(self) -> None:
        self.backend = None
        try:
            from cuda import cudart  # type: ignore

            self.cudart = cudart
            self.backend = "cuda-python"
        except ImportError:
            try:
                import pycuda.autoinit  # type: ignore  # noqa: F401
                import pycuda.driver as cuda  # type: ignore

                self.cuda = cuda
                self.backend = "pycuda"
            except ImportError as exc:
                raise EngineError("INT8 calibration and engine inference need cuda-python (pip install cuda-python) or pycuda") from exc
        self._allocs: list = []

    def alloc(self, nbytes: int) -> int:
        if self.backend == "cuda-python":
            err, ptr = self.cudart.cudaMalloc(nbytes)
            if int(err) != 0:
                raise EngineError(f"cudaMalloc({nbytes}) failed: {err}")
            self._allocs.append(ptr)
            return int(ptr)
        mem = self.cuda.mem_alloc(nbytes)
        self._allocs.append(mem)
        return int(mem)

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if self.backend == "cuda-python":
            (err,) = self.cudart.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            if int(err) != 0:
                raise EngineError(f"cudaMemcpy to device failed: {err}")
        else:
            self.cuda.memcpy_htod(ptr, array)

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        if self.backend == "cuda-python":
            (err,) = self.cudart.cudaMemcpy(array.ctypes.data, ptr, array.nbytes, self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
            if int(err) != 0:
                raise EngineError(f"cudaMemcpy to host failed: {err}")
        else:
            self.cuda.memcpy_dtoh(array, ptr)

    def synchronize(self) -> None:
        if self.backend == "cuda-python":
            self.cudart.cudaDeviceSynchronize()
        else:
            self.cuda.Context.synchronize()

    def free(self) -> None:
        for ptr in self._allocs:
            if self.backend == "cuda-python":
                self.cudart.cudaFree(ptr)
            else:
                ptr.free()
        self._allocs.clear()


def make_calibrator(blobs: Sequence[np.ndarray], cache_path: Path, input_name: str):
    """A TensorRT IInt8EntropyCalibrator2 over ``blobs`` (one batch each) that reads and writes
    ``cache_path``: with the cache present, TensorRT skips calibration entirely."""
    trt = import_tensorrt()
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise EngineError(f"TensorRT {trt.__version__} has no implicit INT8 calibration; build INT8 from the QDQ model made by `quantize`")

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.blobs = list(blobs)
            self.index = 0
            self.cache_path = Path(cache_path)
            self.memory = _DeviceBuffers() if self.blobs else None
            self.pointer = self.memory.alloc(max(b.nbytes for b in self.blobs)) if self.blobs else 0

        def get_batch_size(self) -> int:
            return int(self.blobs[0].shape[0]) if self.blobs else 1

        def get_batch(self, names):
            if self.index >= len(self.blobs):
                return None
            self.memory.to_device(self.pointer, self.blobs[self.index].astype(np.float32))
            self.index += 1
            return [self.pointer]

        def read_calibration_cache(self):
            return self.cache_path.read_bytes() if self.cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.cache_path.write_bytes(bytes(cache))

    return Calibrator()


def build(job: Job, cache: EngineCache, calibration_blobs: Sequence[np.ndarray] = (), workspace_mb: int = 1024, log: Callable[[str], None] = print) -> Path:
    """Build one engine with the TensorRT Python API, using and updating the timing cache."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit batch is gone in TRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(job.model.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {job.model.name}: {errors}")
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:  # TensorRT < 8.4
        config.max_workspace_size = workspace_mb << 20
    config.set_flag(trt.BuilderFlag.FP16)  # FP16 for layers INT8 does not cover, too
    if job.key.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    input_name = network.get_input(0).name
    if job.key.profile is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, job.key.profile.min, job.key.profile.opt, job.key.profile.max)
        config.add_optimization_profile(profile)
        if job.key.precision == "int8" and job.calibration_cache is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
    calibrator = None
    if job.key.precision == "int8" and job.calibration_cache is not None:
        if not calibration_blobs and not job.calibration_cache.is_file():
            raise EngineError(f"{job.model.name}: no calibration data and no calibration cache at {job.calibration_cache}")
        calibrator = make_calibrator(calibration_blobs, job.calibration_cache, input_name)
        config.int8_calibrator = calibrator
    timing_path = cache.timing_cache_path(job.key.tensorrt, job.key.gpu)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    start = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {job.model.name} ({job.key.precision}); see the log above")
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    updated = config.get_timing_cache()
    if updated is not None:
        tmp = timing_path.with_name(timing_path.name + ".tmp")
        tmp.write_bytes(bytes(updated.serialize()))
        os.replace(tmp, timing_path)
    build_info = {"seconds": round(time.time() - start, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "workspace_mb": workspace_mb,
                  "timing_cache": timing_path.name, "calibration_cache": job.calibration_cache.name if job.calibration_cache else None}
    path = cache.store(job.key, bytes(serialized), build_info)
    log(f"built {path} in {build_info['seconds']} s")
    return path


# ---------------------------------------------------------------- running (tensorrt)
class _Arg:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class TrtSession:
    """Runs an engine with the subset of onnxruntime.InferenceSession the model wrappers use
    (``get_inputs``, ``get_outputs``, ``run(None, {name: array})``), so ``YuNet`` and
    ``ArcFaceEmbedder`` can run on an engine by swapping their ``.session``.
    Needs TensorRT >= 8.5 (named tensors, execute_async_v3)."""

    def __init__(self, engine_path: Path) -> None:
        trt = import_tensorrt()
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EngineError(f"cannot load engine {engine_path} (built for another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.memory = _DeviceBuffers()
        self._buffers: dict[str, tuple[int, int]] = {}

    def get_inputs(self):
        return [_Arg(n, list(self.engine.get_tensor_shape(n))) for n in self.inputs]

    def get_outputs(self):
        return [_Arg(n, list(self.engine.get_tensor_shape(n))) for n in self.outputs]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            ptr = self.memory.alloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, output_names, feed: dict) -> list[np.ndarray]:
        for name in self.inputs:
            array = np.ascontiguousarray(feed[name], dtype=np.float32)
            self.context.set_input_shape(name, array.shape)
            ptr = self._buffer(name, array.nbytes)
            self.memory.to_device(ptr, array)
            self.context.set_tensor_address(name, ptr)
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
            host = np.empty(shape, dtype)
            ptr = self._buffer(name, max(host.nbytes, 1))
            self.context.set_tensor_address(name, ptr)
            results[name] = host
        if not self.context.execute_async_v3(0):
            raise EngineError("TensorRT execution failed")
        self.memory.synchronize()
        for name, host in results.items():
            self.memory.to_host(host, self._buffers[name][0])
        wanted = output_names or self.outputs
        return [results[n] for n in wanted]
