"""The insightface models: buffalo_l (SCRFD detection + ArcFace recognition) and
inswapper_128, through insightface's own loading and swapping code; the "scrfd" detector
processor. The "inswapper" swapper processor that uses them is in ``swappers``.

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
from runner.backends.faceswap.detect import iou
from runner.backends.faceswap.interfaces import Detections


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # N workers x all cores threads oversubscribe the machine: each worker gets its share.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


class InsightSwapper:
    """buffalo_l and inswapper_128 loaded once; faces as insightface ``Face`` objects."""

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

    def detect(self, bgr: np.ndarray) -> Detections:
        """SCRFD's boxes, five key points and scores (what ``FaceAnalysis.get`` detects)."""
        bboxes, kpss = self.app.det_model.detect(bgr, max_num=0, metric="default")
        return Detections(boxes=bboxes[:, 0:4], how="scrfd", kps=kpss, scores=bboxes[:, 4])

    def face(self, bgr: np.ndarray, found: Detections, index: int) -> Any:
        """Detection ``index`` as insightface's ``Face``, its ArcFace embedding computed the
        way ``FaceAnalysis.get`` does for every face (here only for the one needed)."""
        from insightface.app.common import Face

        kps = None if found.kps is None else found.kps[index]
        score = 0.0 if found.scores is None else found.scores[index]
        face = Face(bbox=found.boxes[index], kps=kps, det_score=score)
        self.app.models["recognition"].get(bgr, face)
        return face

    def swap(self, ori_bgr: np.ndarray, ori_face: Any, target_face: Any) -> np.ndarray:
        out = self.swapper.get(ori_bgr, ori_face, target_face, paste_back=True)
        return np.asarray(out, dtype=np.uint8)

    def embedding_near(self, bgr: np.ndarray, near: Any) -> np.ndarray:
        """ArcFace embedding of the face in ``bgr`` that overlaps ``near`` most; when none is
        detected, the recogniser is run at ``near``'s landmarks (the swap does not move it)."""
        from insightface.app.common import Face

        found = self.detect(bgr)
        best, best_iou = None, 0.3
        for index, box in enumerate(found.boxes):
            overlap = iou(box, near.bbox)
            if overlap > best_iou:
                best, best_iou = index, overlap
        if best is not None:
            return np.asarray(self.face(bgr, found, best).normed_embedding, dtype=np.float64)
        stand_in = Face(bbox=near.bbox, kps=near.kps, det_score=0.0)
        self.app.models["recognition"].get(bgr, stand_in)
        return np.asarray(stand_in.normed_embedding, dtype=np.float64)


class ScrfdDetector:
    """The "scrfd" detector processor: buffalo_l's SCRFD on an RGB picture."""

    name = "scrfd"

    def __init__(self, models: InsightSwapper) -> None:
        self.models = models

    def detect(self, rgb: np.ndarray) -> Detections:
        return self.models.detect(np.ascontiguousarray(rgb[:, :, ::-1]))


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
