"""Aligned training / evaluation crops from the shared data (read in place, never copied)."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_agent.anonymize.diffusion import CROP, aligned_crop
from edge_agent.models.yunet import YuNet


def yunet_path(shared: Path) -> Path:
    return Path(shared) / "models/yunet/yunet_s_dynamic.onnx"


def arcface_path(shared: Path) -> Path:
    return Path(shared) / "models/mobilefacenet/mobilefacenet.onnx"


def every_nth_frame(path: Path, every: int, desc: str):
    """(number, frame) of frames ``every``, ``2 * every``, ... of a video (counted from 1), with a progress bar."""
    cap = cv2.VideoCapture(str(path))
    index = 0
    try:
        with tqdm(desc=desc, unit="frame") as bar:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                index += 1
                bar.update(1)
                if index % every == 0:
                    yield index, frame
    finally:
        cap.release()


def central_face(faces, shape):
    """The detection nearest the image centre (LFW images are centred on their subject)."""
    if not faces:
        return None
    h, w = shape[:2]
    return min(faces, key=lambda f: (((f.box[0] + f.box[2]) / 2 - w / 2) ** 2 + ((f.box[1] + f.box[3]) / 2 - h / 2) ** 2))


def heldout(name: str, fraction: float) -> bool:
    """Deterministic identity split by name hash: held-out identities never enter training."""
    return (zlib.crc32(name.encode()) % 10000) < fraction * 10000


def prepare(shared: Path, out: Path, heldout_fraction: float = 0.22, limit: int = 0) -> None:
    """Detect + align every LFW image and the colour photos; writes ``out/lfw.npz`` and
    ``out/colour.npz`` (luminance crops, landmarks in crop pixels, identities, source paths)."""
    shared = Path(shared)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det = YuNet(yunet_path(shared), threads=2)
    root = shared / "datasets/lfw_gray"
    files = sorted(root.glob("*/*.jpg"))
    if limit:
        files = files[:limit]
    ys, lms, ids, names, paths, held = [], [], [], [], [], []
    id_of: dict[str, int] = {}
    missed = 0
    for path in tqdm(files, desc="lfw: detect+align", unit="img"):
        img = cv2.imread(str(path))
        if img is None:
            missed += 1
            continue
        face = central_face(det.detect(img), img.shape)
        if face is None:
            missed += 1
            continue
        crop, _, lm = aligned_crop(img, face, CROP)
        name = path.parent.name
        ys.append(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY))
        lms.append(lm)
        ids.append(id_of.setdefault(name, len(id_of)))
        paths.append(str(path.relative_to(shared)))
        held.append(heldout(name, heldout_fraction))
    names = list(id_of)
    np.savez_compressed(
        out / "lfw.npz", y=np.stack(ys), landmarks=np.stack(lms), identity=np.array(ids, np.int32),
        names=np.array(names), paths=np.array(paths), heldout=np.array(held, bool),
    )
    held_ids = len({i for i, h in zip(ids, held) if h})
    print(f"lfw: {len(ys)} crops ({missed} without a face), {len(names)} identities, "
          f"{held_ids} held out ({int(np.sum(held))} crops), train {len(ys) - int(np.sum(held))} crops")
    # colour photos: evaluation only
    rows = list(csv.DictReader(open(shared / "faces/identities.csv")))
    cys, clms, cids, cpaths = [], [], [], []
    for row in tqdm(rows, desc="colour photos", unit="img"):
        img = cv2.imread(str(shared / "faces" / row["path"]))
        if img is None:
            continue
        faces = det.detect(img)
        face = max(faces, key=lambda f: f.width * f.height) if faces else None
        if face is None:
            continue
        crop, _, lm = aligned_crop(img, face, CROP)
        cys.append(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY))
        clms.append(lm)
        cids.append(row["identity"])
        cpaths.append(row["path"])
    np.savez_compressed(out / "colour.npz", y=np.stack(cys), landmarks=np.stack(clms), identity=np.array(cids), paths=np.array(cpaths))
    print(f"colour: {len(cys)} faces of {len(set(cids))} identities")
