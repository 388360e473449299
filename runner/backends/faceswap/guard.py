"""The pose and expression guard of the classic swap: never a torn face.

A face tears where the two heads are turned very differently (after the mirror: ori at yaw
0.8, target frontal) or the mouths are not alike (a laugh pasted onto a closed mouth). Those
gaps are measured on the 68 points of both faces before the swap. A pair past a threshold
also tries the lower-risk variants:

- an expression gap: the partial swap that keeps ori's mouth;
- a pose gap: the partial swap of the features only (ori's cheeks, outline, forehead), and,
  where target's face can be turned to ori's pose without showing a side its picture
  hides, the full swap with target's mesh turned in 3D ("turned", ``classic.Solid``),
  which handles the gap instead of leaving it.

Among the variants tried, the swapper keeps the best by identity AND realism: ``realism``
scores a candidate by what its output shows (the features where the warp meant to put
them, found again by the landmarker on the delivered JPEG; the seam) and by the gap it
left unhandled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

# Gaps past which a pair also tries the lower-risk variants (how they were set:
# bench/faceswap_history.md, "Where the face swap's choices come from").
YAW_GAP = 0.4
PITCH_GAP = 0.2
MOUTH_GAP = 0.1  # lip gap difference, share of the face size
# The realism score: a point of it is worth this much identity cosine (dlib's, where
# variants differ by 0.005 to 0.02).
REALISM_WEIGHT = 0.1
DISTORTION_FREE = 0.04  # mean feature displacement (share of face size) that JPEG and
# landmark noise give an unharmed swap; beyond it each 0.01 costs 0.1 of realism
DISTORTION_SCALE = 10.0
# Realism lost per unit of a gap past its threshold that a variant leaves unhandled.
GAP_PENALTY = 2.0
# The mouth's gap costs more: a laugh pasted onto a closed mouth tears worse than a turn.
MOUTH_PENALTY = 5.0
FRONTAL_YAW = 0.15  # a head turned less than this shows both sides of its face
INNER = np.arange(17, 68)


def pitch(points: np.ndarray) -> float:
    """Head nod from landmarks: where the nose tip sits between the eyes and the chin, as
    a share of that distance (about 0.45 frontal; only differences are used)."""
    eyes = points[36:48].mean(axis=0)
    down = points[8] - eyes
    height = max(float(np.linalg.norm(down)), 1e-6)
    return float(np.dot(points[30] - eyes, down / height) / height)


def mouth_open(points: np.ndarray) -> float:
    """How far the lips are apart (inner lip points), as a share of the face size."""
    span = points.max(axis=0) - points.min(axis=0)
    gap = float(np.linalg.norm(points[[61, 62, 63]] - points[[67, 66, 65]], axis=1).mean())
    return gap / float(max(span[0], span[1], 1.0))


@dataclass(frozen=True)
class Gaps:
    """How different the two faces are: head turn (after the mirror, which is tried when it
    makes the turns alike), nod, and mouth opening."""

    yaw: float
    pitch: float
    mouth: float
    # Whether target's face can be turned to ori's head pose without showing a side that
    # target's picture hides: ori turned further the way target is turned, or target
    # (nearly) frontal.
    turnable: bool = False

    @property
    def pose(self) -> bool:
        return self.yaw > YAW_GAP or self.pitch > PITCH_GAP

    @property
    def expression(self) -> bool:
        return self.mouth > MOUTH_GAP

    def as_dict(self) -> dict[str, float]:
        return {"yaw": round(self.yaw, 3), "pitch": round(self.pitch, 3),
                "mouth": round(self.mouth, 3)}


def gaps(o_pts: np.ndarray, t_pts: np.ndarray, yaw: Callable[[np.ndarray], float]) -> Gaps:
    """The gaps between ori's and target's 68 points; ``yaw`` is the classic swap's head-turn
    measure (the mirror makes target's turn the same sign as ori's when that is closer)."""
    y_o, y_t = yaw(o_pts), yaw(t_pts)
    return Gaps(yaw=min(abs(y_o - y_t), abs(y_o + y_t)),
                pitch=abs(pitch(o_pts) - pitch(t_pts)),
                mouth=abs(mouth_open(o_pts) - mouth_open(t_pts)),
                turnable=y_t * (y_o - y_t) >= 0 or abs(y_t) < FRONTAL_YAW)


def guard_variants(found: Gaps, base: Any) -> list[Any]:
    """The lower-risk variants (``classic.Variant``) a pair with these gaps also tries."""
    extra: list[Any] = []
    if found.expression:
        extra.append(replace(base, name="ori-mouth", mouth="ori"))
    if found.pose:
        # Only the features: cheeks, outline and forehead all ori's (the textbook swap): the
        # cheeks are where a turned face is squeezed, or where target's hand rests.
        extra.append(replace(base, name="features", jaw_shape=0.0, forehead=0.1,
                             erode=0.03, region="inner", relight=True,
                             mouth="ori" if found.expression else base.mouth))
        if found.turnable:
            extra.append(replace(base, name="turned", warp="turned",
                                 mouth="ori" if found.expression else base.mouth))
    return extra


def region_mask(region: str, shape: tuple[int, ...], dst: np.ndarray,
                size: float) -> np.ndarray:
    """Where a variant's ``region`` lets the face change (float32, 1 = may change): all of
    it for "face", the features (brows to chin, a margin round them) for "inner"."""
    if region == "face":
        return np.ones(shape[:2], dtype=np.float32)
    if region != "inner":
        raise ValueError(f"unknown swap region {region!r}")
    hull = np.zeros(shape[:2], dtype=np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(dst[17:68]).astype(np.int32)), 1)
    grow = max(1, round(0.06 * size))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    return cv2.dilate(hull, disc).astype(np.float32)


def distortion(out_points: np.ndarray | None, dst_points: np.ndarray | None,
               size: float) -> float | None:
    """Mean distance between where the features were meant to land and where the landmarker
    finds them on the delivered output, as a share of the face size: a torn face or a
    smeared feature moves them."""
    if out_points is None or dst_points is None:
        return None
    moved = np.linalg.norm(np.asarray(out_points)[INNER] - np.asarray(dst_points)[INNER], axis=1)
    return float(moved.mean()) / max(size, 1.0)


def realism(info: dict[str, Any], found: Gaps, moved: float | None) -> float:
    """1 for a swap that shows nothing wrong, less for each sign of a torn face: features
    displaced on the output, folds left in the warp, a gap the variant did not handle (a
    pose gap is handled by the features-only swap and by the turned warp)."""
    score = 1.0
    if moved is not None:
        score -= DISTORTION_SCALE * max(0.0, moved - DISTORTION_FREE)
    score -= 0.1 * float(info.get("folds", 0) or 0)
    if found.expression and not info.get("kept_ori_mouth"):
        score -= MOUTH_PENALTY * (found.mouth - MOUTH_GAP)
    if found.pose and info.get("region", "face") == "face" and info.get("warp") != "turned":
        score -= GAP_PENALTY * (max(found.yaw - YAW_GAP, 0.0) + max(found.pitch - PITCH_GAP, 0.0))
    return score
