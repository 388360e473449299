"""A JPEG-ghost test: does the pasted face carry a compression history of its own?

Re-compress a picture at a range of qualities and measure how much it changes (Farid's
"JPEG ghosts"): a region last saved at quality q changes least when re-saved near q. A face
pasted into a photo and saved differently from the photo has a different curve from the
skin and hair around it. The score of one picture is the L1 distance between the face's
curve and the surrounding ring's curve, each normalised to sum 1 (so the amount of texture
cancels and only the shape of the curve, the compression history, is compared). Untouched
photos give the baseline; the area under the ROC curve (outputs vs untouched photos) says
how well the test tells them apart: 0.5 is chance.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

QUALITIES = (60, 65, 70, 75, 80, 85, 90, 95, 98)
SUBSAMPLINGS = (2, 0)  # 4:2:0 and 4:4:4: chroma history shows in one, luma in both


def regions(shape: tuple[int, ...], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inner face (68-point hull, eroded) and a ring of skin, hair and background
    around it, as boolean masks."""
    hull = np.zeros(shape[:2], dtype=np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    span = points.max(axis=0) - points.min(axis=0)
    size = float(max(span[0], span[1], 1.0))

    def disc(r: float) -> np.ndarray:
        k = max(1, round(r * size))
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))

    face = cv2.erode(hull, disc(0.08)) > 0
    ring = (cv2.dilate(hull, disc(0.25)) > 0) & ~(cv2.dilate(hull, disc(0.06)) > 0)
    return face, ring


def curves(rgb: np.ndarray, masks: list[np.ndarray]) -> list[np.ndarray]:
    """Mean squared change per re-save setting, inside each mask."""
    base = rgb.astype(np.float32)
    out: list[list[float]] = [[] for _ in masks]
    for sub in SUBSAMPLINGS:
        for q in QUALITIES:
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, "JPEG", quality=q, subsampling=sub)
            again = np.asarray(
                Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32
            )
            diff = ((again - base) ** 2).mean(axis=2)
            for i, m in enumerate(masks):
                out[i].append(float(diff[m].mean()) if m.any() else 0.0)
    return [np.asarray(c) for c in out]


def ghost_score(rgb: np.ndarray, points: np.ndarray) -> float | None:
    """How differently the face and its surroundings react to re-compression (0 = alike)."""
    face, ring = regions(rgb.shape, points)
    if face.sum() < 64 or ring.sum() < 64:
        return None
    cf, cr = curves(rgb, [face, ring])
    if cf.sum() <= 0 or cr.sum() <= 0:
        return None
    return float(np.abs(cf / cf.sum() - cr / cr.sum()).sum())


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    if not positives or not negatives:
        return float("nan")
    p = np.asarray(positives)[:, None]
    n = np.asarray(negatives)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))
