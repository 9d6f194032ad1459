"""model_export: calibration sources, INT8 quantization on a small set, engine keys and cache,
the CLI's argument handling, the verify metrics. TensorRT tests skip without tensorrt + a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_export import calibration as cal
from model_export import engines
from model_export.cli import main
from model_export.quantize import EMBEDDING_SPACE_KEY, int8_name, read_metadata, record_checksum
from model_export.verify import iou_matrix, match, pair_accuracy_10fold, rank1_leave_one_out


# ---------------------------------------------------------------- helpers
def tiny_onnx(path: Path, dynamic: bool = True, seed: float = 1.0, qdq: bool = False) -> Path:
    """A 1-conv model with input [N,3,H,W] (dynamic or 112x112)."""
    shape = ["N", 3, "H", "W"] if dynamic else [1, 3, 112, 112]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], list(np.full(108, seed, np.float32)))
    nodes = [helper.make_node("Conv", ["input", "w"], ["out"], pads=[1, 1, 1, 1])]
    inits = [w]
    if qdq:
        inits += [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.UINT8, [], [0])]
        nodes = [
            helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
            helper.make_node("Conv", ["dq", "w"], ["out"], pads=[1, 1, 1, 1]),
        ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def write_video(path: Path, frames: int = 12) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 10, np.uint8))
    writer.release()
    return path


# ---------------------------------------------------------------- calibration sources
def test_sources_expand_folders_globs_and_videos(tmp_path):
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "x.png"), np.zeros((40, 50, 3), np.uint8))
    (tmp_path / "a" / "notes.txt").write_text("skip me")
    video = write_video(tmp_path / "clip.avi")
    files = cal.expand_sources([tmp_path / "a", str(tmp_path / "*.avi")])
    assert files == [tmp_path / "a" / "x.png", video]
    frames = list(cal.iter_frames(files, video_stride=5))
    assert len(frames) == 1 + 3  # the image + video frames 0, 5, 10
    assert len(cal.sample_frames([tmp_path], limit=2)) == 2


@pytest.mark.parametrize("source", ["missing-dir", "*.nothing"])
def test_sources_errors_name_the_source(tmp_path, source):
    with pytest.raises(cal.CalibrationError, match="nothing|does not exist"):
        cal.expand_sources([str(tmp_path / source)])


def test_a_non_media_file_is_refused(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(cal.CalibrationError, match="neither"):
        cal.expand_sources([tmp_path / "x.txt"])


def test_detector_canvas_matches_the_agent():
    blob = cal.detector_canvas(np.zeros((720, 1280, 3), np.uint8))
    assert blob.shape == (1, 3, 384, 640) and blob.dtype == np.float32
    padded = cal.pad_to_common([blob, cal.detector_canvas(np.zeros((100, 100, 3), np.uint8))])
    assert {b.shape for b in padded} == {(1, 3, 384, 640)}


# ---------------------------------------------------------------- quantization (real models)
@pytest.fixture(scope="module")
def quantized(tmp_path_factory, request):
    shared = request.getfixturevalue("shared_dir")
    models = request.getfixturevalue("models_dir")
    out = tmp_path_factory.mktemp("int8")
    code = main(["-q", "quantize", "--models", str(models), "--out", str(out), "--calib", str(shared / "faces" / "crowds"),
                 "--frames", "6", "--faces", "24", "--threads", "1"])
    assert code == 0
    return models, out


def test_quantize_writes_int8_models_with_checksums_and_embedding_space(quantized):
    from edge_agent.models.files import model_signature, resolve

    models, out = quantized
    for name in ("yunet_s_dynamic.onnx", "mobilefacenet.onnx"):
        q = out / int8_name(name)
        assert resolve(out, q.name) == q  # SHA256SUMS entry matches
        graph = onnx.load(str(q)).graph
        assert any(n.op_type == "DequantizeLinear" for n in graph.node), "QDQ format"
        meta = read_metadata(q)
        assert meta["edge_agent.source_file"] == name
        assert json.loads(meta["edge_agent.quantization"])["per_channel"] is True
    meta = read_metadata(out / "mobilefacenet.int8.onnx")
    assert meta[EMBEDDING_SPACE_KEY] == model_signature(models / "mobilefacenet.onnx")
    assert EMBEDDING_SPACE_KEY not in read_metadata(out / "yunet_s_dynamic.int8.onnx")


def test_int8_embeddings_stay_close_to_fp32(quantized, shared_dir):
    from edge_agent.models.arcface import ArcFaceEmbedder
    from edge_agent.models.yunet import YuNet

    models, out = quantized
    image = cv2.imread(str(shared_dir / "faces" / "misc" / "grace_hopper.jpg"))
    faces = YuNet(models / "yunet_s_dynamic.onnx", threads=1).detect(image)
    assert faces
    fp32 = ArcFaceEmbedder(models / "mobilefacenet.onnx", threads=1).embed(image, faces[:1])
    int8 = ArcFaceEmbedder(out / "mobilefacenet.int8.onnx", threads=1).embed(image, faces[:1])
    assert float(fp32[0] @ int8[0]) > 0.9
    assert YuNet(out / "yunet_s_dynamic.int8.onnx", threads=1).detect(image), "the INT8 detector still finds her"


def test_record_checksum_replaces_its_own_line(tmp_path):
    (tmp_path / "SHA256SUMS").write_text("00  other.onnx\n11  a.onnx\n")
    (tmp_path / "a.onnx").write_bytes(b"abc")
    digest = record_checksum(tmp_path / "a.onnx")
    lines = (tmp_path / "SHA256SUMS").read_text().splitlines()
    assert lines == ["00  other.onnx", f"{digest}  a.onnx"]


# ---------------------------------------------------------------- engine keys and cache
def test_engine_key_changes_with_model_tensorrt_and_gpu(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    key = engines.make_key(model, "fp16", "10.3.0", "Orin (nvgpu)")
    assert key.dirname().startswith(key.model_sha256[:16] + "-trt10.3.0-orin-nvgpu-fp16")
    assert engines.make_key(model, "fp16", "10.3.0", "Orin (nvgpu)") == key
    assert engines.make_key(model, "fp16", "8.6.2", "Orin (nvgpu)").dirname() != key.dirname()
    assert engines.make_key(model, "fp16", "10.3.0", "NVIDIA A2").dirname() != key.dirname()
    assert engines.make_key(model, "int8", "10.3.0", "Orin (nvgpu)", calibration="ab" * 32).dirname() != key.dirname()
    tiny_onnx(model, seed=2.0)  # the model changes
    assert engines.make_key(model, "fp16", "10.3.0", "Orin (nvgpu)").dirname() != key.dirname()


@pytest.mark.parametrize("kwargs", [{"precision": "fp8"}, {"trt_version": ""}, {"gpu": ""}])
def test_engine_key_refuses_incomplete_input(tmp_path, kwargs):
    args = {"precision": "fp16", "trt_version": "10.3", "gpu": "Orin"} | kwargs
    with pytest.raises(engines.EngineError):
        engines.make_key(tiny_onnx(tmp_path / "m.onnx"), **args)


def test_cache_lookup_store_and_invalidation(tmp_path):
    cache = engines.EngineCache(tmp_path / "engines")
    model = tiny_onnx(tmp_path / "m.onnx")
    key = engines.make_key(model, "fp16", "10.3.0", "Orin", engines.default_profile(model))
    assert cache.lookup(key) is None
    path = cache.store(key, b"engine-bytes", {"seconds": 1})
    assert path == tmp_path / "engines" / "m" / key.dirname() / "model.engine"
    assert cache.lookup(key) == path
    assert cache.timing_cache_path("10.3.0", "Orin") == tmp_path / "engines" / "timing-trt10.3.0-orin.cache"
    # a TensorRT upgrade: another key, nothing cached, the old engine is listed as stale
    newer = engines.make_key(model, "fp16", "10.4.0", "Orin", engines.default_profile(model))
    assert cache.lookup(newer) is None
    cache.store(newer, b"new", {})
    assert cache.stale(newer) == [path.parent]
    # a corrupted engine file is not used
    path.write_bytes(b"truncated")
    assert cache.lookup(key) is None


def test_plan_marks_cached_engines_and_handles_qdq(tmp_path):
    cache = engines.EngineCache(tmp_path / "engines")
    fp32 = tiny_onnx(tmp_path / "det.onnx")
    qdq = tiny_onnx(tmp_path / "det.int8.onnx", qdq=True)
    jobs = engines.plan([fp32], ["fp16"], cache, "10.3.0", "Orin")
    assert [(j.key.precision, j.cached) for j in jobs] == [("fp16", False)]
    assert jobs[0].key.profile == engines.DETECTOR_PROFILE
    cache.store(jobs[0].key, b"x", {})
    assert engines.plan([fp32], ["fp16"], cache, "10.3.0", "Orin")[0].cached
    assert not engines.plan([fp32], ["fp16"], cache, "10.3.0", "Orin", force=True)[0].cached
    assert [j.key.precision for j in engines.plan([qdq], ["fp16", "int8"], cache, "10.3.0", "Orin")] == ["int8"]
    with pytest.raises(engines.EngineError, match="calibration"):
        engines.plan([fp32], ["int8"], cache, "10.3.0", "Orin")
    job = engines.plan([fp32], ["int8"], cache, "10.3.0", "Orin", calibration_hash="c" * 64)[0]
    assert job.calibration_cache.name.endswith("-int8-cccccccc.calib")
    static = tiny_onnx(tmp_path / "static.onnx", dynamic=False)
    assert engines.plan([static], ["fp16"], cache, "10.3.0", "Orin")[0].key.profile is None


def test_gpu_name_override_and_slug():
    assert engines.gpu_name({"EDGE_AGENT_GPU_NAME": "NVIDIA Jetson AGX Orin"}) == "NVIDIA Jetson AGX Orin"
    assert engines.slug("NVIDIA Jetson Orin Nano (8GB)") == "nvidia-jetson-orin-nano-8gb"


def test_without_tensorrt_building_explains_itself():
    if engines.tensorrt_version() is not None:
        pytest.skip("tensorrt is installed")
    with pytest.raises(engines.EngineError, match="JetPack"):
        engines.import_tensorrt()


def test_build_a_real_engine(tmp_path):
    trt = pytest.importorskip("tensorrt")
    gpu = engines.gpu_name()
    if gpu is None:
        pytest.skip("no NVIDIA GPU")
    cache = engines.EngineCache(tmp_path / "engines")
    model = tiny_onnx(tmp_path / "m.onnx")
    job = engines.plan([model], ["fp16"], cache, trt.__version__, gpu)[0]
    path = engines.build(job, cache, log=lambda m: None)
    assert cache.lookup(job.key) == path
    assert cache.timing_cache_path(trt.__version__, gpu).is_file()
    out = engines.TrtSession(path).run(None, {"input": np.ones((1, 3, 32, 32), np.float32)})[0]
    assert out.shape == (1, 4, 32, 32)


# ---------------------------------------------------------------- CLI argument handling
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["quantize"],  # --calib is required
        ["quantize", "--calib", "x", "--frames", "0"],
        ["quantize", "--calib", "x", "--method", "magic"],
        ["build-engine", "--precision", "fp8"],
        ["verify", "--engine"],  # needs both engine paths
        ["frobnicate"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_missing_calibration_source_is_a_clear_error(models_dir, tmp_path, capsys):
    assert main(["-q", "quantize", "--models", str(models_dir), "--out", str(tmp_path), "--calib", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["-q", "build-engine", "--models", str(tmp_path), "--dry-run", "--trt-version", "10.3", "--gpu-name", "Orin"]) == 1
    assert "missing" in capsys.readouterr().err


def test_build_engine_dry_run_plans_without_tensorrt(models_dir, tmp_path, capsys):
    cache = tmp_path / "engines"
    argv = ["-q", "build-engine", "--models", str(models_dir), "--cache-dir", str(cache), "--dry-run", "--trt-version", "10.3.0", "--gpu-name", "Orin (nvgpu)"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("would build") == 2 and "trt10.3.0-orin-nvgpu-fp16" in out
    if engines.tensorrt_version() is None:
        assert main(argv[:-4]) == 1  # no --trt-version and no tensorrt
        assert "tensorrt" in capsys.readouterr().err


# ---------------------------------------------------------------- verify metrics
def test_matching_and_iou():
    ref = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    test = np.array([[1, 1, 11, 11], [100, 100, 110, 110]], np.float32)
    assert iou_matrix(ref, test).shape == (2, 2)
    pairs = match(ref, test)
    assert len(pairs) == 1 and pairs[0][:2] == (0, 0) and pairs[0][2] > 0.6
    assert match(ref, np.zeros((0, 4), np.float32)) == []


def test_pair_accuracy_and_rank1():
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3] * 5)
    same = np.array([True, True, True, False, False, False] * 5)
    assert pair_accuracy_10fold(scores, same)[0] == 1.0
    emb = np.eye(3)[[0, 0, 1, 1, 2]].astype(np.float32)
    assert rank1_leave_one_out(emb, ["a", "a", "b", "b", "c"]) == 1.0


def test_build_engine_int8_plan_from_calibration_data(models_dir, shared_dir, tmp_path, capsys):
    argv = ["-q", "build-engine", "--models", str(models_dir), "--cache-dir", str(tmp_path), "--dry-run", "--trt-version", "10.3.0",
            "--gpu-name", "Orin", "--precision", "int8", "--model", "yunet_s_dynamic.onnx", "--calib", str(shared_dir / "faces" / "crowds"), "--frames", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "int8" in out and "-cal" in out and "would build" in out


def test_fixed_canvas_fits_any_frame_into_the_profile_shape():
    for shape in ((720, 1280, 3), (1000, 600, 3), (100, 100, 3)):
        assert cal.fixed_canvas(np.zeros(shape, np.uint8), 384, 640).shape == (1, 3, 384, 640)
