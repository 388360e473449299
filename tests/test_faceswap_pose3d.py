"""Target's face turned to ori's head pose in 3D (issue 26: the full swap of a turned head
was torn, its partial swap read as ori): the mesh fitted by a rotation, the triangles drawn
far ones first, the sides target's picture sees edge-on left to ori, and the "turned"
variant offered and chosen for a pair whose heads are turned far apart."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.backends.faceswap import classic, guard, landmark_mediapipe, pose3d
from runner.backends.faceswap.models import dlib_model_dir
from runner.backends.faceswap.worker import Engine, SwapJob, WorkerConfig
from tests.sample_faces import GROUP, crop

# The group photo's face that is turned most (dlib's HOG box): the subject of the
# benchmark's turned-head pairs.
TURNED_FACE = (884, 80, 991, 188)


def rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def test_similarity_3d_recovers_rotation_scale_and_shift() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(60, 3))
    r = rotation(0.7, -0.2, 0.3)
    dst = 1.7 * src @ r.T + np.array([5.0, -3.0, 2.0])
    scale, got, shift = pose3d.similarity_3d(src, dst)
    assert scale == pytest.approx(1.7)
    assert np.allclose(got, r) and np.allclose(shift, [5.0, -3.0, 2.0])


def test_frontal_levels_the_eyes_and_uprights_the_face() -> None:
    rng = np.random.default_rng(1)
    mesh = rng.normal(size=(468, 3))
    mesh[pose3d.EYE_CORNERS[0]] = (-1.0, 0.0, 0.0)
    mesh[pose3d.EYE_CORNERS[1]] = (1.0, 0.0, 0.0)
    mesh[pose3d.FOREHEAD] = (0.0, -1.5, -0.3)
    mesh[pose3d.CHIN] = (0.0, 2.0, -0.2)
    turned = mesh @ rotation(0.6, 0.2, 0.1).T
    front = pose3d.frontal(turned)
    left, right = front[pose3d.EYE_CORNERS[0]], front[pose3d.EYE_CORNERS[1]]
    assert abs(left[1] - right[1]) < 1e-9 and abs(left[2] - right[2]) < 1e-9
    assert right[0] > left[0]
    up = front[pose3d.CHIN] - front[pose3d.FOREHEAD]
    assert abs(up[0]) < 1e-9 and up[1] > 0
    # the same face, however it was turned, gives the same layout
    assert np.allclose(front, pose3d.frontal(mesh))


def test_near_triangles_are_drawn_last_and_hidden_ones_not_at_all() -> None:
    pts = np.array([[0, 0], [10, 0], [0, 10], [2, 2], [12, 2], [2, 12]], dtype=float)
    tri = np.array([[0, 1, 2], [3, 4, 5]])
    depth = np.array([5.0, 5.0, 5.0, 1.0, 1.0, 1.0])  # the second triangle is nearer
    order = pose3d.drawing_order(tri, pts, depth, pts)
    assert order.tolist() == [[0, 1, 2], [3, 4, 5]]
    order = pose3d.drawing_order(tri, pts, depth[::-1].copy(), pts)
    assert order.tolist() == [[3, 4, 5], [0, 1, 2]]
    flipped = pts.copy()
    flipped[3:, 0] = 14 - flipped[3:, 0]  # the second one now faces away
    assert pose3d.drawing_order(tri, flipped, depth, pts).tolist() == [[0, 1, 2]]


def test_facing_and_carry() -> None:
    mesh = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    tri = np.array([[0, 1, 2], [0, 1, 3]])
    assert pose3d.facing(mesh, tri) == pytest.approx([1.0, 0.0])
    src = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    dst = src * 2 + 5
    tri = np.array([[0, 1, 2], [1, 3, 2]])
    points = np.array([[2.0, 3.0], [8.0, 9.0], [12.0, 5.0]])  # the last beyond the mesh
    assert np.allclose(pose3d.carry(points, src, dst, tri), points * 2 + 5)


def turned_head() -> np.ndarray:
    group = np.asarray(Image.open(GROUP).convert("RGB"))
    x0, y0, x1, y1 = TURNED_FACE
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    top, left = max(0, cy - 135), max(0, cx - 125)
    return np.ascontiguousarray(group[top : top + 250, left : left + 250])


@pytest.mark.skipif(not GROUP.is_file() or dlib_model_dir() is None
                    or not landmark_mediapipe.available(),
                    reason="insightface's samples, dlib or MediaPipe's face model missing")
def test_a_turned_head_takes_the_turned_swap(tmp_path: Path) -> None:
    """ori's head turned about 0.8 from target's: the flat full swap folds (its realism is
    low), the features-only one keeps ori's look; the turned variant is tried, has no
    fold and no gap left, and is chosen, and its output is closer to target than to ori."""
    engine = Engine(WorkerConfig(backend="classic", landmarker="mediapipe"))
    ori, target = tmp_path / "o.jpg", tmp_path / "t.jpg"
    Image.fromarray(turned_head()).save(ori, quality=95)
    Image.fromarray(crop(3)).save(target, quality=95)
    result = engine.swap(SwapJob("turned", str(ori), str(target)))
    gaps = result.detail["gaps"]
    assert gaps["yaw"] > guard.YAW_GAP
    tried = {c["variant"]: c for c in result.detail["candidates"]}
    assert set(tried) == {"natural", "features", "turned"}
    assert result.detail["variant"] == "turned" and result.detail["warp"] == "turned"
    assert result.detail["folds"] == 0 and result.detail["shape"] == 1.0
    assert tried["turned"]["realism"] > tried["natural"]["realism"] + 0.5
    assert result.identity_target is not None and result.identity_ori is not None
    assert result.identity_target > result.identity_ori
    assert Image.open(io.BytesIO(result.jpeg)).size == (250, 250)


def test_turned_variant_only_where_nothing_hidden_is_shown() -> None:
    """The turned variant turns target's face as a solid: offered for a pose gap when
    target is (nearly) frontal or ori is turned further the same way, never when it
    would have to show a side target's picture hides."""
    base = classic.VARIANTS[0]

    def offered(yaw_ori: float, yaw_target: float) -> bool:
        found = guard.Gaps(yaw=abs(yaw_ori - yaw_target), pitch=0.0, mouth=0.0,
                           turnable=yaw_target * (yaw_ori - yaw_target) >= 0
                           or abs(yaw_target) < guard.FRONTAL_YAW)
        return any(v.warp == "turned" for v in guard.guard_variants(found, base))

    assert offered(0.8, 0.05) and offered(-0.8, 0.1) and offered(0.9, 0.3)
    assert not offered(0.1, 0.7) and not offered(-0.4, 0.4)
    assert not offered(0.2, 0.25)  # no pose gap: nothing but the full swap

    def gaps(yaw_ori: float, yaw_target: float) -> guard.Gaps:
        return guard.gaps(np.zeros((68, 2)), np.ones((68, 2)),
                          lambda pts: yaw_ori if pts[0, 0] == 0 else yaw_target)

    assert gaps(0.8, 0.05).turnable and not gaps(0.1, 0.7).turnable
