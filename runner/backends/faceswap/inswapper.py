"""The insightface backend: buffalo_l (SCRFD detection + ArcFace recognition) and
inswapper_128, through insightface's own loading and swapping code.

Direction: ``swapper.get(img=ori, target_face=<the face in ori>, source_face=<the face in
target>)`` puts target's identity (its ArcFace embedding) on ori's face, in ori's picture.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from runner.backends.faceswap import blend
from runner.backends.faceswap.detect import main_face_index


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # N workers x all cores threads oversubscribe the machine: each worker gets its share.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


class InsightSwapper:
    def __init__(self, buffalo_dir: Path, inswapper: Path, providers: list[str],
                 threads: int) -> None:
        from insightface.app import FaceAnalysis
        from insightface.model_zoo import get_model

        options = session_options(threads)
        # insightface prints while loading ("inswapper-shape: ..."); keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()):
            self.app = FaceAnalysis(
                name=str(buffalo_dir),
                providers=providers,
                allowed_modules=["detection", "recognition"],
                sess_options=options,
            )
            ctx = 0 if "CUDAExecutionProvider" in providers else -1
            self.app.prepare(ctx_id=ctx, det_size=(640, 640))
            self.swapper = get_model(str(inswapper), providers=providers, sess_options=options)
        if "recognition" not in self.app.models:
            raise RuntimeError(f"no recognition model (w600k_r50.onnx) in {buffalo_dir}")
        self.providers = list(self.swapper.session.get_providers())

    def faces(self, bgr: np.ndarray) -> list[Any]:
        return list(self.app.get(bgr))

    def main_face(self, bgr: np.ndarray) -> Any | None:
        faces = self.faces(bgr)
        if not faces:
            return None
        boxes = np.array([f.bbox for f in faces], dtype=np.float64)
        return faces[main_face_index(boxes, bgr.shape)]

    def swap(self, ori_bgr: np.ndarray, ori_face: Any, target_face: Any) -> np.ndarray:
        out = self.swapper.get(ori_bgr, ori_face, target_face, paste_back=True)
        return np.asarray(out, dtype=np.uint8)

    def embedding_near(self, bgr: np.ndarray, near: Any) -> np.ndarray:
        """ArcFace embedding of the face in ``bgr`` that overlaps ``near`` most; when none is
        detected, the recogniser is run at ``near``'s landmarks (the swap does not move it)."""
        from insightface.app.common import Face

        best, best_iou = None, 0.3
        for face in self.faces(bgr):
            iou = _iou(face.bbox, near.bbox)
            if iou > best_iou and face.get("embedding") is not None:
                best, best_iou = face, iou
        if best is None:
            best = Face(bbox=near.bbox, kps=near.kps, det_score=0.0)
            self.app.models["recognition"].get(bgr, best)
        return np.asarray(best.normed_embedding, dtype=np.float64)


def face_region(shape: tuple[int, ...], bbox: np.ndarray, size_frac: float = 0.05) -> np.ndarray:
    """A soft ellipse over a detector box: where the swap changed the picture."""
    import cv2

    x0, y0, x1, y1 = (float(v) for v in bbox[:4])
    mask = np.zeros(shape[:2], np.float32)
    center = (round((x0 + x1) / 2), round((y0 + y1) / 2))
    axes = (max(1, round((x1 - x0) * 0.45)), max(1, round((y1 - y0) * 0.55)))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1.0, -1)
    size = max(x1 - x0, y1 - y0)
    return blend.soft_mask(mask, size, size_frac, size_frac)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
