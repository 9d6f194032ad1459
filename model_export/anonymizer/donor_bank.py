"""Pack the donor bank asset from a ``synth`` directory.

``python -m model_export.anonymizer donor-bank --synth data/anonymizer/synth data/anonymizer/synth_turned
--out edge_agent/assets/donor_bank.npz`` keeps every face that is not held out for evaluation,
whose detection is confident and whose yaw proxy is at most ``MAX_YAW``, and stores it as a JPEG (128 px aligned crop) plus its landmarks
and descriptors. No pickled objects: the JPEGs are one byte array with offsets, so the agent
reads the file with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from model_export.anonymizer.synth import load

MIN_SCORE = 0.8
MAX_YAW = 0.9  # past it the generator's turned faces come out doubled or smeared (seen in the turned run)
JPEG_QUALITY = 85


def grid(bank: Path, out: Path, rows: int = 4, cols: int = 12, side: int = 80) -> None:
    """A contact sheet of the bank's first donors (synthetic people only: safe to commit and show)."""
    with np.load(bank, allow_pickle=False) as z:
        jpeg, offsets = z["jpeg"], z["offsets"]
        tiles = [cv2.resize(cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR), (side, side), interpolation=cv2.INTER_AREA)
                 for i in range(min(rows * cols, len(offsets) - 1))]
    tiles += [np.zeros_like(tiles[0])] * (rows * cols - len(tiles))
    sheet = np.vstack([np.hstack(tiles[r * cols:(r + 1) * cols]) for r in range(rows)])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)


def pack(synth_dirs: list[Path], out: Path, limit: int = 0) -> str:
    """Write the bank from one or more ``synth`` runs (e.g. the plain faces and the turned ones);
    returns its sha256."""
    runs = [load(d, heldout=False) for d in synth_dirs]
    data = {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}
    if len(np.unique(data["index"])) != len(data["index"]):
        raise SystemExit("edge-agent: error: the synth runs share generator indices (give each its own --first)")
    keep = np.nonzero((data["score"] >= MIN_SCORE) & (np.abs(data["yaw"]) <= MAX_YAW))[0]
    if limit:
        keep = keep[:limit]
    blobs, offsets = [], [0]
    for i in tqdm(keep, desc="donor bank: encode", unit="face"):
        ok, buf = cv2.imencode(".jpg", data["crop128"][i], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError(f"could not encode face {data['index'][i]}")
        blobs.append(buf.ravel())
        offsets.append(offsets[-1] + buf.size)
    meta = "; ".join((Path(d) / "meta.txt").read_text().strip() for d in synth_dirs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(
        tmp,
        jpeg=np.concatenate(blobs).astype(np.uint8),
        offsets=np.array(offsets, np.int64),
        landmarks=data["landmarks128"][keep].astype(np.float32),
        yaw=data["yaw"][keep].astype(np.float32),
        pitch=data["pitch"][keep].astype(np.float32),
        tone=data["tone"][keep].astype(np.float32),
        index=data["index"][keep].astype(np.int32),
        source=np.array(f"MobileStyleGAN (random-face 2021.7.21.1) {meta}, crop 128 margin 0.25"),
    )
    tmp.rename(out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"donor bank: {len(keep)} faces, {out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")
    return digest
