"""Face detection and 68-point landmarks with dlib (the "dlib" detector and landmarker
processors), main-face choice, and ``FaceFinder``, which pairs any detector with any
landmarker.

HOG first (about 10 ms on a 250x250 LFW crop); when it finds nothing, or a face near its
smallest window (others as small may hide), the same with one up-sampling, then on a
padded copy (HOG misses faces cut by the image border), and last the
CNN (MMOD) detector, which is slow on CPU but finds turned and partial faces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from runner.backends.faceswap.interfaces import Detections
from runner.backends.faceswap.models import dlib_model_dir

if TYPE_CHECKING:
    from runner.backends.faceswap.interfaces import Detector, Landmarker

DETECT_MAX_SIDE = 1024  # HOG time grows with pixels; detect on a smaller copy of big images
CNN_MAX_SIDE = 480
SMALL_FACE = 90  # box pixels at the detection scale: near HOG's window (80 x 80), the
# smallest face it finds without up-sampling


@dataclass
class DlibModels:
    detector: Any
    predictor: Any
    recognizer: Any
    cnn_path: Path | None
    _cnn: Any = None

    @property
    def cnn(self) -> Any:
        # Loaded on first use: most images never need it.
        if self._cnn is None and self.cnn_path is not None:
            import dlib

            self._cnn = dlib.cnn_face_detection_model_v1(str(self.cnn_path))
        return self._cnn


def load_dlib() -> DlibModels:
    import dlib

    folder = dlib_model_dir()
    if folder is None:
        raise RuntimeError(
            "face_recognition_models is not installed: pip install face-recognition-models"
        )
    cnn = folder / "mmod_human_face_detector.dat"
    return DlibModels(
        detector=dlib.get_frontal_face_detector(),
        predictor=dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat")),
        recognizer=dlib.face_recognition_model_v1(
            str(folder / "dlib_face_recognition_resnet_model_v1.dat")
        ),
        cnn_path=cnn if cnn.is_file() else None,
    )


@dataclass
class Face:
    """One face: its box (x0, y0, x1, y1), 68 landmarks (x, y) and how it was found."""

    box: np.ndarray
    points: np.ndarray
    how: str
    descriptor: np.ndarray | None = None
    mesh: np.ndarray | None = None  # the dense mesh the 68 came from (N x 2), if any
    depth: np.ndarray | None = None  # the mesh's depth (N: smaller nearer), if it has one

    @property
    def size(self) -> float:
        """A scale for masks and padding: the larger side of the landmark extent."""
        span = self.points.max(axis=0) - self.points.min(axis=0)
        return float(max(span[0], span[1], 1.0))


def main_face_index(boxes: np.ndarray, shape: tuple[int, ...]) -> int:
    """Largest and most central (insightface's detector metric: area - 2 * offset^2)."""
    h, w = shape[:2]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - w / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - h / 2
    return int(np.argmax(area - 2.0 * (cx * cx + cy * cy)))


def _rects_to_boxes(rects: Any, scale: float, shift: float) -> np.ndarray:
    out = [
        (
            (r.left() - shift) / scale,
            (r.top() - shift) / scale,
            (r.right() - shift) / scale,
            (r.bottom() - shift) / scale,
        )
        for r in rects
    ]
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def _rects_to_boxes_shift(boxes: np.ndarray, scale: float, shift: float) -> np.ndarray:
    return (boxes - shift) / scale


def detect_boxes(models: DlibModels, rgb: np.ndarray) -> tuple[np.ndarray, str]:
    """Every face box in an RGB uint8 image, and which detector stage found them."""
    h, w = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = rgb if scale == 1.0 else cv2.resize(rgb, None, fx=scale, fy=scale,
                                                interpolation=cv2.INTER_AREA)
    small = np.ascontiguousarray(small)
    upsample = 1 if max(small.shape[:2]) <= 600 else 0
    for up in sorted({0, upsample}):
        rects = models.detector(small, up)
        if len(rects):
            if up == 0 and min(r.width() for r in rects) < SMALL_FACE:
                # Faces near HOG's smallest window: others as small are missed (a group
                # photo's subject among them). Look again at twice the size.
                again = models.detector(small, 1)
                if len(again) > len(rects):
                    return _rects_to_boxes(again, scale, 0), "hog1"
            return _rects_to_boxes(rects, scale, 0), f"hog{up}"
    pad = max(16, int(0.2 * max(small.shape[:2])))
    padded = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    rects = models.detector(padded, upsample)
    if len(rects):
        return _rects_to_boxes(rects, scale, pad), "hog-pad"
    cnn = models.cnn
    if cnn is not None:
        # No up-sampling and at most CNN_MAX_SIDE: it costs ~0.7 s at 250 px on one core,
        # four times that up-sampled, and a picture without a face pays it in full.
        shrink = min(1.0, CNN_MAX_SIDE / max(padded.shape[:2]))
        view = padded if shrink == 1.0 else cv2.resize(padded, None, fx=shrink, fy=shrink,
                                                       interpolation=cv2.INTER_AREA)
        dets = cnn(np.ascontiguousarray(view), 0)
        if len(dets):
            boxes = _rects_to_boxes([d.rect for d in dets], shrink, 0)
            return _rects_to_boxes_shift(boxes, scale, pad), "cnn"
    return np.zeros((0, 4)), "none"


def landmarks(models: DlibModels, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    import dlib

    rect = dlib.rectangle(*(round(float(v)) for v in box))
    shape = models.predictor(rgb, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


class DlibDetector:
    """The "dlib" detector processor: HOG, then padded HOG, then the CNN (see above)."""

    name = "dlib"

    def __init__(self, models: DlibModels) -> None:
        self.models = models

    def detect(self, rgb: np.ndarray) -> Detections:
        boxes, how = detect_boxes(self.models, rgb)
        return Detections(boxes=boxes, how=how)


class DlibLandmarker:
    """The "dlib" landmarker processor: dlib's 68-point shape predictor (iBUG order)."""

    name = "dlib"

    def __init__(self, models: DlibModels) -> None:
        self.models = models

    def points(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        return landmarks(self.models, rgb, box)


class MeshTo68:
    """A landmarker of a dense mesh on BGR pictures (MediaPipe's FaceMesh: 468/478 points)
    as a ``Landmarker``: RGB in, the mesh's 68-point iBUG subset out (``to_68``).

    ``fallback`` answers for a face the mesh does not see (a score below its bar): dlib's
    68 then, so a face dlib alone would swap is never lost to the mesh. ``fallback_68``:
    the fallback's 68 points for every face, the mesh kept only for the warp's density
    (on the benchmark the mesh's own 68 raised the JPEG-ghost AUC by 0.04, BENCHMARKS.md)."""

    def __init__(self, name: str, mesh: Any, to_68: Callable[[np.ndarray], np.ndarray],
                 fallback: Landmarker | None = None, fallback_68: bool = False) -> None:
        self.name = name
        self.mesh = mesh  # anything with points(image_bgr, box) -> np.ndarray | None
        self.to_68 = to_68
        self.fallback = fallback
        self.fallback_68 = fallback_68  # the 68 from the fallback, the mesh only for density

    def points_and_mesh(self, rgb: np.ndarray,
                        box: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The 68 points and the mesh they came from (N x 2, or N x 3 with its depth where
        the mesh has one); (fallback's 68, None) without a mesh."""
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with_depth = getattr(self.mesh, "points_3d", None)
        mesh = with_depth(bgr, box) if with_depth is not None else self.mesh.points(bgr, box)
        if mesh is None:
            return (None if self.fallback is None else self.fallback.points(rgb, box)), None
        mesh = np.asarray(mesh, dtype=np.float64)[:, :3]
        if self.fallback_68 and self.fallback is not None:
            points = self.fallback.points(rgb, box)
            if points is not None:
                return points, mesh
        return np.asarray(self.to_68(mesh[:, :2]), dtype=np.float64), mesh

    def points(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        return self.points_and_mesh(rgb, box)[0]


def landmarks_of(landmarker: Landmarker, rgb: np.ndarray, box: np.ndarray
                 ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """A landmarker's 68 points and, from a mesh landmarker, its dense mesh too (x, y) and
    the mesh's depth where it has one."""
    dense = getattr(landmarker, "points_and_mesh", None)
    if dense is None:
        return landmarker.points(rgb, box), None, None
    points, mesh = dense(rgb, box)
    if mesh is None:
        return points, None, None
    return points, mesh[:, :2], (mesh[:, 2] if mesh.shape[1] > 2 else None)


class FaceFinder:
    """A detector and a landmarker together: the main face of a picture with its 68 points,
    or the face of an output nearest a known one. Any pair of processors of those two kinds
    (``interfaces.Detector``, ``interfaces.Landmarker``) will do."""

    def __init__(self, detector: Detector, landmarker: Landmarker) -> None:
        self.detector = detector
        self.landmarker = landmarker

    def main_face(self, rgb: np.ndarray) -> Face | None:
        found = self.detector.detect(rgb)
        if len(found.boxes) == 0:
            return None
        box = found.boxes[main_face_index(found.boxes, rgb.shape)]
        points, mesh, depth = landmarks_of(self.landmarker, rgb, box)
        if points is None:  # a landmarker that finds no face in the box: none to swap
            return None
        return Face(box=box, points=points, how=found.how, mesh=mesh, depth=depth)

    def face_near(self, rgb: np.ndarray, near: Face) -> Face:
        """The face of ``rgb`` that overlaps ``near`` most (the swapped face in an output);
        ``near``'s own box when no detector finds it, so a measurement always exists."""
        found = self.detector.detect(rgb)
        best, best_iou, how = near.box, 0.0, found.how
        for box in found.boxes:
            overlap = iou(box, near.box)
            if overlap > best_iou:
                best, best_iou = box, overlap
        if best_iou < 0.3:
            best, how = near.box, "reused"
        points, mesh, depth = landmarks_of(self.landmarker, rgb, best)
        # The swap keeps ori's face where it was: its points stand in when none are found.
        if points is None:
            return Face(box=best, points=near.points, how=how, mesh=near.mesh, depth=near.depth)
        return Face(box=best, points=points, how=how, mesh=mesh, depth=depth)


def dlib_finder(models: DlibModels) -> FaceFinder:
    return FaceFinder(DlibDetector(models), DlibLandmarker(models))


def find_main_face(models: DlibModels, rgb: np.ndarray) -> Face | None:
    return dlib_finder(models).main_face(rgb)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
