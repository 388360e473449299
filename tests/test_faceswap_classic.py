"""The offline (classic, dlib) backend on real faces that installed packages ship:
insightface's group photo t1.jpg (six faces) and Tom_Hanks_54745.png (112x112, grey, the
chin on the border). Runs in-process: the pool has its own tests."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from runner.backends.faceswap import FaceSwapError, SwapResult, blend, classic, detect, guard
from runner.backends.faceswap.swappers import NOT_SWAPPED, swapped
from runner.backends.faceswap.worker import SEAM_WEIGHT, Engine, SwapJob, WorkerConfig

insightface = pytest.importorskip("insightface")
DATA = Path(insightface.__file__).parent / "data" / "images"
GROUP = DATA / "t1.jpg"
HANKS = DATA / "Tom_Hanks_54745.png"
# Face boxes of t1.jpg (dlib HOG), to cut LFW-like 250x250 crops around single faces.
T1_FACES = {0: (67, 283, 176, 392), 2: (727, 367, 836, 476), 3: (452, 296, 560, 403),
            4: (883, 80, 991, 187), 5: (266, 176, 356, 266)}

pytestmark = pytest.mark.skipif(not GROUP.is_file() or not HANKS.is_file(),
                                reason="insightface sample images not installed")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(WorkerConfig(backend="classic", candidates=1))


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """LFW-like 250x250 JPEG crops around single faces of the group photo."""
    folder = tmp_path_factory.mktemp("t1")
    group = np.asarray(Image.open(GROUP).convert("RGB"))
    out = {}
    for key, (x0, y0, x1, y1) in T1_FACES.items():
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        top, left = max(0, cy - 135), max(0, cx - 125)
        path = folder / f"face{key}.jpg"
        Image.fromarray(group[top : top + 250, left : left + 250]).save(path, quality=92)
        out[key] = path
    return out


def rgb_of(data: bytes | Path) -> np.ndarray:
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(src) as img:
        return np.asarray(img.convert("RGB"))


def outside_hull_mad(engine: Engine, ori_path: Path, result: SwapResult,
                     dilate: float = 0.10) -> float:
    """Mean absolute difference outside ori's face hull (68 points) dilated by 10 %."""
    ori = rgb_of(ori_path)
    out = rgb_of(result.jpeg)
    assert engine.dlib is not None
    face = detect.find_main_face(engine.dlib, ori)
    assert face is not None
    hull = blend.hull_mask(ori.shape, face.points)
    k = max(1, round(dilate * face.size))
    hull = cv2.dilate(hull, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    diff = np.abs(out.astype(np.float64) - ori.astype(np.float64)).mean(axis=2)
    return float(diff[hull < 0.5].mean())


def assert_closer_to_target(result: SwapResult) -> None:
    d = result.detail
    assert result.embedding == "dlib" and result.backend == "classic"
    assert result.identity_target is not None and result.identity_ori is not None
    assert result.identity_target > result.identity_ori, d
    assert d["distance_target"] < d["distance_ori"], d


@pytest.mark.parametrize(
    ("ori_key", "target_key"),
    [(3, "hanks"), ("hanks", 2), (0, 4), (2, 5)],
)
def test_output_is_target_face_in_ori_picture(
    engine: Engine, crops: dict[int, Path], ori_key: object, target_key: object
) -> None:
    ori = HANKS if ori_key == "hanks" else crops[ori_key]  # type: ignore[index]
    target = HANKS if target_key == "hanks" else crops[target_key]  # type: ignore[index]
    result = engine.swap(SwapJob("t", str(ori), str(target)))
    assert_closer_to_target(result)
    out = rgb_of(result.jpeg)
    assert out.shape == rgb_of(ori).shape  # ori's picture, not target's
    assert outside_hull_mad(engine, ori, result) < 3.0


def test_direction_is_not_reversed(engine: Engine, crops: dict[int, Path]) -> None:
    """Swapping the roles swaps which identity comes out (the public baseline's bug)."""
    a, b = crops[0], crops[4]
    ab = engine.swap(SwapJob("ab", str(a), str(b)))
    ba = engine.swap(SwapJob("ba", str(b), str(a)))
    assert_closer_to_target(ab)
    assert_closer_to_target(ba)
    # ab is a's picture: it must look like a's picture around the face.
    assert np.abs(rgb_of(ab.jpeg)[:30].astype(int) - rgb_of(a)[:30].astype(int)).mean() < 3


def test_group_photo_main_face_only(engine: Engine) -> None:
    """Six faces: the largest, most central one is swapped; the others stay as they were."""
    result = engine.swap(SwapJob("g", str(GROUP), str(HANKS)))
    assert_closer_to_target(result)
    ori, out = rgb_of(GROUP), rgb_of(result.jpeg)
    diff = np.abs(out.astype(int) - ori.astype(int)).mean(axis=2)
    changed = {k: float(diff[y0:y1, x0:x1].mean()) for k, (x0, y0, x1, y1) in T1_FACES.items()}
    assert changed[2] > 5  # the main face (closest to the centre)
    assert all(v < 2 for k, v in changed.items() if k != 2), changed


def test_face_cut_by_the_border(engine: Engine, tmp_path: Path) -> None:
    """A face whose left part is outside the picture is still found and swapped."""
    group = np.asarray(Image.open(GROUP).convert("RGB"))
    x0, y0, x1, y1 = T1_FACES[3]
    cut = group[y0 - 70 : y1 + 70, x0 + 25 : x1 + 120]  # the left quarter of the face is cut
    path = tmp_path / "cut.jpg"
    Image.fromarray(cut).save(path, quality=92)
    result = engine.swap(SwapJob("cut", str(path), str(HANKS)))
    assert rgb_of(result.jpeg).shape == cut.shape
    assert result.identity_target is not None
    assert result.detail["distance_target"] < result.detail["distance_ori"], result.detail


def test_no_face_in_ori(engine: Engine, tmp_path: Path) -> None:
    blank = tmp_path / "blank.jpg"
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(blank)
    with pytest.raises(FaceSwapError, match="no face found in ori_image"):
        engine.swap(SwapJob("n", str(blank), str(HANKS)))


def test_no_face_in_target(engine: Engine, tmp_path: Path) -> None:
    noise = tmp_path / "noise.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8)).save(noise)
    with pytest.raises(FaceSwapError, match="no face found in target_image"):
        engine.swap(SwapJob("n", str(HANKS), str(noise)))


def test_unreadable_and_missing_inputs(engine: Engine, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a picture")
    with pytest.raises(FaceSwapError, match="ori_image is not a readable image"):
        engine.swap(SwapJob("b", str(bad), str(HANKS)))
    with pytest.raises(FaceSwapError, match="target_image not found"):
        engine.swap(SwapJob("b", str(HANKS), str(tmp_path / "absent.jpg")))


def test_best_of_candidates_by_identity(crops: dict[int, Path]) -> None:
    engine = Engine(WorkerConfig(backend="classic", candidates=3))
    result = engine.swap(SwapJob("c", str(crops[0]), str(crops[4])))
    tried = result.detail["candidates"]
    # The three configured, then the lower-risk ones the pair's gaps call for (``guard``).
    names = [c["variant"] for c in tried]
    assert names[:3] == [v.name for v in classic.VARIANTS[:3]]
    gaps = guard.Gaps(**result.detail["gaps"])
    assert names[3:] == [v.name for v in guard.guard_variants(gaps, classic.VARIANTS[0])]

    # Identity, less a realism penalty for the seam the paste added, plus the realism
    # score; a variant that does not swap the identity comes last.
    def key(c: dict[str, Any]) -> float:
        return (c["identity_target"] - SEAM_WEIGHT * c["seam"]
                + guard.REALISM_WEIGHT * c["realism"] - NOT_SWAPPED * (not swapped(c)))

    best = max(tried, key=key)
    assert swapped(best)
    assert result.detail["variant"] == best["variant"]
    assert result.identity_target == best["identity_target"]
    assert all(c["seam"] >= 0 for c in tried)

    # Every variant made comes back with its picture and its scores (for a judge to choose
    # by the competition's formula); the offline choice is marked and is the output.
    assert [v.name for v in result.variants] == names
    assert result.chosen is not None and result.chosen.name == best["variant"]
    assert result.chosen.jpeg == result.jpeg
    assert [v.name for v in result.variants if v.chosen] == [best["variant"]]
    assert max(result.variants, key=lambda v: v.offline_score) is result.chosen
    for made, scored in zip(result.variants, tried, strict=True):
        assert (made.identity_target, made.identity_ori, made.realism) == (
            scored["identity_target"], scored["identity_ori"], scored["realism"])
        assert rgb_of(made.jpeg).shape == rgb_of(result.jpeg).shape
    assert len({v.jpeg for v in result.variants}) == len(result.variants)
