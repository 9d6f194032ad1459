"""YuNet face detector (libfacedetection.train): boxes and 5 landmarks, decoded in numpy.

Decoding here rather than through cv2.FaceDetectorYN keeps the ONNX file the only contract,
so the same model runs under onnxruntime, its INT8 variant and a TensorRT engine.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.faces import Face
from edge_agent.models.runtime import open_session

STRIDES = (8, 16, 32)


class YuNet:
    """Detects faces in a BGR frame; the frame is scaled so its long side is at most ``max_side``
    (YuNet misses very large faces at full resolution) and padded to a multiple of 32."""

    def __init__(
        self,
        path,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        max_side: int = 640,
        backend: str = "cpu",
        threads: int = 0,
    ) -> None:
        self.session = open_session(path, backend, threads)
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        # A static-shape export (e.g. 640x640) fixes the canvas; dynamic exports adapt per frame.
        self.fixed = tuple(shape[2:]) if all(isinstance(d, int) for d in shape[2:]) else None
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _canvas(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = frame.shape[:2]
        if self.fixed is not None:
            ch, cw = self.fixed
            scale = min(cw / w, ch / h, 1.0)
        else:
            scale = min(self.max_side / max(h, w), 1.0)
            ch = int(np.ceil(h * scale / 32) * 32)
            cw = int(np.ceil(w * scale / 32) * 32)
        resized = frame if scale == 1.0 else cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((ch, cw, 3), np.uint8)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        return canvas, scale

    def raw(self, canvases: np.ndarray, score_threshold: float | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Candidates before NMS for a batch ``[N, H, W, 3]`` of equal canvases (multiples of 32),
        in canvas pixels: one (boxes [K, 4], landmarks [K, 5, 2], scores [K]) per canvas.

        Tiles of one size share a single run: one call instead of N on the CPU, one TensorRT batch."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        blob = canvases.transpose(0, 3, 1, 2).astype(np.float32)
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: blob})))
        cw = canvases.shape[2]
        results = []
        for n in range(canvases.shape[0]):
            boxes, landmarks, scores = [], [], []
            for stride in STRIDES:
                cols = cw // stride
                cls = outputs[f"cls_{stride}"][n, :, 0]
                obj = outputs[f"obj_{stride}"][n, :, 0]
                score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
                keep = np.nonzero(score >= threshold)[0]
                if keep.size == 0:
                    continue
                gx = (keep % cols).astype(np.float32)
                gy = (keep // cols).astype(np.float32)
                bbox = outputs[f"bbox_{stride}"][n, keep]
                kps = outputs[f"kps_{stride}"][n, keep].reshape(-1, 5, 2)
                cx = (gx + bbox[:, 0]) * stride
                cy = (gy + bbox[:, 1]) * stride
                bw = np.exp(bbox[:, 2]) * stride
                bh = np.exp(bbox[:, 3]) * stride
                boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1))
                pts = np.empty_like(kps)
                pts[..., 0] = (gx[:, None] + kps[..., 0]) * stride
                pts[..., 1] = (gy[:, None] + kps[..., 1]) * stride
                landmarks.append(pts)
                scores.append(score[keep])
            if boxes:
                results.append((np.concatenate(boxes), np.concatenate(landmarks), np.concatenate(scores)))
            else:
                results.append((np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32)))
        return results

    def detect(self, frame: np.ndarray) -> list[Face]:
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("detector expects a BGR uint8 image")
        canvas, scale = self._canvas(frame)
        boxes, landmarks, scores = self.raw(canvas[None])[0]
        if not len(scores):
            return []
        box = boxes / scale
        pts = landmarks / scale
        conf = scores
        xywh = np.concatenate([box[:, :2], box[:, 2:] - box[:, :2]], axis=1)
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), conf.tolist(), self.score_threshold, self.nms_threshold)
        keep = np.asarray(keep, dtype=int).reshape(-1)
        h, w = frame.shape[:2]
        faces = []
        for i in keep:
            b = box[i].copy()
            b[[0, 2]] = np.clip(b[[0, 2]], 0, w)
            b[[1, 3]] = np.clip(b[[1, 3]], 0, h)
            if b[2] - b[0] < 2 or b[3] - b[1] < 2:
                continue
            faces.append(Face(box=b.astype(np.float32), landmarks=pts[i].astype(np.float32), score=float(conf[i])))
        return faces
