"""Every face found at any resolution (issue 11): tiles + whole-frame pass, the tile budget and its
warning, faces cut by tile edges and by the frame border, and inputs too large to handle.

Real YuNet, real photos, the real `process` path; the reference faces of the 4K mosaic come from
dlib's HOG detector (not run by the agent) on the source crowd photos."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import ConfigError, load_config
from edge_agent.enroll import embed_photos, read_image
from edge_agent.models.files import resolve
from edge_agent.models.loader import load_detector
from edge_agent.models.tiling import NOISY_SIGMA, TiledDetector, low_light, merge, noise_sigma, plan_tiles
from edge_agent.models.yunet import YuNet
from edge_agent.process import process_file
from edge_agent.service import Models
from edge_agent.stats import CameraStats
from edge_agent.tracker import box_iou
from model_export.low_light import darken
from model_export.recall import ReferenceDetectors, build_mosaic, face_changed, union

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def yunet(models_dir):
    return YuNet(resolve(models_dir, "yunet_s_dynamic.onnx"), threads=2)


def test_plan_meets_min_face_within_budget_or_says_what_it_finds():
    at_4k = plan_tiles(3840, 2160, 20, 640, 1280, 12)
    assert at_4k.met and at_4k.tiles and len(at_4k.tiles) <= 12 and at_4k.tile_scale == pytest.approx(1.0)
    # Tiles cover the frame, overlap by more than the whole-frame pass's smallest face.
    cover = np.zeros((2160, 3840), bool)
    for x0, y0, x1, y1 in at_4k.tiles:
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    xs = sorted({t[0] for t in at_4k.tiles})
    ends = sorted({t[2] for t in at_4k.tiles})
    assert min(e - s for s, e in zip(xs[1:], ends[:-1])) >= 20 / at_4k.whole_scale
    tight = plan_tiles(3840, 2160, 20, 640, 1280, 4)
    assert not tight.met and len(tight.tiles) <= 4 and tight.smallest_face_px > 20
    assert not plan_tiles(640, 360, 20, 640, 1280, 12).tiles, "a 640 px frame needs no tiles for 20 px faces"


def test_unmet_budget_is_warned_at_the_first_frame(yunet, caplog):
    detector = TiledDetector(yunet, min_face_px=16, max_tiles=2, tile_size=640, batch=2)
    with caplog.at_level(logging.WARNING, logger="edge_agent.models.tiling"):
        detector.detect(np.zeros((2160, 3840, 3), np.uint8))
        detector.detect(np.zeros((2160, 3840, 3), np.uint8))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per resolution, not per frame
    assert "faces of 16 px cannot be found at 3840x2160 within max_tiles=2" in warnings[0]
    assert "smallest face detected" in warnings[0]


@pytest.mark.parametrize(
    "detector, message",
    [
        ({"min_face_px": 5}, "min_face_px"),
        ({"tile_size": 1000}, "tile_size"),
        ({"max_tiles": -1}, "max_tiles"),
        ({"border_score_threshold": 0.6}, "border_score_threshold cannot exceed score_threshold"),
        ({"max_tile": 4}, "models.detector.max_tile: unknown key"),
    ],
)
def test_detector_settings_validated(tmp_path, detector, message):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"models": {"detector": detector}}))
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_merge_prefers_the_whole_face_over_its_tile_cut_copy():
    whole = [100, 100, 200, 220]
    cut = [150, 102, 200, 218]  # the same face cut by a tile edge at x=200: small IoU with the whole
    other = [400, 100, 460, 170]
    boxes = np.array([cut, whole, other], np.float32)
    kept = merge(boxes, np.array([0.95, 0.7, 0.8]), np.array([True, False, False]), 0.3)
    assert sorted(kept.tolist()) == [1, 2]


def test_face_cut_by_a_tile_edge_is_found_once_and_whole(shared_dir, yunet):
    """A real face straddling the edge between two tiles of a 4K frame: one detection, not cut."""
    detector = TiledDetector(yunet, min_face_px=20, max_tiles=12, tile_size=1280, batch=4)
    plan = detector.plan(3840, 2160)
    edge = plan.tiles[0][2]  # right edge of the first tile
    face = cv2.imread(str(shared_dir / "faces/misc/grace_hopper.jpg"))
    alone = yunet.detect(face)
    assert len(alone) == 1
    scale = 110 / alone[0].width  # too small for the whole-frame pass at 4K (~120 px), inside the tile overlap (150 px)
    patch = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    fx1, fy1, fx2, fy2 = alone[0].box * scale
    frame = np.full((2160, 3840, 3), 110, np.uint8)
    x0 = int(edge - (fx1 + fx2) / 2)  # face centre on the tile edge
    y0 = 300
    frame[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
    truth = np.array([fx1 + x0, fy1 + y0, fx2 + x0, fy2 + y0])
    faces = detector.detect(frame)
    near = [f for f in faces if f.box[0] < truth[2] and f.box[2] > truth[0] and f.box[1] < truth[3] and f.box[3] > truth[1]]
    assert len(near) == 1, [f.box.round() for f in near]
    b = near[0].box
    iou = (min(b[2], truth[2]) - max(b[0], truth[0])) * (min(b[3], truth[3]) - max(b[1], truth[1]))
    iou /= (b[2] - b[0]) * (b[3] - b[1]) + (truth[2] - truth[0]) * (truth[3] - truth[1]) - iou
    assert iou >= 0.6, f"kept box {b.round()} is not the whole face {truth.round()}"
    assert b[0] < edge - 10 and b[2] > edge + 10, "the kept box must span the tile edge"


@pytest.fixture(scope="module")
def crowd_references(shared_dir):
    """dlib HOG (upsampled once) on each shared crowd photo at full resolution."""
    pytest.importorskip("dlib")
    ref = ReferenceDetectors(use=("hog",))
    photos = sorted((shared_dir / "faces/crowds").glob("*.jpg"))
    images = [cv2.imread(str(p)) for p in photos]
    return images, [union(ref.detect(image, upsample=1)) for image in images]


def test_4k_mosaic_faces_changed_by_process(crowd_references, make_config, tmp_path):
    """The issue's case: a 3840x2160 frame tiled with crowd photos; before, 38 of 85 faces left
    the device untouched with exit 0. Now >= 99 % of the reference faces >= 20 px are changed."""
    images, refs = crowd_references
    mosaic, faces = build_mosaic(images, refs, (3840, 2160), (6, 5))
    faces = [f for f in faces if f.width >= 20]
    assert len(faces) >= 150, len(faces)
    assert min(f.width for f in faces) < 30, "the mosaic must hold small faces"
    source, output = tmp_path / "mosaic.png", tmp_path / "out.png"
    cv2.imwrite(str(source), mosaic)
    config = make_config(pipeline={"frame_timeout_ms": 30000}, recognition={"enabled": False})
    result = process_file(Models(config), source, output, progress=False)
    assert result.stats["frames_redacted"] == 0, "the frame must be filtered, not fully redacted"
    out = read_image(output)
    missed = [f.box.round().tolist() for f in faces if not face_changed(mosaic, out, f.box)]
    assert len(missed) <= 0.01 * len(faces), f"{len(missed)} of {len(faces)} faces unchanged: {missed[:10]}"


def test_profile_head_cut_by_the_border_of_the_demo_clip_is_anonymized(shared_dir, make_config):
    """Frames 52-61: a head in profile cut by the right edge (YuNet scores 0.23-0.44), missed in
    every mode before. Lin-Manuel Miranda and Alex Lacamoire registered, as in the demo."""
    config = make_config()
    models = Models(config)
    examples = shared_dir / "faces/face_recognition/examples"
    for name, photo in (("lin", "lin-manuel-miranda.png"), ("alex", "alex-lacamoire.png")):
        vectors = embed_photos([examples / photo], models.detector, models.embedder, config.recognition.min_face_px, config.recognition.threshold).templates
        models.registry.upsert_person(name, vectors, models.model_sig)
    guard = models.pipeline(CameraStats("clip"))
    cap = cv2.VideoCapture(str(shared_dir / "video/short_hamilton_clip.mp4"))
    head = (598, 40, 638, 130)  # forehead to mouth of the cut profile, checked by eye on frames 56-61
    unchanged = []
    try:
        for index in range(62):
            ok, frame = cap.read()
            assert ok
            original = frame.copy()
            out, redacted = guard.filter_array(frame)
            assert not redacted
            if index >= 56 and not face_changed(original, out, head):
                unchanged.append(index)
    finally:
        cap.release()
        guard.close()
    assert not unchanged, f"the border profile face left unchanged in frames {unchanged}"


def _streamed_png(path: Path, width: int, height: int, patch: np.ndarray, at: tuple[int, int]) -> None:
    """A real, decodable PNG written row by row (never held whole): gray with ``patch`` at ``at``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rgb = cv2.cvtColor(patch, cv2.COLOR_BGR2RGB)
    row = np.full((width, 3), 128, np.uint8)
    plain = b"\x00" + row.tobytes()
    squeeze = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        y = 0
        while y < height:
            if at[1] <= y < at[1] + rgb.shape[0]:
                line = row.copy()
                line[at[0] : at[0] + rgb.shape[1]] = rgb[y - at[1]]
                data, y = b"\x00" + line.tobytes(), y + 1
            else:
                n = min(256, height - y, (at[1] - y) if y < at[1] else height - y)
                data, y = plain * n, y + n
            if out := squeeze.compress(data):
                f.write(chunk(b"IDAT", out))
        f.write(chunk(b"IDAT", squeeze.flush()) + chunk(b"IEND", b""))


