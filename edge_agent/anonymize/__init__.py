"""Anonymizers: classical redactions now, the diffusion engine where configured."""

from __future__ import annotations

from edge_agent.anonymize.base import Anonymizer
from edge_agent.anonymize.classical import CLASSICAL, Pixelate
from edge_agent.config import AnonymizerConfig


def classical(mode: str, cfg: AnonymizerConfig) -> Anonymizer:
    return Pixelate(cfg.pixelate_blocks) if mode == "pixelate" else CLASSICAL[mode]()


def build_anonymizers(cfg: AnonymizerConfig) -> tuple[Anonymizer, Anonymizer]:
    """(the configured anonymizer, the classical fallback used when it fails or runs late)."""
    fallback = classical(cfg.fallback, cfg)
    if cfg.mode != "diffusion":
        return classical(cfg.mode, cfg), fallback
    from edge_agent.anonymize.diffusion import build_diffusion

    return build_diffusion(cfg.diffusion), fallback
