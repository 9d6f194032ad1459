"""The Hamilton clip with Lin-Manuel Miranda and Alex Lacamoire registered: no audience face
leaves recognisable, and Lin is shown unmodified in most frames where he is recognisable.

Ground truth comes from two detectors (YuNet and CenterFace), not from the pipeline. An audience
face "carries identity" when its original embedding is not a blank-face embedding (many of the
clip's dark, blurred audience faces embed like a grey oval: the recogniser cannot tell them
apart even unmodified); those must no longer match their original. Every other audience face
must at least have been changed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.enroll import embed_photos
from edge_agent.models.centerface import CenterFace
from edge_agent.models.files import ModelFileError, resolve
from edge_agent.service import Models
from edge_agent.stats import CameraStats
from edge_agent.tracker import iou_matrix

pytestmark = pytest.mark.slow
PEOPLE = {"lin": "lin-manuel-miranda.png", "alex": "alex-lacamoire.png"}
# An original embedding this close to the blank-face embedding does not single a person out:
# measured on this clip and on faces/crowds, such faces match *other* people's faces at cosine
# 0.5-0.7, as high as any anonymized version of themselves.
IDENTIFIABLE_NULL_SIMILARITY = 0.25


def _ground_truth_faces(frame, yunet, centerface):
    """Faces found by either detector: the check must not rely on the pipeline's own detector."""
    faces = yunet.detect(frame)
    if centerface is not None:
        extra = centerface.detect(frame)
        if faces and extra:
            ious = iou_matrix(np.array([f.box for f in extra]), np.array([f.box for f in faces]))
            extra = [f for f, row in zip(extra, ious) if row.max() < 0.3]
        faces = faces + extra
    return faces


ANONYMIZERS = {"pixelate": {"mode": "pixelate"}, "diffusion": {"mode": "diffusion"}, "donor": {"mode": "donor"},
               "donor+refiner": {"mode": "donor", "donor": {"refiner": True}}}


@pytest.mark.parametrize("mode", list(ANONYMIZERS))
def test_hamilton_clip(mode, shared_dir, models_dir, make_config, face_models, record_property):
    """Both a classical and the generative anonymizers (the generated faces must not resemble the
    audience member either; faces over the budgets get the classical fallback)."""
    yunet, embedder = face_models
    try:
        centerface = CenterFace(resolve(models_dir, "centerface.onnx"), score_threshold=0.5)
    except ModelFileError:
        centerface = None
    config = make_config(anonymizer=ANONYMIZERS[mode])
    models = Models(config)
    examples = shared_dir / "faces/face_recognition/examples"
    refs = {}
    for name, photo in PEOPLE.items():
        vectors = embed_photos([examples / photo], models.detector, models.embedder, config.recognition.min_face_px, config.recognition.threshold).templates
        models.registry.upsert_person(name, vectors, models.model_sig)
        refs[name] = vectors[0]  # the photo's own template comes first
    reference = np.stack([refs["lin"], refs["alex"]])
    # Per-frame bound for "recognisable" and "still matches": LFW's per-frame same/different
    # threshold (reports/recognition/thresholds.md); the agent's own bound is on pooled evidence.
    threshold = 0.42
    guard = models.pipeline(CameraStats("test"))
    cap = cv2.VideoCapture(str(shared_dir / "video/short_hamilton_clip.mp4"))
    lin_recognisable = lin_shown = audience = identifiable = 0
    leaks, untouched = [], []
    worst = -1.0  # the closest any identifiable audience face stays to its original
    lin_boxes = np.zeros((0, 4), np.float32)
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        original = frame.copy()
        output, redacted = guard.filter_array(frame)
        faces = _ground_truth_faces(original, yunet, centerface)
        if faces:
            before = embedder.embed(original, faces)
            after = embedder.embed(output, faces)
            blank = embedder.null_similarity(before) >= IDENTIFIABLE_NULL_SIMILARITY
            boxes = np.array([f.box for f in faces], np.float32)
            # Lin keeps his label while he turns away: a face overlapping last frame's Lin is Lin.
            follows_lin = iou_matrix(boxes, lin_boxes).max(axis=1) >= 0.3 if len(lin_boxes) else np.zeros(len(faces), bool)
            now_lin = []
            for face, b, a, no_id, follows in zip(faces, before, after, blank, follows_lin):
                to_registered = reference @ b
                x1, y1, x2, y2 = face.box.astype(int)
                same_pixels = np.array_equal(output[y1:y2, x1:x2], original[y1:y2, x1:x2])
                if to_registered[0] >= threshold:
                    lin_recognisable += 1
                    lin_shown += bool(same_pixels)
                    now_lin.append(face.box)
                elif follows:
                    now_lin.append(face.box)
                elif to_registered.max() < 0.30:
                    audience += 1
                    if same_pixels:
                        untouched.append((index, face.box.round().tolist()))
                    if not no_id:
                        identifiable += 1
                        worst = max(worst, float(a @ b))
                        if float(a @ b) >= threshold:
                            leaks.append((index, face.box.round().tolist(), round(float(a @ b), 3)))
            lin_boxes = np.array(now_lin, np.float32).reshape(-1, 4)
        index += 1
    guard.close()
    assert index == 275
    assert audience > 300, "the clip's audience faces were not found"
    assert not leaks, f"audience faces still matching their original after filtering: {leaks}"
    assert not untouched, f"audience faces left unmodified: {untouched}"
    fraction = lin_shown / max(lin_recognisable, 1)
    record_property("lin_shown_fraction", round(fraction, 3))
    record_property("worst_audience_cosine", round(worst, 3))
    print(f"Lin shown unmodified in {lin_shown}/{lin_recognisable} frames where he is recognisable ({fraction:.1%}); "
          f"{audience} audience faces checked, {identifiable} of them identifiable, the closest at cosine {worst:.3f} to its original")
    assert lin_recognisable > 80
    # The accept bound (0.64, the first with 0 false shows over 10,000 LFW impostor tracks) hides
    # Lin in his weaker frames: 49 % measured here (75 % at the former 0.50 bound). Hiding him is
    # the safe error; a regression that never shows him fails here.
    assert fraction >= 0.4