def test_huge_image_refused_with_exit_2_and_bounded_memory(shared_dir, models_dir, tmp_path):
    """The issue's 20000x20000 PNG with a face: before, the face left untouched, 2.46 GB, exit 0."""
    source, output = tmp_path / "huge.png", tmp_path / "out.png"
    _streamed_png(source, 20000, 20000, cv2.imread(str(shared_dir / "faces/misc/grace_hopper.jpg")), (9000, 9000))
    env = {"PYTHONPATH": str(ROOT), "EDGE_AGENT_MODELS": str(models_dir), "EDGE_AGENT_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    # A fresh parent measures only this child's peak memory.
    probe = (
        "import resource, subprocess, sys; "
        "r = subprocess.run([sys.executable, '-m', 'edge_agent', 'process', sys.argv[1], '-o', sys.argv[2], '-q'], capture_output=True, text=True); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(r.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", probe, str(source), str(output)], env=env, capture_output=True, text=True, timeout=120)
    code, peak_kb = (int(v) for v in run.stdout.split())
    assert code == 2, run.stderr
    assert "edge-agent: error:" in run.stderr and "20000x20000" in run.stderr and "max_frame_pixels" in run.stderr
    assert "Traceback" not in run.stderr
    assert not output.exists()
    assert peak_kb < 1024 * 1024, f"peak memory {peak_kb / 1024:.0f} MB"


