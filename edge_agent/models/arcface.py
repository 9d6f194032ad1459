"""MobileFaceNet ArcFace embedder: 5-point aligned 112x112 crop -> L2-normalised 128-d vector."""

from __future__ import annotations

import numpy as np

from edge_agent.align import align
from edge_agent.faces import Face
from edge_agent.models.runtime import open_session

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class ArcFaceEmbedder:
    """Embeds faces; cosine similarity of two outputs is their dot product."""

    size = 112

    def __init__(self, path, backend: str = "cpu", threads: int = 0) -> None:
        self.session = open_session(path, backend, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.dim = int(self.session.get_outputs()[0].shape[1])
        # Where faces that carry no identity land (too dark, blurred, small, covered): the
        # embedding of a blank grey crop. Such embeddings also sit close to each other, so a
        # match between two of them says nothing about who it is.
        self.null = self.embed_crops(np.full((1, self.size, self.size, 3), 96, np.uint8))[0]

    def null_similarity(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine of each embedding to the blank-face embedding: high means no identity in it."""
        return embeddings @ self.null

    def crops(self, frame: np.ndarray, faces: list[Face]) -> np.ndarray:
        """Aligned BGR crops, [N, 112, 112, 3] uint8."""
        return np.stack([align(frame, f.landmarks, self.size)[0] for f in faces])

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """[N, 112, 112, 3] BGR uint8 -> [N, dim] float32, unit length."""
        rgb = crops[..., ::-1].astype(np.float32) / 255.0
        blob = ((rgb - MEAN) / STD).transpose(0, 3, 1, 2).copy()
        emb = self.session.run(None, {self.input_name: blob})[0].astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if not np.all(np.isfinite(emb)) or np.any(norms < 1e-6):
            raise ValueError("embedder produced a degenerate vector")
        return emb / norms

    def embed(self, frame: np.ndarray, faces: list[Face]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_crops(self.crops(frame, faces))
