"""The pose and expression guard (issue 14, "never a torn face") and the mesh points of the
warp: gaps measured on real landmarks (insightface's sample photo) and on the same points
moved the way a turned head or an open mouth moves them; the lower-risk variants offered and
chosen by realism as well as identity."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.backends.faceswap import classic, detect, guard, landmark_mediapipe, mesh_warp
from runner.backends.faceswap.models import dlib_model_dir
from runner.backends.faceswap.worker import Engine, SwapJob, WorkerConfig
from tests.sample_faces import GROUP, crop

insightface = pytest.importorskip("insightface")

pytestmark = pytest.mark.skipif(
    not GROUP.is_file() or dlib_model_dir() is None, reason="insightface samples or dlib missing"
)
needs_mesh = pytest.mark.skipif(not landmark_mediapipe.available(),
                                reason="MediaPipe's face_landmark.tflite missing")



@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(WorkerConfig(backend="classic", landmarker="dlib"))


@pytest.fixture(scope="module")
def face(engine: Engine) -> detect.Face:
    assert engine.dlib is not None
    found = detect.find_main_face(engine.dlib, crop(3))
    assert found is not None
    return found


def opened(points: np.ndarray, amount: float) -> np.ndarray:
    """The points with the lower lip and chin dropped by ``amount`` x face size."""
    out = points.copy()
    size = float(np.ptp(points, axis=0).max())
    out[[5, 6, 7, 8, 9, 10, 11, 55, 56, 57, 58, 59, 65, 66, 67]] += (0.0, amount * size)
    return out


def turned(points: np.ndarray, amount: float) -> np.ndarray:
    """The nose and mouth moved sideways by ``amount`` x face size (a head turning)."""
    out = points.copy()
    size = float(np.ptp(points, axis=0).max())
    out[27:36] += (amount * size, 0.0)
    out[48:68] += (0.5 * amount * size, 0.0)
    return out


def test_gaps_of_real_and_moved_faces(face: detect.Face) -> None:
    pts = face.points
    same = guard.gaps(pts, pts, classic.yaw)
    assert same.yaw == same.pitch == same.mouth == 0.0
    assert not same.pose and not same.expression
    # A mirror image is the same pose for the swap, which mirrors target when that helps.
    _, mirror_pts = classic.mirrored(crop(3), pts)
    assert guard.gaps(pts, mirror_pts, classic.yaw).yaw < 0.05
    laugh = guard.gaps(pts, opened(pts, 0.2), classic.yaw)
    assert laugh.expression and laugh.mouth > guard.MOUTH_GAP
    turn = guard.gaps(pts, turned(pts, 0.25), classic.yaw)
    assert turn.pose and turn.yaw > guard.YAW_GAP and not turn.expression


def test_guard_offers_lower_risk_variants(face: detect.Face) -> None:
    base = classic.VARIANTS[0]
    pts = face.points
    assert guard.guard_variants(guard.gaps(pts, pts, classic.yaw), base) == []
    laugh = guard.guard_variants(guard.gaps(pts, opened(pts, 0.2), classic.yaw), base)
    assert [v.name for v in laugh] == ["ori-mouth"] and laugh[0].mouth == "ori"
    both = guard.guard_variants(guard.gaps(pts, opened(turned(pts, 0.25), 0.2), classic.yaw),
                                base)
    assert [v.name for v in both] == ["ori-mouth", "features"]
    assert both[1].region == "inner" and both[1].mouth == "ori"


def test_realism_scores_what_a_variant_leaves(face: detect.Face) -> None:
    pts = face.points
    risky = guard.gaps(pts, opened(turned(pts, 0.25), 0.2), classic.yaw)
    clean = {"folds": 0, "kept_ori_mouth": False, "region": "face"}
    handled = {"folds": 0, "kept_ori_mouth": True, "region": "inner"}
    assert guard.realism(clean, guard.gaps(pts, pts, classic.yaw), 0.01) == 1.0
    assert guard.realism(handled, risky, 0.01) == 1.0
    mouth_left = risky.mouth - guard.MOUTH_GAP
    pose_left = max(risky.yaw - guard.YAW_GAP, 0.0) + max(risky.pitch - guard.PITCH_GAP, 0.0)
    assert mouth_left > 0.05 and pose_left > 0.05
    assert guard.realism(clean, risky, 0.01) == pytest.approx(
        1.0 - guard.MOUTH_PENALTY * mouth_left - guard.GAP_PENALTY * pose_left)
    # Features displaced on the output (a tear) cost realism whatever the gaps.
    assert guard.realism(handled, risky, 0.1) < 0.5
    size = face.size
    assert guard.distortion(pts, pts, size) == 0.0
    # 9 nose points moved by 0.1 x size, 20 mouth points by 0.05, of the 51 inner points
    expected = (9 * 0.1 + 20 * 0.05) * float(np.ptp(pts, axis=0).max()) / size / 51
    assert guard.distortion(turned(pts, 0.1), pts, size) == pytest.approx(expected, rel=1e-6)


def test_features_region_keeps_ori_cheeks(face: detect.Face, engine: Engine) -> None:
    assert engine.dlib is not None
    ori, target = crop(3), crop(2)
    t_face = detect.find_main_face(engine.dlib, target)
    assert t_face is not None
    region = guard.region_mask("inner", ori.shape, face.points, face.size)
    assert region[np.round(face.points[30, ::-1]).astype(int)[0],
                  np.round(face.points[30, 0]).astype(int)] == 1  # the nose tip
    with pytest.raises(ValueError):
        guard.region_mask("cheeks", ori.shape, face.points, face.size)
    variant = guard.guard_variants(guard.Gaps(1.0, 0.0, 0.0), classic.VARIANTS[0])[0]
    whole, _ = classic.swap(ori, face, target, t_face, classic.VARIANTS[0])
    inner, info = classic.swap(ori, face, target, t_face, variant)
    assert info["region"] == "inner"
    # Low on the cheek, between the jaw line and the mouth: the whole-face swap changes it,
    # the features-only one leaves ori's picture.
    cheek = np.round((face.points[4] + face.points[48]) / 2).astype(int)
    y, x = cheek[1], cheek[0]
    patch = np.s_[y - 2 : y + 3, x - 2 : x + 3]
    changed_whole = np.abs(whole[patch].astype(int) - ori[patch]).mean()
    changed_inner = np.abs(inner[patch].astype(int) - ori[patch]).mean()
    assert changed_inner < 2.0 < changed_whole, (changed_inner, changed_whole)
    # The realism check compares the output's features with where they were meant to be:
    # target's mouth for a full swap, ori's own where the partial swap kept it.
    mouth_kept = guard.guard_variants(guard.Gaps(0.0, 0.0, 1.0), classic.VARIANTS[0])[0]
    _, kept = classic.swap(ori, face, target, t_face, mouth_kept)
    assert kept["kept_ori_mouth"]
    assert np.allclose(np.asarray(kept["dst_points"])[48:], face.points[48:], atol=0.06)
    _, full = classic.swap(ori, face, target, t_face, classic.VARIANTS[0])
    assert not full["kept_ori_mouth"]
    assert np.abs(np.asarray(full["dst_points"])[48:] - face.points[48:]).max() > 1.0


def test_risky_pair_chooses_by_identity_and_realism(engine: Engine, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pair risky (thresholds at 0): the lower-risk variants are tried with one
    candidate configured, each scored, and the one kept is the best by identity less the
    seam plus realism."""
    monkeypatch.setattr(guard, "YAW_GAP", -1.0)
    monkeypatch.setattr(guard, "MOUTH_GAP", -1.0)
    ori, target = tmp_path / "o.jpg", tmp_path / "t.jpg"
    Image.fromarray(crop(3)).save(ori, quality=95)
    Image.fromarray(crop(2)).save(target, quality=95)
    result = engine.swap(SwapJob("risky", str(ori), str(target)))
    tried = result.detail["candidates"]
    assert [c["variant"] for c in tried] == ["natural", "ori-mouth", "features"]
    from runner.backends.faceswap.swappers import NOT_SWAPPED, SEAM_WEIGHT, swapped

    def key(c: dict[str, float]) -> float:
        return (c["identity_target"] - SEAM_WEIGHT * c["seam"]
                + guard.REALISM_WEIGHT * c["realism"] - NOT_SWAPPED * (not swapped(c)))

    assert result.detail["variant"] == max(tried, key=key)["variant"]
    assert result.identity_target is not None and result.identity_ori is not None
    assert result.identity_target > result.identity_ori  # still a swap
    # natural left both gaps unhandled: its realism is the lowest.
    assert tried[0]["realism"] < min(c["realism"] for c in tried[1:])
    assert set(result.detail["gaps"]) == {"yaw", "pitch", "mouth"}
    assert Image.open(io.BytesIO(result.jpeg)).size == (250, 250)