def test_video_over_the_pixel_limit_refused_and_oversized_frame_fails_closed(make_config, tmp_path):
    video = tmp_path / "big.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (1600, 900))
    for _ in range(3):
        writer.write(np.full((900, 1600, 3), 120, np.uint8))
    writer.release()
    config = make_config(pipeline={"max_frame_pixels": 1_000_000})
    models = Models(config)
    from edge_agent.enroll import EnrolError

    with pytest.raises(EnrolError, match="1600x900 frames .* over the limit of 1,000,000"):
        process_file(models, video, tmp_path / "out.mp4", progress=False)
    assert not (tmp_path / "out.mp4").exists()
    guard = models.pipeline(CameraStats("live"))
    try:
        frame = np.random.default_rng(0).integers(0, 255, (900, 1600, 3), np.uint8)
        out, redacted = guard.filter_array(frame.copy())
    finally:
        guard.close()
    assert redacted and not np.array_equal(out, frame)


def test_loader_builds_the_tiled_stack(make_config):
    stack = load_detector(make_config())
    assert isinstance(stack, TiledDetector) and stack.low_light_pass
    assert not load_detector(make_config(models={"detector": {"low_light_pass": False}})).low_light_pass


def test_faces_in_a_dark_noisy_frame_are_found_by_the_denoised_pass(shared_dir, yunet):
    """Crowd photos at 1 % of their light, with a sensor's noise, through a camera's JPEG: YuNet
    alone loses about half the faces it finds in the originals (noise, not darkness); the
    stack's second, denoised pass on dark frames finds most of them back. Bright photos are
    searched once: a clean photo's noise estimate stays under the threshold."""
    with_pass = TiledDetector(yunet, min_face_px=20, max_tiles=12, tile_size=1280, batch=4, border_score_threshold=0.2)
    without = TiledDetector(yunet, min_face_px=20, max_tiles=12, tile_size=1280, batch=4, border_score_threshold=0.2, low_light_pass=False)
    rng = np.random.default_rng(7)
    found = {"with": 0, "without": 0}
    total = 0
    for path in sorted((shared_dir / "faces/crowds").glob("*.jpg"))[:8]:
        photo = cv2.imread(str(path))
        assert noise_sigma(photo) < NOISY_SIGMA, path.name
        refs = [f.box for f in without.detect(photo) if f.width >= 20]
        dark = darken(photo, 0.01, rng, jpeg_quality=60)
        assert low_light(dark), path.name
        total += len(refs)
        for name, detector in (("with", with_pass), ("without", without)):
            boxes = [f.box for f in detector.detect(dark)]
            found[name] += sum(any(box_iou(r, b) >= 0.3 for b in boxes) for r in refs)
    assert total >= 50, total
    assert found["with"] >= 0.7 * total and found["with"] >= found["without"] + 0.15 * total, (found, total)


