"""Anonymizers: classical redactions, and the donor or diffusion engine where configured."""

from __future__ import annotations

import logging
from pathlib import Path

from edge_agent.anonymize.base import Anonymizer
from edge_agent.anonymize.classical import CLASSICAL, Pixelate
from edge_agent.config import AnonymizerConfig


log = logging.getLogger(__name__)

# The project's own distilled student (model card: edge_agent/assets/FACE_STUDENT.md).
STUDENT = Path(__file__).resolve().parent.parent / "assets" / "face_student.onnx"
# A still photo's time for its generated faces (a third of edge_agent.service.STILL_IMAGE_TIMEOUT_S,
# past which the whole photo is redacted): a crowd's faces past it keep the classical fallback.
STILL_BUDGET_MS = 20_000.0


def classical(mode: str, cfg: AnonymizerConfig) -> Anonymizer:
    return Pixelate(cfg.pixelate_blocks, cfg.pixelate_large_blocks) if mode == "pixelate" else CLASSICAL[mode]()


def donor_engine(cfg: AnonymizerConfig, fallback: Anonymizer, embedder=None, still: bool = False) -> Anonymizer:
    """The donor anonymizer, or the classical fallback for every face when its bank cannot load.
    ``still``: a still photo's budgets (:func:`build_anonymizers`)."""
    from edge_agent.anonymize.donor import BANK, DonorAnonymizer

    d = cfg.donor
    try:
        refiner = None
        if d.refiner and embedder is None:
            log.warning("donor.refiner is off: each refined face is checked with the recogniser, and recognition is disabled")
        elif d.refiner:
            from edge_agent.anonymize.refine import REFINER, Refiner

            refiner = Refiner(d.refiner_model or REFINER)
        return DonorAnonymizer(
            d.bank or BANK, degree=d.degree, min_face_px=d.min_face_px, min_score=d.min_score, small_faces=fallback,
            embedder=embedder, max_similarity=d.max_similarity, budget_ms=STILL_BUDGET_MS if still else d.budget_ms,
            frame_budget_ms=STILL_BUDGET_MS if still else d.frame_budget_ms, refiner=refiner,
            refine_budget_ms=STILL_BUDGET_MS if still else d.refine_budget_ms, match_sex=d.match_sex, match_age=d.match_age,
            veil=embedder is None,  # nothing to find a face too close: every outline veiled (fail closed)
        )
    except Exception as exc:  # keep filtering with the classical redaction rather than not at all
        log.error("donor anonymizer unavailable (%s); every face gets %s", exc, cfg.fallback)
        return fallback


def build_anonymizers(cfg: AnonymizerConfig, embedder=None, still: bool = False) -> tuple[Anonymizer, Anonymizer]:
    """(the configured anonymizer, the classical fallback used when it fails or runs late).
    ``embedder`` (the agent's recogniser) lets the generative anonymizers check each new face.
    ``still``: a still photo, whose budgets are ``STILL_BUDGET_MS``: a stream's keep its frame
    rate by serving a crowd's faces over several frames, and a photo has no next frame, so its
    faces past them kept the classical fallback."""
    fallback = classical(cfg.fallback, cfg)
    if cfg.mode == "donor":
        return donor_engine(cfg, fallback, embedder, still), fallback
    if cfg.mode != "diffusion":
        return classical(cfg.mode, cfg), fallback
    from edge_agent.anonymize.diffusion import DiffusionAnonymizer

    d = cfg.diffusion
    try:
        engine = DiffusionAnonymizer(
            d.model or STUDENT,
            degree=d.degree,
            regenerate_every=d.regenerate_frames,
            regenerate_on_motion=d.regenerate_on_motion,
            budget_ms=STILL_BUDGET_MS if still else d.budget_ms,
            backend=d.backend,
            threads=d.threads,
            min_face_px=d.min_face_px,
            small_faces=fallback,
            embedder=embedder,
            max_similarity=d.max_similarity,
        )
    except Exception as exc:  # keep filtering with the classical redaction rather than not at all
        log.error("diffusion anonymizer unavailable (%s); every face gets %s", exc, cfg.fallback)
        return fallback, fallback
    return engine, fallback
