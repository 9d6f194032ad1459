"""Pack the donor bank asset from a ``synth`` directory.

``python -m model_export.anonymizer donor-bank --synth data/anonymizer/synth data/anonymizer/synth_turned
--out edge_agent/assets/donor_bank.npz`` keeps every face that is not held out for evaluation,
whose detection is confident and whose yaw proxy is at most ``MAX_YAW``, and stores it as a JPEG (128 px aligned crop) plus its landmarks
and descriptors (pose, skin tone, apparent sex: :func:`apparent_sex`). ``BIG`` of them (:func:`spread`: the rare poses and skin tones covered, the common
ones as dense as in the bank), also get a 256 px crop, aligned from the generator's image (``raw/``
of their synth run): every track picks among them, and its close-ups are drawn from that crop
instead of from the 128 px crop enlarged 2-3x. No pickled objects: the JPEGs are one
byte array with offsets, so the agent reads the file with ``allow_pickle=False``.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_agent.anonymize.apparent_age import DONOR_CHILD
from edge_agent.anonymize.diffusion import aligned_crop
from edge_agent.anonymize.donor import BIG_SIDE, POSE_SCALE, TONE_SCALE, clear_forehead
from edge_agent.faces import Face
from model_export.anonymizer.synth import load

MIN_SCORE = 0.8
MAX_YAW = 0.9  # past it the generator's turned faces come out doubled or smeared (seen in the turned run)
JPEG_QUALITY = 85
BIG = 480  # donors that also get a 256 px crop (~13 kB each): the pool every track picks from...
YOUNG_BIG = 160  # ...and of the young runs' children (faces moved along the child direction), as many more
COVERING = 0.25  # ...a quarter of them spread to cover every pose and skin tone, the rest drawn at random


def _jpeg(crop: np.ndarray, index) -> np.ndarray:
    """The crop's JPEG bytes (``JPEG_QUALITY``); ``index``: the generator index, for the error."""
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"could not encode face {index}")
    return buf.ravel()


def spread(features: np.ndarray, n: int, covering: float = COVERING) -> np.ndarray:
    """Indices of ``n`` rows of ``features``: a ``covering`` share by farthest-point sampling from
    the row nearest the median, so that every donor has one of them close by (the rare poses and
    skin tones), the rest drawn at random (seeded) from the others, so that the common ones are as
    dense as in the bank: every track picks among these, and farthest-point sampling alone put
    21 % of them past |yaw| 0.4, against 14 % of the donors that may be chosen."""
    n = min(n, len(features))
    if n <= 0:
        return np.zeros(0, np.int64)
    picked = [int(np.argmin(((features - np.median(features, 0)) ** 2).sum(1)))]
    dist = ((features - features[picked[0]]) ** 2).sum(1)
    while len(picked) < max(1, round(n * covering)):
        i = int(np.argmax(dist))
        picked.append(i)
        dist = np.minimum(dist, ((features - features[i]) ** 2).sum(1))
    rest = np.setdiff1d(np.arange(len(features)), picked)
    picked += list(np.random.default_rng(0).choice(rest, n - len(picked), replace=False))
    return np.sort(np.array(picked, np.int64))


def big_crops(data: dict, rows: np.ndarray, raws: list[Path]) -> tuple[list[np.ndarray], np.ndarray]:
    """256 px aligned crops (JPEG bytes) and their landmarks for ``rows`` of ``data``, from each
    face's generator image (``raws[data['run'][row]]``), aligned with its detection as ``synth`` did."""
    blobs, lms = [], []
    for i in tqdm(rows, desc="donor bank: close-up crops", unit="face"):
        path = raws[data["run"][i]] / f"{int(data['index'][i]):06d}.jpg"
        img = cv2.imread(str(path))
        if img is None:
            raise SystemExit(f"edge-agent: error: {path} is missing (the close-up crops are cut from the synth run's images)")
        crop, _, lm = aligned_crop(img, Face(data["box"][i], data["landmarks_src"][i], 1.0), BIG_SIDE)
        blobs.append(_jpeg(crop, data["index"][i]))
        lms.append(lm)
    return blobs, np.array(lms, np.float32).reshape(-1, 5, 2)


def _run_key(data: dict, i: int, metas: list[str]) -> tuple[int, str]:
    """(generator index, synth run's meta.txt line) of face ``i``: how the hand-made lists name a donor."""
    return int(data["index"][i]), metas[data["run"][i]]