def test_mesh_extra_points_lie_away_from_the_anchors() -> None:
    rng = np.random.default_rng(3)
    mesh = rng.uniform(0, 100, size=(468, 2))
    anchors = rng.uniform(0, 100, size=(68, 2))
    index = mesh_warp.extra_indices(mesh, anchors, 100.0)
    chosen = mesh[index]
    gap = mesh_warp.MIN_GAP * 100.0
    assert len(index) > 5
    assert np.linalg.norm(chosen[:, None] - anchors[None], axis=2).min() >= gap
    apart = np.linalg.norm(chosen[:, None] - chosen[None], axis=2) + np.eye(len(chosen)) * 1e9
    assert apart.min() >= gap
    assert mesh_warp.extras(None, mesh, anchors, 100.0)[0].shape == (0, 2)
    o_x, t_x = mesh_warp.extras(mesh, mesh + 1.0, anchors, 100.0)
    assert np.array_equal(o_x, chosen) and np.array_equal(t_x, chosen + 1.0)


@needs_mesh
def test_mesh_points_join_the_warp(monkeypatch: pytest.MonkeyPatch) -> None:
    meshed = Engine(WorkerConfig(backend="classic", landmarker="mediapipe"))
    finder = meshed.swapper.finder  # type: ignore[attr-defined]
    ori, target = crop(3), crop(2)
    o_face, t_face = finder.main_face(ori), finder.main_face(target)
    assert o_face is not None and t_face is not None
    assert o_face.mesh is not None and t_face.mesh is not None
    out, info = classic.swap(ori, o_face, target, t_face, classic.VARIANTS[0])
    assert info["mesh_points"] > 10 and not info["mirrored"], info
    plain = detect.Face(box=t_face.box, points=t_face.points, how=t_face.how)
    _, without = classic.swap(ori, o_face, target, plain, classic.VARIANTS[0])
    assert without["mesh_points"] == 0
    assert out.shape == ori.shape
    # A target the swap mirrors (forced here: these two faces are both frontal) has no
    # mesh points: its 68 are renumbered, the mesh has no left/right map.
    monkeypatch.setattr(classic, "wants_mirror", lambda o_pts, t_pts: True)
    _, mirrored = classic.swap(ori, o_face, target, t_face, classic.VARIANTS[0])
    assert mirrored["mirrored"] and mirrored["mesh_points"] == 0
