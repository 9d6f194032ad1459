"""`clip-check`: how close anonymized audience faces of the demo clip stay to their originals, by
face width (the measurement behind ``min_face_px`` and ``max_similarity`` of the diffusion and
donor modes), and what the agent's anonymizer does over the clip with a given config.

Each face is embedded after anonymization at its own landmarks and at jittered ones (another
detector's box and points for the same face differ by a few per cent): the worst of them is the
figure, because a recogniser downstream does not use our detector."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge_agent.anonymize.base import Anonymizer
from edge_agent.anonymize.classical import Pixelate
from edge_agent.anonymize.identity_check import jittered
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.yunet import YuNet
from model_export.anonymizer.data import arcface_path, every_nth_frame, yunet_path
from model_export.anonymizer.realism import IDENTIFYING_NULL_SIMILARITY, new_tracks

REGISTERED = ("lin-manuel-miranda.png", "alex-lacamoire.png")  # the clip's performers: not audience
BINS = ((0, 24), (24, 30), (30, 40), (40, 60), (60, 10_000))
CLOSE_UP_PX = 70  # agent_counts: faces this wide (on the demo clip, the performer's close-ups) are counted apart
def anonymizer_for(mode: str, student: Path, threads: int, embedder, degree: float) -> Anonymizer:
    """The generative engine with no size floor and no budget (every face goes through it)."""
    if mode == "donor":
        from edge_agent.anonymize.donor import DonorAnonymizer

        return DonorAnonymizer(degree=degree, min_face_px=0, budget_ms=None, frame_budget_ms=None, embedder=embedder)
    from edge_agent.anonymize.diffusion import DiffusionAnonymizer

    return DiffusionAnonymizer(student, degree=degree, threads=threads, budget_ms=None, min_face_px=0, embedder=embedder)


def similarity_by_width(shared: Path, student: Path, seeds: int, every: int, threads: int, mode: str = "diffusion",
                        checked: bool = False, degree: float = 1.0) -> list[dict]:
    det, emb = YuNet(yunet_path(shared), threads=threads), ArcFaceEmbedder(arcface_path(shared), threads=threads)
    gen = anonymizer_for(mode, student, threads, emb if checked else None, degree)
    performers = []
    for photo in REGISTERED:
        img = cv2.imread(str(Path(shared) / "faces/face_recognition/examples" / photo))
        performers.append(emb.embed(img, [max(det.detect(img), key=lambda f: f.width)])[0])
    performers = np.stack(performers)
    rows = []  # (width, cosine anonymized at own points, worst over jitters, cosine pixelated)
    for _, frame in every_nth_frame(Path(shared) / "video/short_hamilton_clip.mp4", every, f"clip frames ({mode})"):
        for face in det.detect(frame):
            views = jittered(face)
            originals = emb.embed(frame, views)
            # identifiable audience faces only (the same rule as tests/test_video.py)
            if emb.null_similarity(originals[:1])[0] >= IDENTIFYING_NULL_SIMILARITY or float((performers @ originals[0]).max()) >= 0.30:
                continue
            pix = frame.copy()
            Pixelate().anonymize(pix, face, 0)
            p_cos = float(np.max(np.sum(originals * emb.embed(pix, views), 1)))
            for seed in range(seeds):
                out = frame.copy()
                with new_tracks(gen, seed):
                    gen.anonymize(out, face, seed)
                cos = np.sum(originals * emb.embed(out, views), 1)
                rows.append((face.width, float(cos[0]), float(cos.max()), p_cos))
    data = np.array(rows, np.float32).reshape(-1, 4)
    result = []
    for lo, hi in BINS:
        sel = data[(data[:, 0] >= lo) & (data[:, 0] < hi)]
        if len(sel):
            result.append({"width": f"{lo}-{hi if hi < 10_000 else ''}", "samples": int(len(sel)), "generated_max": float(sel[:, 1].max()),
                           "generated_mean": float(sel[:, 1].mean()), "jittered_max": float(sel[:, 2].max()),
                           "pixelated_max": float(sel[:, 3].max())})
    return result


def agent_counts(shared: Path, config: Path) -> dict:
    """The configured pipeline over the whole clip, nobody registered: the anonymizer's counters,
    and for the donor mode how often a face's look changes between frames (:func:`_flicker`) and
    how many face-frames from ``CLOSE_UP_PX`` (the performer's close-ups, and turned heads) showed no donor."""
    from edge_agent.config import load_config
    from edge_agent.service import Models
    from edge_agent.stats import CameraStats

    cfg = load_config(config, env={"EDGE_AGENT_DATA_DIR": tempfile.mkdtemp(prefix="clip-check-")})
    guard = Models(cfg).pipeline(CameraStats("clip-check"))
    engine = guard.pipeline.anonymizer
    drawn: list[tuple[int, float]] = []  # (seed, face width) of this frame's faces
    anonymize = engine.anonymize

    def recording(frame, face, seed=0):
        drawn.append((int(seed), float(face.width)))
        return anonymize(frame, face, seed)

    engine.anonymize = recording
    failed: set[int] = set()  # tracks whose render failed the check on the finished frame
    check_failed = getattr(engine, "_check_failed", None)

    def failing(track, *rest):
        failed.add(id(track))
        return check_failed(track, *rest)

    if check_failed is not None:
        engine._check_failed = failing
    looks: dict[int, list[tuple[int, str]]] = {}  # seed -> (frame, donor index or "other") per frame it was drawn
    close_ups = close_ups_without = 0
    cap = cv2.VideoCapture(str(Path(shared) / "video/short_hamilton_clip.mp4"))
    try:
        frame_no = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            drawn.clear()
            failed.clear()
            guard.filter_array(frame)
            frame_no += 1
            tracks = getattr(engine, "_tracks", {})
            for seed, width in drawn:
                t = tracks.get(seed)
                shown = t is not None and getattr(t, "shown", -1) == engine._frame_no and t.safe and id(t) not in failed
                looks.setdefault(seed, []).append((frame_no, str(t.donor) if shown else "other"))
                if width >= CLOSE_UP_PX:
                    close_ups += 1
                    close_ups_without += not shown
        counts = dict(getattr(engine, "stats", {}))
        if engine.name == "donor":
            counts.update(_flicker(looks), close_up_face_frames=close_ups, close_up_frames_without_donor=close_ups_without)
        return counts
    finally:
        guard.close()


def _flicker(looks: dict[int, list[tuple[int, str]]]) -> dict:
    """Per track, over consecutive frames it was drawn in: how often its look changed (a donor to
    the fallback or back, or to another donor), and how many of those were a return to a donor it
    had shown within the last 5 frames (a flicker a viewer sees)."""
    changes = returns = donor_frames = other_frames = 0
    for seq in looks.values():
        for (f0, a), (f1, b) in zip(seq, seq[1:]):
            if f1 != f0 + 1:
                continue
            if a != b:
                changes += 1
                recent = [look for f, look in seq if f1 - 5 <= f < f1]
                returns += b != "other" and b in recent
        donor_frames += sum(look != "other" for _, look in seq)
        other_frames += sum(look == "other" for _, look in seq)
    return {"look_changes": changes, "flicker_returns": returns, "donor_face_frames": donor_frames, "other_face_frames": other_frames}


def clip_check(args) -> None:
    import edge_agent.anonymize.donor as donor
    from model_export.anonymizer.classifier_probe import VARIANTS, set_donor_constants

    # --paste: the donor mode with one of classifier-probe's paste variants (its constants set for the run)
    if args.paste not in VARIANTS:
        raise SystemExit(f"edge-agent: error: --paste {args.paste!r}: not one of {', '.join(map(repr, VARIANTS))}")
    setting = VARIANTS[args.paste]
    deployed = {k: getattr(donor, k) for k in setting}
    set_donor_constants(setting)
    try:
        rows = similarity_by_width(args.shared, args.student, args.seeds, args.every, args.threads, args.mode, args.checked, args.degree)
    finally:
        set_donor_constants(deployed)
    for row in rows:
        print(f"faces {row['width']:>7} px: {row['samples']:4d} {args.mode} faces, cosine to original max {row['generated_max']:.3f} "
              f"mean {row['generated_mean']:.3f}, worst over jittered points {row['jittered_max']:.3f}; "
              f"pixelated worst {row['pixelated_max']:.3f}")
    if args.config:
        print(f"agent with {args.config}:", agent_counts(args.shared, args.config))


MISFIT_CLIPS = (("short_hamilton_clip.mp4", 3), ("intel_one-by-one-person-detection.mp4", 5))  # (clip, every Nth frame)


def misfit_similarity(shared: Path, threads: int, unsure: bool | None = None) -> dict[str, np.ndarray]:
    """Faces no donor goes on (turned heads, landmarks that do not fit) of the clips, from 30 px and
    carrying identity: the cosine to the original after each redaction of their head region (as
    the donor mode redacts them), worst over jittered points. Per mode, one value per face.
    ``unsure`` True or False: instead, the faces whose detector score is under the donor mode's
    ``min_score`` (found down to the agent's border threshold: heads cut by the frame's edge) whose
    landmarks do not fit (False) or fit (True)."""
    from edge_agent.anonymize.classical import Blur
    from edge_agent.anonymize.donor import HeadBlur, head_face, landmarks_fit
    from edge_agent.config import AnonymizerConfig, DetectorConfig

    scored = unsure is not None
    det = YuNet(yunet_path(shared), threads=threads, **({"score_threshold": DetectorConfig().border_score_threshold} if scored else {}))
    emb = ArcFaceEmbedder(arcface_path(shared), threads=threads)
    min_score = AnonymizerConfig().donor.min_score
    modes: dict[str, Anonymizer] = {"head-blur (donor mode)": HeadBlur(), "flat blur (classical)": Blur(), "pixelate": Pixelate()}
    out: dict[str, list[float]] = {m: [] for m in modes}
    for clip, every in MISFIT_CLIPS:
        for _, frame in every_nth_frame(Path(shared) / "video" / clip, every, f"{'unsure' if scored else 'misfit'} faces ({clip})"):
            for face in det.detect(frame):
                fits = landmarks_fit(face)
                wanted = fits == unsure and face.score < min_score if scored else not fits
                if not wanted or face.width < 30:
                    continue
                views = jittered(face)
                originals = emb.embed(frame, views)
                if emb.null_similarity(originals[:1])[0] >= IDENTIFYING_NULL_SIMILARITY:
                    continue
                for name, mode in modes.items():
                    redacted = frame.copy()
                    # an unsure face's mosaic covers its own region, as the fallback lays it
                    mode.anonymize(redacted, face if scored and name == "pixelate" else head_face(face), 1)
                    out[name].append(float(np.sum(originals * emb.embed(redacted, views), 1).max()))
    return {k: np.array(v, np.float32) for k, v in out.items()}


def turned_similarity(shared: Path, threads: int, limit: float, seeds: int = 3) -> dict[str, np.ndarray]:
    """Faces turned past the donor's ``MAX_YAW`` but within ``limit`` (the clips, from 30 px, scored
    0.65 and up, carrying identity): what a donor would leave of the person with the limit raised
    (``seeds`` donors each), against the head blur they get. Cosine to the original, worst over
    jittered points."""
    import edge_agent.anonymize.donor as donor

    det, emb = YuNet(yunet_path(shared), threads=threads), ArcFaceEmbedder(arcface_path(shared), threads=threads)
    out: dict[str, list[float]] = {f"donor (limit {limit:g})": [], "head-blur (donor mode)": []}
    deployed = donor.MAX_YAW
    try:
        for clip, every in MISFIT_CLIPS:
            for _, frame in every_nth_frame(Path(shared) / "video" / clip, max(every // 2, 1), f"turned faces ({clip})"):
                for face in det.detect(frame):
                    donor.MAX_YAW = deployed
                    if donor.landmarks_fit(face) or face.width < 30 or face.score < 0.65:
                        continue
                    donor.MAX_YAW = limit
                    if not donor.landmarks_fit(face):
                        continue
                    views = jittered(face)
                    originals = emb.embed(frame, views)
                    if emb.null_similarity(originals[:1])[0] >= IDENTIFYING_NULL_SIMILARITY:
                        continue
                    for seed in range(seeds):
                        redacted = frame.copy()
                        donor.DonorAnonymizer(budget_ms=None, frame_budget_ms=None).anonymize(redacted, face, seed)
                        out[f"donor (limit {limit:g})"].append(float(np.sum(originals * emb.embed(redacted, views), 1).max()))
                    redacted = frame.copy()
                    donor.HeadBlur().anonymize(redacted, donor.head_face(face), 1)
                    out["head-blur (donor mode)"].append(float(np.sum(originals * emb.embed(redacted, views), 1).max()))
    finally:
        donor.MAX_YAW = deployed
    return {k: np.array(v, np.float32) for k, v in out.items()}


def _print(rows: dict[str, np.ndarray], what: str) -> None:
    for name, cos in rows.items():
        if len(cos):
            print(f"{name:>24}: {len(cos)} {what}, cosine to the original (worst over jittered points) "
                  f"max {cos.max():.3f}, p95 {np.percentile(cos, 95):.3f}, mean {cos.mean():.3f}")


def misfit_check(args) -> None:
    _print(misfit_similarity(args.shared, args.threads), "identifiable misfit faces")
    for fits in (False, True):
        _print(misfit_similarity(args.shared, args.threads, unsure=fits),
               f"identifiable faces scored under min_score whose landmarks {'fit' if fits else 'do not fit'}")
    if args.turned_limit:
        _print(turned_similarity(args.shared, args.threads, args.turned_limit), f"renders of faces turned past the donor's limit and within {args.turned_limit:g}")