def _labelled_or_scored(data: dict, rows: np.ndarray, metas: list[str], labels: dict, value: dict, net, what: str) -> np.ndarray:
    """Per donor: ``value`` of its hand label (a label holds for its generator index in the synth
    run it names, ``metas[run]``), else ``net``'s score of its crop."""
    out = []
    for i in tqdm(rows, desc=f"donor bank: {what}", unit="face"):
        lab = labels.get(_run_key(data, i, metas))
        out.append(value[lab] if lab is not None else net.score(data["crop128"][i]))
    return np.array(out, np.float32)


def apparent_sex(data: dict, rows: np.ndarray, metas: list[str]) -> np.ndarray:
    """P(male) per donor: 1 or 0 where ``weights/donor_sex_labels.csv`` says (hand-labelled by
    looking), 0.5 where it says unsure (children, faces I could not tell: they clash with nobody),
    else the apparent-sex classifier's score of the donor's crop."""
    from edge_agent.anonymize.apparent_sex import ApparentSex
    from model_export.anonymizer.sex_classifier import hand_labels

    return _labelled_or_scored(data, rows, metas, hand_labels(), {"male": 1.0, "female": 0.0, "unsure": 0.5}, ApparentSex(), "apparent sex")


def apparent_child(data: dict, rows: np.ndarray, metas: list[str]) -> np.ndarray:
    """P(child) per donor: 1 or 0 where ``weights/donor_age_labels.csv`` says child or adult
    (hand-labelled by looking), 0.5 where it says unsure (teenagers: no child donor, and drawn for
    adults), else the age classifier's score of the donor's crop."""
    from edge_agent.anonymize.apparent_age import ApparentAge
    from model_export.anonymizer.age_classifier import hand_labels

    return _labelled_or_scored(data, rows, metas, hand_labels(), {"child": 1.0, "adult": 0.0, "unsure": 0.5}, ApparentAge(), "apparent age")


OCCLUDERS = Path(__file__).resolve().parent / "weights" / "donor_occluders.csv"


def occluded(data: dict, rows: np.ndarray, metas: list[str]) -> np.ndarray:
    """Per donor: does ``weights/donor_occluders.csv`` name it (generator index and synth run)?
    Close-up donors with a hand on the chin or sunglasses, found by looking at all 480 (and at
    :func:`review`'s sheet), or with a second, smeared face against a cheek: pasted, the hand lands
    on a stranger's chin and sunglasses go indoors; the agent never draws them."""
    named = {(int(r["generator_index"]), r["synth_run"]) for r in csv.DictReader(open(OCCLUDERS))}
    return np.array([_run_key(data, i, metas) in named for i in rows], bool)


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


def dark_eyes(crop: np.ndarray, lm: np.ndarray) -> float:
    """How dark an aligned crop's eyes are against its cheeks: the brighter quartile of the eye
    patches' L* over the cheeks' median (sunglasses near 0.1-0.5, bare eyes mostly above 0.5)."""
    lum = cv2.cvtColor(crop, cv2.COLOR_BGR2LAB)[..., 0].astype(np.float32)
    r = max(2, int(0.18 * abs(lm[1, 0] - lm[0, 0])))
    mouth_y = (lm[3, 1] + lm[4, 1]) / 2

    def patch(x: float, y: float) -> np.ndarray:
        x, y = int(x), int(y)
        return lum[max(0, y - r):y + r, max(0, x - r):x + r].ravel()

    eyes = np.concatenate([patch(*lm[0]), patch(*lm[1])])
    cheeks = np.concatenate([patch(lm[0, 0], (lm[0, 1] + mouth_y) / 2), patch(lm[1, 0], (lm[1, 1] + mouth_y) / 2)])
    return float(np.percentile(eyes, 75) / (np.median(cheeks) + 1.0))


def darkest_eyes(bank: Path) -> list[tuple[int, np.ndarray, bool]]:
    """The bank's close-up donors, darkest eyes first (:func:`dark_eyes`): (generator index, its
    128 px crop, flagged in ``donor_occluders.csv``)."""
    with np.load(bank, allow_pickle=False) as z:
        rows, index, flagged = z["big"], z["index"], z["occluded"]
        crops = [cv2.imdecode(z["jpeg"][z["offsets"][i]:z["offsets"][i + 1]], cv2.IMREAD_COLOR) for i in rows]
        score = np.array([dark_eyes(c, z["landmarks"][i]) for c, i in zip(crops, rows)])
    return [(int(index[rows[k]]), crops[k], bool(flagged[rows[k]])) for k in np.argsort(score, kind="stable")]


