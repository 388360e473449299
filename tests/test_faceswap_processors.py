"""The processor registry: kinds and names, building by name, fallbacks, and a second
landmarker plugged in the way MediaPipe's would be. Fakes stand in for models except where
a test says it loads dlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runner.backends.faceswap import landmark_mediapipe, pool
from runner.backends.faceswap.detect import Face, FaceFinder, MeshTo68
from runner.backends.faceswap.interfaces import Detections
from runner.backends.faceswap.models import dlib_model_dir
from runner.backends.faceswap.processors import (
    FALLBACKS,
    PROCESSORS,
    Loader,
    WorkerConfig,
    enhancer_name,
)
from runner.settings import FaceSwapSettings

needs_dlib = pytest.mark.skipif(dlib_model_dir() is None, reason="dlib's model files missing")
needs_mesh = pytest.mark.skipif(
    dlib_model_dir() is None or not landmark_mediapipe.available(),
    reason="dlib's model files or MediaPipe's face_landmark.tflite missing",
)


class FakeDetector:
    name = "fake"

    def __init__(self, boxes: list[tuple[float, float, float, float]]) -> None:
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    def detect(self, rgb: np.ndarray) -> Detections:
        return Detections(boxes=self.boxes, how="fake")


class FakeLandmarker:
    name = "fake"

    def __init__(self, found: bool = True) -> None:
        self.found = found
        self.boxes: list[np.ndarray] = []

    def points(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        self.boxes.append(box)
        if not self.found:
            return None
        x0, y0, x1, y1 = box
        return np.stack([np.linspace(x0, x1, 68), np.linspace(y0, y1, 68)], axis=1)


def test_every_kind_has_named_processors() -> None:
    assert set(PROCESSORS) == {"detector", "landmarker", "swapper", "mask", "enhancer"}
    assert {"dlib", "scrfd"} <= set(PROCESSORS["detector"])
    assert "dlib" in PROCESSORS["landmarker"]
    assert {"region", "glasses"} <= set(PROCESSORS["mask"])
    # faceswap.backend keeps its names: auto, then the swappers.
    assert pool.BACKENDS == ("auto", "inswapper", "classic")
    assert FALLBACKS[("swapper", "inswapper")] == "classic"


def test_enhancer_named_by_its_weights() -> None:
    assert enhancer_name("/m/gfpgan_1.4.onnx") == "gfpgan"
    assert enhancer_name("/m/GFPGANv1.4.onnx") == "gfpgan"
    assert enhancer_name("/m/CodeFormer.onnx") == "codeformer"
    assert set(PROCESSORS["enhancer"]) >= {"gfpgan", "codeformer"}


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no landmarker named 'nope'"):
        Loader(WorkerConfig(backend="classic")).build("landmarker", "nope")


def test_finder_takes_the_main_face_and_its_points() -> None:
    rgb = np.zeros((200, 300, 3), np.uint8)
    landmarker = FakeLandmarker()
    finder = FaceFinder(FakeDetector([(0, 0, 20, 20), (120, 70, 180, 130)]), landmarker)
    face = finder.main_face(rgb)
    assert face is not None and face.how == "fake"
    assert face.box.tolist() == [120, 70, 180, 130]
    assert face.points.shape == (68, 2)
    assert FaceFinder(FakeDetector([]), landmarker).main_face(rgb) is None
    # A landmarker that sees no face in the box: no face to swap.
    assert FaceFinder(FakeDetector([(0, 0, 50, 50)]), FakeLandmarker(False)).main_face(rgb) is None


def test_face_near_reuses_the_known_face() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    near = Face(box=np.array([10.0, 10, 60, 60]), points=np.ones((68, 2)), how="hog0")
    moved = FaceFinder(FakeDetector([(12, 11, 61, 62)]), FakeLandmarker()).face_near(rgb, near)
    assert moved.how == "fake" and moved.box.tolist() == [12, 11, 61, 62]
    far = FaceFinder(FakeDetector([(70, 70, 99, 99)]), FakeLandmarker(False)).face_near(rgb, near)
    assert far.how == "reused" and far.box is near.box
    assert far.points is near.points  # no points found: the swap kept ori's face in place


def test_mesh_landmarker_adapts_to_68_points() -> None:
    seen: list[np.ndarray] = []

    class Mesh:
        def points(self, image_bgr: np.ndarray, box: np.ndarray) -> np.ndarray | None:
            seen.append(image_bgr)
            return np.zeros((468, 2), np.float32) + box[:2]

    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 255  # red
    adapter = MeshTo68("mesh", Mesh(), lambda mesh: mesh[:68])
    points = adapter.points(rgb, np.array([3.0, 4, 8, 9]))
    assert points is not None and points.shape == (68, 2) and points.dtype == np.float64
    assert points[0].tolist() == [3.0, 4.0]
    assert seen[0][0, 0].tolist() == [0, 0, 255]  # handed over as BGR


@needs_dlib
def test_landmarker_falls_back_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """How MediaPipe's landmarker plugs in: a name, a factory that raises when its model is
    missing, and "dlib" as its fallback."""

    def unavailable(loader: Loader) -> FakeLandmarker:
        raise RuntimeError("face_landmark.tflite not found")

    monkeypatch.setitem(PROCESSORS["landmarker"], "mesh", unavailable)
    monkeypatch.setitem(FALLBACKS, ("landmarker", "mesh"), "dlib")
    loader = Loader(WorkerConfig(backend="classic", landmarker="mesh"))
    finder = loader.finder()
    assert finder.landmarker.name == "dlib"
    assert loader.notes == [
        "mesh could not be loaded (RuntimeError: face_landmark.tflite not found)"
    ]

    monkeypatch.setitem(PROCESSORS["landmarker"], "mesh", lambda loader: FakeLandmarker())
    loader = Loader(WorkerConfig(backend="classic", landmarker="mesh"))
    swapper = loader.build("swapper", "classic")
    assert swapper.finder.landmarker.name == "fake" and not loader.notes


@needs_dlib
def test_inswapper_without_weights_falls_back_to_classic() -> None:
    loader = Loader(WorkerConfig(backend="inswapper"))
    swapper = loader.build("swapper", "inswapper")
    assert swapper.name == "classic" and swapper.providers == []
    assert len(loader.notes) == 1 and loader.notes[0].startswith("inswapper could not be loaded")
    assert loader.dlib_loaded is not None


def test_mediapipe_is_registered_with_dlib_as_fallback() -> None:
    assert {"mediapipe", "dlib"} <= set(PROCESSORS["landmarker"])
    assert FALLBACKS[("landmarker", "mediapipe")] == "dlib"
    assert pool.LANDMARKERS == ("auto", "mediapipe", "dlib")


def test_mesh_landmarker_falls_back_per_face() -> None:
    """A face the mesh does not see gets the fallback's 68 points (and no mesh); a face it
    sees keeps its mesh, which ``FaceFinder`` hands on with the face."""

    class Mesh:
        def __init__(self) -> None:
            self.seen = True

        def points(self, image_bgr: np.ndarray, box: np.ndarray) -> np.ndarray | None:
            return np.tile(box[:2], (468, 1)).astype(np.float64) if self.seen else None

    mesh = Mesh()
    adapter = MeshTo68("mesh", mesh, lambda m: m[:68] + 1.0, fallback=FakeLandmarker())
    rgb = np.zeros((200, 300, 3), np.uint8)
    finder = FaceFinder(FakeDetector([(120, 70, 180, 130)]), adapter)
    face = finder.main_face(rgb)
    assert face is not None and face.mesh is not None and face.mesh.shape == (468, 2)
    assert face.points[0].tolist() == [121.0, 71.0]
    mesh.seen = False
    face = finder.main_face(rgb)
    assert face is not None and face.mesh is None
    assert face.points[-1].tolist() == [180.0, 130.0]  # the fake landmarker's last point
    # Without a fallback, a face the mesh does not see is no face.
    alone = FaceFinder(FakeDetector([(120, 70, 180, 130)]), MeshTo68("m", mesh, lambda m: m))
    assert alone.main_face(rgb) is None
    # fallback_68 (how "mediapipe" is built): the fallback's 68 points, the mesh for density.
    mesh.seen = True
    hybrid = MeshTo68("mesh", mesh, lambda m: m[:68] + 1.0, fallback=FakeLandmarker(),
                      fallback_68=True)
    face = FaceFinder(FakeDetector([(120, 70, 180, 130)]), hybrid).main_face(rgb)
    assert face is not None and face.mesh is not None and face.mesh.shape == (468, 2)
    assert face.points[0].tolist() == [120.0, 70.0] and face.points[-1].tolist() == [180.0, 130.0]
    assert face.depth is None  # this mesh has no depth
    # A mesh with depth (``points_3d``, as MediaPipe's): x, y in ``mesh``, z in ``depth``.
    deep = Mesh()
    deep.points_3d = lambda image_bgr, box: np.column_stack(  # type: ignore[attr-defined]
        [np.tile(box[:2], (468, 1)), np.arange(468.0)])
    hybrid = MeshTo68("mesh", deep, lambda m: m[:68] + 1.0, fallback=FakeLandmarker(),
                      fallback_68=True)
    face = FaceFinder(FakeDetector([(120, 70, 180, 130)]), hybrid).main_face(rgb)
    assert face is not None and face.mesh is not None and face.mesh.shape == (468, 2)
    assert face.depth is not None and face.depth.tolist() == list(np.arange(468.0))


def test_landmarker_setting_resolved_by_name(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from runner.backends.faceswap import landmark_mediapipe as lm
    from runner.errors import SettingsError

    assert pool.resolve_landmarker("dlib") == ("dlib", None)
    with pytest.raises(SettingsError, match=r"faceswap\.landmarker 'openpose'"):
        pool.resolve_landmarker("openpose")
    lm.unavailable_reason.cache_clear()
    monkeypatch.setenv(lm.MODEL_ENV, str(tmp_path / "missing.tflite"))
    try:
        # Asked for by name: dlib instead, and why; "auto": dlib, quietly.
        name, why = pool.resolve_landmarker("MediaPipe")
        assert name == "dlib" and why is not None and "face_landmark.tflite" in why
        assert pool.resolve_landmarker("auto") == ("dlib", None)
        settings = FaceSwapSettings(backend="classic", models_dir=tmp_path, workers=1,
                                    landmarker="mediapipe")
        swap_pool = pool.FaceSwapPool(settings)
        assert swap_pool.config().landmarker == "dlib"
        assert "dlib 68 landmarks (mediapipe unavailable: " in swap_pool.describe()
    finally:
        monkeypatch.undo()
        lm.unavailable_reason.cache_clear()


@needs_mesh
def test_mediapipe_chosen_by_name_gives_mesh_faces(tmp_path: Path) -> None:
    settings = FaceSwapSettings(backend="classic", models_dir=tmp_path, workers=1,
                                landmarker="auto")
    swap_pool = pool.FaceSwapPool(settings)
    assert swap_pool.config().landmarker == "mediapipe"
    assert "dlib 68 landmarks + MediaPipe FaceMesh 468 for the warp" in swap_pool.describe()
    loader = Loader(swap_pool.config())
    finder = loader.finder()
    assert finder.landmarker.name == "mediapipe" and not loader.notes
    data = pytest.importorskip("skimage.data")
    face = finder.main_face(np.ascontiguousarray(data.astronaut()))
    assert face is not None and face.mesh is not None and face.mesh.shape == (468, 2)
    assert face.points.shape == (68, 2)
    # The 68 are dlib's (the mesh serves the warp's density): they agree with the mesh's
    # own 68-point subset to within a few percent of the face size.
    assert finder.landmarker.fallback_68
    off = np.linalg.norm(face.points - landmark_mediapipe.to_68(face.mesh), axis=1)
    assert float(np.median(off)) < 0.06 * face.size
