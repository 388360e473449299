"""The insightface backend, driven through insightface's real FaceAnalysis / get_model /
INSwapper code with tiny ONNX models of the same signatures (tests/faceswap_models.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.backends.faceswap import FaceSwapError, FaceSwapPool
from runner.backends.faceswap.models import find_models
from runner.backends.faceswap.worker import Engine, SwapJob, WorkerConfig
from runner.settings import FaceSwapSettings

try:  # tests/ on sys.path (pytest's default rootdir-less import) or tests as a package
    from faceswap_models import FACE_CELL, face_card, make_models_dir
except ImportError:  # pragma: no cover
    from tests.faceswap_models import FACE_CELL, face_card, make_models_dir

pytest.importorskip("insightface")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

RED = (230, 70, 60)  # target's "identity"
BLUE = (60, 70, 230)  # ori's


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_models_dir(tmp_path_factory.mktemp("models"), enhancer=False)


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cards")
    out = {}
    for name, img in {
        "ori": face_card(BLUE, seed=1),
        "target": face_card(RED, seed=2),
        "blank": face_card((127, 127, 127), seed=3),
    }.items():
        out[name] = folder / f"{name}.png"
        Image.fromarray(img).save(out[name])
    return out


def engine_for(models: Path) -> Engine:
    paths = find_models(models)
    assert paths.inswapper_ready, paths.missing
    return Engine(WorkerConfig(
        backend="inswapper",
        buffalo_dir=str(paths.buffalo_dir),
        inswapper=str(paths.inswapper),
        enhancer=str(paths.enhancer) if paths.enhancer else None,
    ))


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_insightface_routes_the_tiny_models(models: Path) -> None:
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.inswapper import INSwapper
    from insightface.model_zoo.scrfd import SCRFD

    buffalo = models / "models" / "buffalo_l"
    cpu = ["CPUExecutionProvider"]
    assert isinstance(get_model(str(buffalo / "det_10g.onnx"), providers=cpu), SCRFD)
    assert isinstance(get_model(str(buffalo / "w600k_r50.onnx"), providers=cpu), ArcFaceONNX)
    swapper = get_model(str(models / "inswapper_128.onnx"), providers=cpu)
    assert isinstance(swapper, INSwapper)
    assert swapper.emap.shape == (512, 512)


def test_target_identity_goes_into_ori_picture(models: Path, cards: dict[str, Path]) -> None:
    result = engine_for(models).swap(SwapJob("1", str(cards["ori"]), str(cards["target"])))
    assert result.backend == "inswapper" and result.embedding == "arcface"
    # The tiny recogniser's identity is the face colour: the output face is target's (red).
    assert result.identity_target is not None and result.identity_target > 0.9
    assert result.identity_ori is not None and result.identity_ori < 0.0
    out = rgb(result.jpeg)
    ori = np.asarray(Image.open(cards["ori"]).convert("RGB"))
    assert out.shape == ori.shape
    face = out[FACE_CELL + 16 : 2 * FACE_CELL - 16, FACE_CELL + 16 : 2 * FACE_CELL - 16]
    r, g, b = face.reshape(-1, 3).mean(axis=0)
    assert r > 150 and b < 120, (r, g, b)
    # Ori's picture around the face is kept (the swap pastes a ~90 px region at most).
    keep = np.ones(ori.shape[:2], bool)
    keep[20:180, 20:180] = False
    assert np.abs(out.astype(int) - ori.astype(int)).mean(axis=2)[keep].mean() < 3


def test_no_face_reasons(models: Path, cards: dict[str, Path]) -> None:
    engine = engine_for(models)
    with pytest.raises(FaceSwapError, match="no face found in ori_image"):
        engine.swap(SwapJob("1", str(cards["blank"]), str(cards["target"])))
    with pytest.raises(FaceSwapError, match="no face found in target_image"):
        engine.swap(SwapJob("1", str(cards["ori"]), str(cards["blank"])))


def test_restoration_runs_when_weights_exist(tmp_path: Path, cards: dict[str, Path]) -> None:
    models = make_models_dir(tmp_path, enhancer=True)
    result = engine_for(models).swap(SwapJob("1", str(cards["ori"]), str(cards["target"])))
    assert result.detail["enhancer"] == "gfpgan_1.4.onnx"


async def test_pool_runs_inswapper_in_a_spawned_worker(models: Path,
                                                       cards: dict[str, Path]) -> None:
    pool = FaceSwapPool(FaceSwapSettings(backend="auto", models_dir=models, workers=1))
    assert pool.backend == "inswapper"
    line = pool.describe()
    assert "inswapper_128" in line and "CPU" in line and "missing" not in line
    try:
        await pool.start()
        assert pool.worker_info and pool.worker_info[0]["backend"] == "inswapper"
        assert pool.worker_info[0]["providers"] == ["CPUExecutionProvider"]
        result = await pool.swap("7", cards["ori"], cards["target"])
        assert result.embedding == "arcface"
        assert result.identity_target is not None and result.identity_target > 0.9
        with pytest.raises(FaceSwapError, match="no face found in target_image"):
            await pool.swap("8", cards["ori"], cards["blank"])
    finally:
        await pool.close()


def test_corrupt_inswapper_falls_back_to_classic_visibly(tmp_path: Path) -> None:
    models = make_models_dir(tmp_path)
    (models / "inswapper_128.onnx").write_bytes(b"not an onnx file")
    engine = engine_for(models)
    assert engine.backend == "classic"
    assert engine.load_error and "inswapper could not be loaded" in engine.load_error
