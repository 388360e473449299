"""The realism steps of the classic swap, each against the failure it exists for (issue 14):
half glasses, blue mouths, pasted occluders, the target's own light. Real faces from the
packages' sample images, with the failure drawn onto them."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from runner.backends.faceswap import blend, classic, detect, glasses
from runner.backends.faceswap.worker import Engine, SwapJob, WorkerConfig
from tests.sample_faces import GROUP, crop

insightface = pytest.importorskip("insightface")

pytestmark = pytest.mark.skipif(not GROUP.is_file(), reason="insightface samples missing")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(WorkerConfig(backend="classic"))



def save(rgb: np.ndarray, path: Path) -> Path:
    Image.fromarray(rgb).save(path, quality=95)
    return path


def rgb_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def draw_glasses(rgb: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Black frames drawn from the landmarks (so they follow the head's tilt): a rim around
    each eye, the bridge, and temples out past the face's sides (where the swap's mask
    ends). Returns the picture and the mask of the frame pixels."""
    out = rgb.copy()
    mask = np.zeros(rgb.shape[:2], dtype=np.uint8)
    up = points[27] - points[8]
    up = up / np.linalg.norm(up)
    across = points[16] - points[0]
    size = float(np.linalg.norm(across))
    across = across / size
    lift = up * 0.03 * size
    angle = float(np.degrees(np.arctan2(across[1], across[0])))
    ends = []
    for eye in (points[36:42], points[42:48]):
        c = eye.mean(axis=0) + lift
        half = 0.6 * float(np.linalg.norm(eye[3] - eye[0]))
        # An oval lens rim, well clear of the eye (a pair of glasses sits off the face).
        cv2.ellipse(mask, tuple(np.round(c).astype(int)), (round(half), round(0.7 * half)),
                    angle, 0, 360, 1, 2)
        ends.append((c - across * half, c + across * half))
    # One connected frame: the bridge joins the rims, the temples leave from their outer
    # sides and run past the face's sides.
    bridge = [ends[0][1], ends[1][0]]
    left = [ends[0][0], points[0] - across * 0.12 * size + lift]
    right = [ends[1][1], points[16] + across * 0.12 * size + lift]
    for a, b in (bridge, left, right):
        cv2.line(mask, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), 1, 2)
    out[mask > 0] = (15, 15, 15)
    return out, mask


def glasses_case(engine: Engine) -> tuple[np.ndarray, np.ndarray, np.ndarray, detect.Face]:
    assert engine.dlib is not None
    base = crop(3)
    face = detect.find_main_face(engine.dlib, base)
    assert face is not None
    worn, frames = draw_glasses(base, face.points)
    return base, worn, frames, face


def test_ori_glasses_removed_whole(engine: Engine, tmp_path: Path) -> None:
    """ori wears glasses: by default they go whole, the temples past the face's sides too
    (not half a frame, not a ghost of one)."""
    _, worn, frames, _ = glasses_case(engine)
    ori = save(worn, tmp_path / "ori.jpg")
    result = engine.swap(SwapJob("g", str(ori), str(save(crop(2), tmp_path / "t.jpg"))))
    assert result.detail["glasses_removed"] and result.detail["ori_frames_px"] > 0
    assert result.detail["distance_target"] < result.detail["distance_ori"], result.detail
    out = rgb_of(result.jpeg).astype(int)
    inner = cv2.erode(frames, np.ones((2, 2), np.uint8)) > 0
    dark = out.mean(axis=2)[inner] < 60
    assert dark.mean() < 0.1, dark.mean()


def test_target_glasses_kept(engine: Engine, tmp_path: Path) -> None:
    """target wears glasses, ori does not: target's frames come with its face (they are
    part of its look), not painted out of it; nothing of ori's is removed."""
    assert engine.dlib is not None
    target = crop(2)
    t_face = detect.find_main_face(engine.dlib, target)
    assert t_face is not None
    worn, _ = draw_glasses(target, t_face.points)
    ori_rgb = crop(3)
    o_face = detect.find_main_face(engine.dlib, ori_rgb)
    assert o_face is not None
    ori = str(save(ori_rgb, tmp_path / "o.jpg"))
    with_frames = engine.swap(SwapJob("r", ori, str(save(worn, tmp_path / "t.jpg"))))
    plain = engine.swap(SwapJob("p", ori, str(save(target, tmp_path / "p.jpg"))))
    assert not with_frames.detail["glasses_removed"]
    band = glasses.eye_band(ori_rgb.shape, o_face.points, o_face.size) > 0

    def dark(data: bytes) -> int:
        return int((rgb_of(data).mean(axis=2)[band] < 60).sum())

    # The frames drawn are 2 pixels wide round both eyes: a few hundred dark pixels more.
    framed, bare_target = dark(with_frames.jpeg), dark(plain.jpeg)
    assert framed > bare_target + 100, (framed, bare_target)
    # Whole: the swap leaves target's frames as the warp brings them, none of them painted
    # out (painting out the part the mask's edge cuts left the lower half of each rim).
    w_face = detect.find_main_face(engine.dlib, worn)
    assert w_face is not None
    base = classic.VARIANTS[0]
    out, _ = classic.swap(ori_rgb, o_face, worn, w_face, base)
    bare, _ = classic.swap(ori_rgb, o_face, worn, w_face, replace(base, glasses=False))
    assert np.array_equal(out[band], bare[band])


