"""ori's glasses removed whole, never half.

A swap whose mask covers part of ori's frame pastes target's skin over that part: the
result shows half a frame, or a ghost of it. Half a frame is exactly a line that
the mask's edge cuts: part of it outside the mask (ori's, kept) and part inside (replaced).
So lines are found in the eye band (thin dark or bright structures: a morphological
black-hat / top-hat with a kernel wider than a frame and narrower than an eye; the eyes and
brows themselves are left out by their landmark hulls), and every long line the mask's edge
cuts, on both sides of the nose (glasses come in pairs), is painted out (Telea inpainting)
of the result where it is not the new face, the temples past the face's sides included. The
eyes and the lower nose are never painted out: the line map joins the rims to the lids,
the under-eye shadows and the nostrils.

target's frames are not touched, and ori's are not put back over the new face; no rule
tells glasses from wrinkles or eye shadows: the cut-line rule needs no such decision (what
was tried instead: bench/faceswap_history.md, "Where the face swap's choices come from").
"""

from __future__ import annotations

import cv2
import numpy as np

LINE_CONTRAST = 15.0  # black-hat levels (0-255) that make a pixel part of a line
INSIDE, OUTSIDE = 0.5, 0.1  # mask levels: replaced, kept
MIN_EXTENT = 0.35  # share of the face size a line must span to be a frame
MIN_INSIDE = 0.1  # pixels inside the mask, per unit of face size
NEW_FACE = 0.9  # mask level from which a pixel shows the new face: no frame of ori's there
EYES = (range(36, 42), range(42, 48))
BROWS = (range(17, 22), range(22, 27))
# Never painted out: the eyes and the lower nose (tip and nostrils). The line map joins the
# rims to the lids, the under-eye shadows and the nostrils, and the whole component went.
KEPT = (*EYES, range(30, 36))


def _disc(radius: float) -> np.ndarray:
    k = max(1, round(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))


def _hulls(shape: tuple[int, ...], points: np.ndarray, parts: tuple[range, ...]) -> np.ndarray:
    out = np.zeros(shape[:2], dtype=np.uint8)
    for part in parts:
        cv2.fillConvexPoly(out, cv2.convexHull(np.round(points[list(part)]).astype(np.int32)), 1)
    return out


def eye_band(shape: tuple[int, ...], points: np.ndarray, size: float) -> np.ndarray:
    """Where frames can be: from above the brows to the cheekbones, between the face's
    sides (jaw points 0 and 16 at eye height) and a little beyond (the temples)."""
    up = points[27] - points[8]
    up = up / max(float(np.linalg.norm(up)), 1e-6)
    across = np.array([up[1], -up[0]])
    centre = points[36:48].mean(axis=0)
    # Up to just above the brows: higher up, the lines that cross the mask's edge are
    # strands of a fringe, not frames.
    half_w = 0.62 * size
    top, bottom = 0.18 * size, 0.30 * size
    corners = np.array([
        centre + across * half_w + up * top, centre - across * half_w + up * top,
        centre - across * half_w - up * bottom, centre + across * half_w - up * bottom,
    ])
    band = np.zeros(shape[:2], dtype=np.uint8)
    cv2.fillConvexPoly(band, np.round(corners).astype(np.int32), 1)
    return band


def line_map(rgb: np.ndarray, points: np.ndarray, size: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Thin dark or bright lines in the eye band (0/1 uint8), eyes and brows left out with a
    margin; and the lines with only the eyes' and brows' own hulls left out (where a rim
    beside them is followed)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    kernel = _disc(0.045 * size)
    dark = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel).astype(np.float32)
    bright = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, kernel).astype(np.float32)
    # Metal frames shine as well as shade: take either, bright ones at a higher bar since
    # skin highlights are bright blobs too.
    lines = (dark > LINE_CONTRAST) | (bright > 2.0 * LINE_CONTRAST)
    band = eye_band(rgb.shape, points, size) > 0
    eyes = cv2.dilate(_hulls(rgb.shape, points, EYES), _disc(0.02 * size)) > 0
    brows = cv2.dilate(_hulls(rgb.shape, points, BROWS), _disc(0.03 * size)) > 0
    cores = _hulls(rgb.shape, points, EYES + BROWS) > 0
    return (lines & band & ~eyes & ~brows).astype(np.uint8), lines & band & ~cores


def cut_lines(img: np.ndarray, points: np.ndarray, size: float,
              alpha: np.ndarray) -> np.ndarray:
    """The lines of ``img``'s eye band that the mask ``alpha`` cuts: connected lines with
    pixels both inside (alpha > INSIDE) and outside (alpha < OUTSIDE). float32 0/1, grown
    by a pixel so the anti-aliased edge of a frame goes with it."""
    lines, raw = line_map(img, points, size)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    if count <= 1:
        return np.zeros(img.shape[:2], dtype=np.float32)
    ids = labels.ravel()
    inside = np.bincount(ids, weights=(alpha > INSIDE).ravel(), minlength=count)
    outside = np.bincount(ids, weights=(alpha < OUTSIDE).ravel(), minlength=count)
    # A frame runs a long way (a temple into a rim, a rim across the cheek); a crease or a
    # shadow that happens to touch the edge does not, and putting ori's back would put
    # back some of ori's identity.
    extent = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    cut = (inside >= MIN_INSIDE * size) & (outside > 0) & (extent >= MIN_EXTENT * size)
    cut[0] = False
    mask = cut[labels].astype(np.uint8)
    # Glasses come in pairs: cut lines on one side only are hair at a temple or a crease.
    nose_x = float(points[27:31, 0].mean())
    xs = np.nonzero(mask & (alpha > INSIDE))[1]
    if min(int((xs < nose_x).sum()), int((xs > nose_x).sum())) < MIN_INSIDE * size:
        mask[:] = 0
    if mask.any():
        # Where a rim runs beside an eye or a brow, the line map left it out (their margin):
        # grow the frames along the lines there too, so no piece of a rim is replaced.
        near = raw.astype(np.uint8)
        step = _disc(1)
        for _ in range(max(2, round(0.04 * size))):
            mask = cv2.dilate(mask, step) & near | mask
        mask = cv2.dilate(mask, _disc(0.015 * size))
        mask[_hulls(img.shape, points, KEPT) > 0] = 0
    return mask.astype(np.float32)


def remove_frames(img: np.ndarray, frames: np.ndarray, size: float,
                  alpha: np.ndarray) -> np.ndarray:
    """Paint ori's frame pixels out where they are not the new face (``alpha`` below
    NEW_FACE): Telea inpainting from the skin around them."""
    mask = ((frames > 0.5) & (alpha < NEW_FACE)).astype(np.uint8) * 255
    if not mask.any():
        return img
    return cv2.inpaint(img, mask, max(2.0, 0.03 * size), cv2.INPAINT_TELEA)
