"""The insightface backend, driven through insightface's real FaceAnalysis / get_model /
INSwapper code with tiny ONNX models of the same signatures (tests/faceswap_models.py)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from runner.backends.faceswap import FaceSwapError, FaceSwapPool, blend, tone
from runner.backends.faceswap.masks import RegionMask
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
GREY = (220, 220, 220)  # a grey photo's face (its noisy background has no colour either)


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
        "grey": face_card(GREY, seed=4),
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


def face_lab(data: bytes) -> np.ndarray:
    """Mean Lab (8-bit scale) of the middle of the output's face cell."""
    face = rgb(data)[FACE_CELL + 16 : 2 * FACE_CELL - 16, FACE_CELL + 16 : 2 * FACE_CELL - 16]
    return np.asarray(tone.lab(np.ascontiguousarray(face)).reshape(-1, 3).mean(axis=0))


def test_grey_ori_stays_grey(models: Path, cards: dict[str, Path]) -> None:
    """The tiny swapper paints target's red: on a grey ori the face keeps only its
    lightness, in ori's (grey) colour."""
    result = engine_for(models).swap(SwapJob("1", str(cards["grey"]), str(cards["target"])))
    assert result.detail["colour_modes"] == {"ori": "grey", "target": "colour"}
    _, a, b = face_lab(result.jpeg)
    assert abs(a - 128) < 4 and abs(b - 128) < 4, (a, b)


def test_grey_target_takes_ori_colour(models: Path, cards: dict[str, Path]) -> None:
    """A grey target's face (the tiny swapper paints it grey) on ori's blue face: ori's
    colour, target's lightness."""
    result = engine_for(models).swap(SwapJob("1", str(cards["ori"]), str(cards["grey"])))
    assert result.detail["colour_modes"] == {"ori": "colour", "target": "grey"}
    ori_face = np.asarray(Image.open(cards["ori"]).convert("RGB"))[
        FACE_CELL + 16 : 2 * FACE_CELL - 16, FACE_CELL + 16 : 2 * FACE_CELL - 16]
    _, a_ori, b_ori = tone.lab(np.ascontiguousarray(ori_face)).reshape(-1, 3).mean(axis=0)
    _, a, b = face_lab(result.jpeg)
    # ori's hue; less of its chroma where target's lightness leaves the gamut (a bright
    # face cannot be as blue): painted grey, it had none.
    hue, hue_ori = np.arctan2(b - 128, a - 128), np.arctan2(b_ori - 128, a_ori - 128)
    assert abs(hue - hue_ori) < np.radians(15), (a, b, a_ori, b_ori)
    assert np.hypot(a - 128, b - 128) > 0.3 * np.hypot(a_ori - 128, b_ori - 128)


def test_the_inswapper_variant_is_returned_chosen(models: Path, cards: dict[str, Path]) -> None:
    result = engine_for(models).swap(SwapJob("1", str(cards["ori"]), str(cards["target"])))
    assert len(result.variants) == 1 and result.chosen is result.variants[0]
    variant = result.variants[0]
    assert variant.name == "inswapper" and variant.jpeg == result.jpeg
    assert variant.identity_target == result.identity_target
    assert variant.identity_ori == result.identity_ori
    # dlib finds no face on a colour card: no landmarks to check realism with.
    assert variant.realism is None and result.detail["realism"] is None


def test_region_mask_gives_the_face_ori_contrast_and_detail() -> None:
    """After the inswapper's paste, inside the face's region: a flat, sharp face on a soft
    ori gets ori's contrast and softness (the "region" mask)."""
    rng = np.random.default_rng(5)
    shapes = cv2.resize(rng.normal(128, 45, (25, 25, 3)), (200, 200),
                        interpolation=cv2.INTER_CUBIC)
    ori = np.clip(cv2.GaussianBlur(shapes, (0, 0), 2.0), 0, 255).astype(np.uint8)
    sharp = np.clip(128 + 0.6 * (shapes - 128) + rng.normal(0, 4, shapes.shape), 0,
                    255).astype(np.uint8)
    box = np.array([50.0, 50.0, 150.0, 150.0])
    out, said = RegionMask().apply(ori, sharp, box)
    assert said["contrast_gain"] > 1.0 and said["sharpness_ratio"] < 0.85
    core = np.zeros((200, 200), np.float32)
    core[85:115, 85:115] = 1.0
    assert blend.sharpness(out, core) < 0.5 * blend.sharpness(sharp, core)
    # pale before (under 0.8 of ori's contrast), not after
    assert tone.contrast(sharp, core) < 0.8 * tone.contrast(ori, core) < tone.contrast(out, core)


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
        # The variants cross the process boundary with their pictures.
        assert result.chosen is not None and result.chosen.jpeg == result.jpeg
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


def test_earlier_compression_carried_to_the_new_face(models: Path, cards: dict[str, Path],
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """ori saved at 80 before its last save at 95: the inswapper's output goes through
    ``jpeg.through_earlier`` at 80 like the classic swap's, which changes the face's
    blocks and nothing outside them."""
    from runner.backends.faceswap import jpeg

    once = io.BytesIO()
    Image.open(cards["ori"]).convert("RGB").save(once, "JPEG", quality=80)
    ori = tmp_path / "ori.jpg"
    Image.open(io.BytesIO(once.getvalue())).save(ori, "JPEG", quality=95)
    seen: list[tuple[int | None, np.ndarray]] = []
    real = jpeg.through_earlier

    def spy(rgb_: np.ndarray, style: jpeg.JpegStyle, ori_: np.ndarray) -> np.ndarray:
        out = real(rgb_, style, ori_)
        seen.append((style.earlier, np.any(out != rgb_, axis=2)))
        return out

    monkeypatch.setattr(jpeg, "through_earlier", spy)
    result = engine_for(models).swap(SwapJob("1", str(ori), str(cards["target"])))
    assert result.detail["jpeg"]["earlier_quality"] == 80
    assert len(seen) == 1 and seen[0][0] == 80
    moved = seen[0][1]
    assert moved[FACE_CELL + 16 : 2 * FACE_CELL - 16, FACE_CELL + 16 : 2 * FACE_CELL - 16].any()
    assert not moved[:8].any() and not moved[:, :8].any()  # ori's picture round the face