def test_frames_painted_out_without_the_eyes(engine: Engine) -> None:
    """Painting ori's frames out leaves the eyes: the line map joins the rims to the lids
    and the shadows beside them, and the eyes went with the frames."""
    _, worn, frames, face = glasses_case(engine)
    pts, size = face.points, face.size
    own = np.vstack([pts[classic.JAW], classic.forehead_points(pts, 0.22)])
    alpha = blend.soft_mask(blend.hull_mask(worn.shape, own), size, 0.03, 0.04)
    eyes = glasses._hulls(worn.shape, pts, glasses.EYES) > 0
    cut = glasses.cut_lines(worn, pts, size, alpha) > 0
    assert not cut[eyes].any()
    assert cut[frames > 0].mean() > 0.3  # the frame is still found and painted out


def test_eyes_and_mouth_keep_their_colour() -> None:
    """The skin's colour statistics move the skin, not the teeth or the eye whites."""
    rng = np.random.default_rng(0)
    src = np.clip(rng.normal([170, 120, 100], 6, (80, 80, 3)), 0, 255).astype(np.uint8)
    src[30:40, 30:50] = (235, 235, 230)  # teeth
    ref = np.clip(rng.normal([120, 150, 200], 6, (80, 80, 3)), 0, 255).astype(np.uint8)
    skin = np.ones((80, 80), np.float32)
    skin[25:45, 25:55] = 0
    keep = np.zeros((80, 80), np.float32)
    keep[28:42, 28:52] = 1
    plain = blend.transfer_colour(src, ref, skin, skin)
    kept = blend.transfer_colour(src, ref, skin, skin, keep=keep)

    def chroma(img: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[33:37, 35:45, 1:].astype(float).mean(
            axis=(0, 1))

    assert np.abs(chroma(kept) - chroma(src)).max() < 3  # teeth stay white
    assert np.abs(chroma(plain) - chroma(src)).max() > 10  # without: a cast
    # The skin around them moved all the same.
    lab = cv2.cvtColor(kept, cv2.COLOR_RGB2LAB)[5:20, 5:20, 1:].astype(float).mean(axis=(0, 1))
    lab_src = cv2.cvtColor(src, cv2.COLOR_RGB2LAB)[5:20, 5:20, 1:].astype(float).mean(
        axis=(0, 1))
    assert np.abs(lab - lab_src).max() > 10


def test_target_occluder_is_not_pasted(engine: Engine, tmp_path: Path) -> None:
    """A microphone (a green block) over target's chin and cheek stays out of the output."""
    assert engine.dlib is not None
    target = crop(2)
    t_face = detect.find_main_face(engine.dlib, target)
    assert t_face is not None
    p = t_face.points
    occluded = target.copy()
    # Between the lower lip and the chin, the width of the mouth: skin only, no feature.
    cv2.rectangle(occluded, (int(p[48, 0]), int(p[57, 1] + 3)), (int(p[54, 0]), int(p[8, 1] - 3)),
                  (30, 200, 40), -1)
    ori_rgb = crop(3)
    result = engine.swap(SwapJob("m", str(save(ori_rgb, tmp_path / "o.jpg")),
                                 str(save(occluded, tmp_path / "t.jpg"))))
    out = rgb_of(result.jpeg).astype(int)
    green = (out[..., 1] > out[..., 0] + 60) & (out[..., 1] > out[..., 2] + 60)
    assert green.sum() < 10, green.sum()
    assert result.detail["occluded_share"] > 0


def test_relight_moves_the_light_not_the_face() -> None:
    """A face lit from the left, relit to a picture lit from the right: the side that was
    bright becomes the darker one; the fine detail stays."""
    h, w = 90, 90
    xs = np.linspace(-1, 1, w)[None, :].repeat(h, axis=0)
    rng = np.random.default_rng(2)
    detail = rng.normal(0, 4, (h, w))
    left_lit = np.clip(150 - 40 * xs + detail, 0, 255)
    right_lit = np.clip(150 + 40 * xs, 0, 255)
    src = np.repeat(left_lit[..., None], 3, axis=2).astype(np.uint8)
    ref = np.repeat(right_lit[..., None], 3, axis=2).astype(np.uint8)
    weight = np.ones((h, w), np.float32)
    out = blend.relight(src, ref, weight, weight).astype(float).mean(axis=2)
    assert out[:, : w // 4].mean() < out[:, -w // 4 :].mean() - 20
    assert np.corrcoef((out - cv2.GaussianBlur(out, (0, 0), 6)).ravel(), detail.ravel())[0, 1] > 0.6


def test_folds_found_and_unfolded(engine: Engine, tmp_path: Path) -> None:
    """A target whose features are forced the wrong way round (its picture mirrored but its
    landmarks not renumbered, the way a pose far from ori's bends a warp) folds the warp:
    the fold is counted, and the swap takes less of target's shape until none is left."""
    assert engine.dlib is not None
    face = detect.find_main_face(engine.dlib, crop(3))
    assert face is not None
    pts = face.points
    assert classic.count_folds(pts, pts) == 0
    flipped = pts.copy()
    flipped[:, 0] = 2 * pts[:, 0].mean() - pts[:, 0]  # every triangle turned over
    assert classic.count_folds(pts, flipped) > 10
    # Two real, differently posed faces: the swap ends with no fold either way.
    target = crop(2)
    t_face = detect.find_main_face(engine.dlib, target)
    assert t_face is not None
    _, info = classic.swap(crop(3), face, target, t_face, classic.VARIANTS[0])
    assert info["folds"] == 0 or info["shape"] == classic.MIN_SHAPE, info
