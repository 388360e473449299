"""The new face's tone against ori's: colour mode, luminance contrast and chroma, measured
in Lab (OpenCV's 8-bit scale: L, a and b in 0..255, grey at a = b = 128).

- ``measure``: a region's mean lightness, its luminance contrast (the standard deviation of
  L) and its chroma (the mean distance of a, b from grey; the spread round its own median);
- ``monochrome``: whether a picture is a grey (or toned: sepia, a tinted scan) photo. A JPEG
  of a grey photo is not exactly grey: a scan or a colour pipeline leaves a faint tint and
  a couple of units of chroma noise. What tells it from a colour photo is how far its
  colours spread round their median (``MONO_SPREAD``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MONO_SPREAD = 8.0  # chroma spread (98th percentile, Lab units) below which a photo is grey
SPREAD_PERCENTILE = 98.0
MEASURE_SIDE = 256  # pictures are measured on a copy at most this large


@dataclass(frozen=True)
class Tone:
    """A region's tone: mean L, std of L (the luminance contrast), mean chroma, and the
    98th percentile of the chroma's distance from its median (the colours' spread)."""

    lightness: float
    contrast: float
    chroma: float
    spread: float


def lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB).astype(np.float32)


def measure(rgb: np.ndarray, mask: np.ndarray) -> Tone | None:
    """The tone of ``rgb`` where ``mask`` > 0.5; None when the region is under 16 pixels."""
    sel = np.asarray(mask) > 0.5
    if sel.sum() < 16:
        return None
    values = lab(rgb)[sel]
    ab = values[:, 1:] - 128.0
    spread = np.linalg.norm(ab - np.median(ab, axis=0), axis=1)
    return Tone(
        lightness=float(values[:, 0].mean()),
        contrast=float(values[:, 0].std()),
        chroma=float(np.linalg.norm(ab, axis=1).mean()),
        spread=float(np.percentile(spread, SPREAD_PERCENTILE)),
    )


def chroma_spread(rgb: np.ndarray) -> float:
    """How far a picture's colours spread round their median (98th percentile, Lab units)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, MEASURE_SIDE / max(h, w, 1))
    small = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(w * scale)),
                                                      max(1, round(h * scale))),
                                                interpolation=cv2.INTER_AREA)
    tone = measure(small, np.ones(small.shape[:2], dtype=np.float32))
    return 0.0 if tone is None else tone.spread


def monochrome(rgb: np.ndarray) -> bool:
    """Whether ``rgb`` is a grey or toned photo (its colours spread less than MONO_SPREAD)."""
    return chroma_spread(rgb) < MONO_SPREAD


def to_rgb(lab_img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(np.round(lab_img), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def with_chroma(face: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """``face``'s lightness with ``chroma``'s colour (a and b): the new face's detail in the
    colour of the picture it goes into. Both RGB, the same size."""
    out = lab(face)
    out[..., 1:] = lab(chroma)[..., 1:]
    return to_rgb(out)


def skin_colours(rgb: np.ndarray, skin: np.ndarray, own: np.ndarray,
                 sigma: float) -> np.ndarray:
    """``rgb`` with its colour (a, b) taken from the skin under ``skin`` (a blur that
    averages skin pixels only), except where ``own`` says (the eyes and lips keep theirs):
    what is not skin on a face (a glasses frame, a strand of hair) leaves no colour of its
    own. Where no skin is near, the skin's mean colour."""
    lab_img = lab(rgb)
    ab = lab_img[..., 1:]
    w = skin.astype(np.float32)
    if w.sum() < 1.0:
        return rgb
    num = cv2.GaussianBlur(ab * w[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)[..., None]
    mean = (ab * w[..., None]).reshape(-1, 2).sum(axis=0) / float(w.sum())
    filled = np.where(den > 0.05, num / np.maximum(den, 1e-6), mean)
    keep = cv2.GaussianBlur(own.astype(np.float32), (0, 0), 1.0)[..., None]
    lab_img[..., 1:] = filled * (1.0 - keep) + ab * keep
    return to_rgb(lab_img)


CONTRAST_FLOOR = 0.9  # a face under this share of its goal contrast is raised
CONTRAST_GAIN_MAX = 1.33  # ... by at most this factor (the colour transfer's own bound)


def match_contrast(face: np.ndarray, weight: np.ndarray,
                   goal: float) -> tuple[np.ndarray, float]:
    """The new face's luminance contrast (std of L under ``weight``) raised to ``goal`` when
    it is lower: a face flatter than it should be reads as pale or translucent. The
    deviations of L from its mean are scaled, by at most CONTRAST_GAIN_MAX; a face at
    CONTRAST_FLOOR of the goal or more is left alone, and none is lowered. Returns the
    picture and the gain (1.0: untouched)."""
    measured = measure(face, weight)
    if measured is None or measured.contrast <= 0 or goal <= 0:
        return face, 1.0
    if measured.contrast >= CONTRAST_FLOOR * goal:
        return face, 1.0
    gain = min(CONTRAST_GAIN_MAX, goal / measured.contrast)
    out = lab(face)
    out[..., 0] = measured.lightness + (out[..., 0] - measured.lightness) * gain
    return to_rgb(out), gain


def contrast(rgb: np.ndarray, weight: np.ndarray) -> float:
    """The luminance contrast (std of L) under ``weight``; 0 for an empty region."""
    measured = measure(rgb, weight)
    return 0.0 if measured is None else measured.contrast