def test_low_light_trigger_reads_darkness_and_sensor_noise(shared_dir):
    """The second pass is for frames a camera took in little light, whichever way it exposed
    them: dark (median grey <= 50), or brightened with its gain and so noisy. The noise estimate
    reads the added noise's sigma back within a grey level (edges do not count), so a clean, bright photo is searched
    once and the same photo with a sensor's noise of 5 grey levels twice."""
    rng = np.random.default_rng(11)
    for path in sorted((shared_dir / "faces/crowds").glob("*.jpg"))[:4]:
        photo = cv2.imread(str(path))
        noisy = np.clip(photo + rng.normal(0, 5.0, photo.shape[:2])[..., None], 0, 255).astype(np.uint8)  # luma noise
        assert not low_light(photo) and low_light(noisy), path.name
        assert noise_sigma(photo) < NOISY_SIGMA and 4.0 <= noise_sigma(noisy) <= 6.5, (path.name, noise_sigma(photo), noise_sigma(noisy))
        assert low_light((photo * 0.15).astype(np.uint8)), path.name


def test_weak_border_box_touching_a_confident_face_is_dropped(shared_dir, yunet):
    """obama1.jpg: a 0.27 box along the bottom border touches Obama's box; kept, its redaction
    would spill over him when he is registered. A weak box on its own at the border stays."""
    detector = TiledDetector(yunet, min_face_px=20, max_tiles=12, tile_size=1280, batch=4, border_score_threshold=0.2)
    photo = cv2.imread(str(shared_dir / "faces/face_recognition/examples/knn_examples/test/obama1.jpg"))
    faces = detector.detect(photo)
    assert len(faces) == 1 and faces[0].score > 0.9, [(f.box.round().tolist(), round(f.score, 2)) for f in faces]


def test_recall_command_needs_the_data(tmp_path):
    from model_export.cli import main as model_export

    assert model_export(["recall", "--shared", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 1
    assert not (tmp_path / "r").exists()


def test_slow_still_image_is_filtered_not_blanked(shared_dir, make_config, tmp_path):
    """A large photo's tiles on a busy CPU can outlast frame_timeout_ms; offline, a still image
    waits for its filter instead of leaving fully redacted (the suite saw this under load)."""
    import time

    config = make_config(pipeline={"frame_timeout_ms": 200}, recognition={"enabled": False})
    models = Models(config)
    inner = models.detector

    class Slow:  # the real detector, delayed past the frame deadline
        def detect(self, frame):
            time.sleep(0.5)
            return inner.detect(frame)

    models.detector = Slow()
    source = shared_dir / "faces/face_recognition/examples/obama.jpg"
    result = process_file(models, source, tmp_path / "out.png", progress=False)
    assert result.stats["frames_redacted"] == 0 and result.stats["faces_anonymized"] == 1