def review(bank: Path, out: Path, n: int = 96, cols: int = 12, side: int = 96) -> None:
    """A contact sheet of the ``n`` close-up donors with the darkest eyes (:func:`darkest_eyes`),
    each labelled with its generator index, red where ``donor_occluders.csv`` flags it: where the
    sunglasses are, for whoever checks the flag list after a rebuild (one pair was missed when all
    480 were looked at in bank order, and drawn onto a stranger)."""
    tiles = []
    for index, crop, flagged in darkest_eyes(bank)[:n]:
        tile = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, str(index), (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255) if flagged else (0, 255, 0), 1)
        tiles.append(tile)
    tiles += [np.zeros((side, side, 3), np.uint8)] * (-len(tiles) % cols)
    sheet = np.vstack([np.hstack(tiles[r:r + cols]) for r in range(0, len(tiles), cols)])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)


def pack(synth_dirs: list[Path], out: Path, limit: int = 0, big: int = BIG, young_dirs: list[Path] = (), young_big: int = YOUNG_BIG) -> str:
    """Write the bank from one or more ``synth`` runs (e.g. the plain faces and the turned ones),
    ``big`` of its donors also at 256 px, and ``young_big`` more at 256 px from ``young_dirs``
    (runs moved along the child direction; chosen among themselves, so the other runs' close-up
    donors, which the hand-made lists name, stay the same); returns its sha256."""
    synth_dirs = list(synth_dirs) + list(young_dirs)
    runs = [load(d, heldout=False) for d in synth_dirs]
    for k, r in enumerate(runs):
        r["run"] = np.full(len(r["index"]), k)
    data = {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}
    if len(np.unique(data["index"])) != len(data["index"]):
        raise SystemExit("edge-agent: error: the synth runs share generator indices (give each its own --first)")
    keep = np.nonzero((data["score"] >= MIN_SCORE) & (np.abs(data["yaw"]) <= MAX_YAW))[0]
    if limit:
        keep = keep[:limit]
    blobs = [_jpeg(data["crop128"][i], data["index"][i]) for i in tqdm(keep, desc="donor bank: encode", unit="face")]
    # the close-ups: among the donors the agent may choose (DonorBank.clear's rule), spread over |yaw| (mirrors give the other side), pitch and skin tone
    usable = np.array([clear_forehead(b) for b in blobs], bool)
    feats = np.concatenate([np.stack([np.abs(data["yaw"][keep]), data["pitch"][keep]], 1) / POSE_SCALE,
                            data["tone"][keep][:, :3] / TONE_SCALE], 1)
    metas = [(Path(d) / "meta.txt").read_text().strip() for d in synth_dirs]
    child = apparent_child(data, keep, metas)
    young = data["run"][keep] >= len(synth_dirs) - len(young_dirs)
    # of the young runs, only their children (some of their faces stay adults), as close-up donors
    kids = np.nonzero(usable & young & (child >= DONOR_CHILD))[0]
    rows = np.sort(np.concatenate([np.nonzero(~young)[0], kids[spread(feats[kids], young_big)]]))
    keep, blobs, usable, feats, child, young = keep[rows], [blobs[r] for r in rows], usable[rows], feats[rows], child[rows], young[rows]
    offsets = np.cumsum([0] + [b.size for b in blobs])
    chosen = np.concatenate([np.nonzero(usable & ~young)[0][spread(feats[usable & ~young], big)], np.nonzero(young)[0]])
    big_blobs, big_lm = big_crops(data, keep[chosen], [Path(d) / "raw" for d in synth_dirs]) if len(chosen) else ([], np.zeros((0, 5, 2), np.float32))
    male = apparent_sex(data, keep, metas)
    meta = "; ".join(metas)
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
        big=chosen.astype(np.int32),
        jpeg_big=np.concatenate(big_blobs).astype(np.uint8) if big_blobs else np.zeros(0, np.uint8),
        offsets_big=np.cumsum([0] + [b.size for b in big_blobs]).astype(np.int64),
        landmarks_big=big_lm,
        male=male,
        child=child,
        occluded=occluded(data, keep, metas),
        source=np.array(f"MobileStyleGAN (random-face 2021.7.21.1) {meta}, crop 128 margin 0.25, {len(chosen)} also at {BIG_SIDE}"),
    )
    tmp.rename(out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"donor bank: {len(keep)} faces ({len(chosen)} also at {BIG_SIDE} px; {int((child[chosen] >= DONOR_CHILD).sum())} of those children), "
          f"{out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")
    return digest
