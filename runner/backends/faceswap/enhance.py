"""Face restoration with GFPGAN 1.4 or CodeFormer as ONNX (FaceFusion's exports), when the
user has put the weights in ``models_dir``; skipped otherwise.

A swapped face is softer than its surroundings (a 128 px swap stretched over a larger face,
or a resampled triangle warp); a restorer brings the detail back. Blended at 80 % like
FaceFusion's default, so the skin texture of the picture is not replaced outright.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

# FaceFusion's "ffhq_512" five-point template (left eye, right eye, nose, mouth corners).
FFHQ_512 = np.array(
    [
        [0.37691676, 0.46864664],
        [0.62285697, 0.46912813],
        [0.50123859, 0.61331904],
        [0.39308822, 0.72541100],
        [0.61150205, 0.72490465],
    ]
)


def five_points(points68: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks reduced to insightface's five (eyes, nose tip, mouth corners)."""
    return np.array(
        [
            points68[36:42].mean(axis=0),
            points68[42:48].mean(axis=0),
            points68[30],
            points68[48],
            points68[54],
        ]
    )


class Enhancer:
    def __init__(self, path: Path, providers: list[str], threads: int, blend: float = 0.8) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.size = int(shape[2]) if isinstance(shape[2], int) else 512
        # CodeFormer takes a fidelity weight as a second input (double in FaceFusion's export).
        self.weight_input: tuple[str, Any] | None = None
        for extra in inputs[1:]:
            dtype = np.float64 if "double" in extra.type else np.float32
            self.weight_input = (extra.name, dtype)
        self.blend = blend

    @property
    def name(self) -> str:
        return self.path.name

    def enhance(self, rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """Restore the face at ``kps`` (five points) in ``rgb`` and blend it back."""
        size = self.size
        template = FFHQ_512 * size
        matrix, _ = cv2.estimateAffinePartial2D(kps.astype(np.float32),
                                                template.astype(np.float32), method=cv2.LMEDS)
        if matrix is None:
            return rgb
        crop = cv2.warpAffine(rgb, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)
        blob = (crop.astype(np.float32) / 255.0 - 0.5) / 0.5
        blob = blob.transpose(2, 0, 1)[None]
        feeds: dict[str, Any] = {self.input_name: blob}
        if self.weight_input is not None:
            name, dtype = self.weight_input
            feeds[name] = np.array([0.5], dtype=dtype)
        out = self.session.run(None, feeds)[0][0]
        out = np.clip(out.transpose(1, 2, 0), -1, 1)
        restored = ((out + 1.0) * 127.5).round().astype(np.uint8)
        # A feathered box in the crop, mapped back with the face.
        box = np.zeros((size, size), np.float32)
        m = int(0.1 * size)
        box[m:-m, m:-m] = 1.0
        box = cv2.GaussianBlur(box, (0, 0), 0.05 * size)
        inverse = cv2.invertAffineTransform(matrix)
        h, w = rgb.shape[:2]
        back = cv2.warpAffine(restored, inverse, (w, h), borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(box, inverse, (w, h)) * self.blend
        mixed = back.astype(np.float32) * alpha[..., None] + rgb.astype(np.float32) * (
            1.0 - alpha[..., None]
        )
        return np.clip(mixed.round(), 0, 255).astype(np.uint8)
