"""The mask processors: steps applied after a swapper pasted its face, each deciding where
ori's picture may change (``apply(ori, out, box)`` -> the picture, what it reports).

- "region": a soft ellipse over the detector's box; inside it the pasted face gets at
  least ori's luminance contrast (``tone.match_contrast``) and ori's sharpness
  (``blend.match_sharpness``), blended back softly;
- "glasses": ori's frame lines that the changed region's edge cuts are painted out whole,
  never left half (``glasses``); it needs a face finder (68 points) and does nothing
  without one.

The classic swapper builds its masks itself, per ``classic.Variant`` (hull, skin band,
occluders, glasses, mouth): they depend on the warp and on each other.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from runner.backends.faceswap import blend, glasses, tone
from runner.backends.faceswap.detect import FaceFinder
from runner.backends.faceswap.inswapper import face_region


class RegionMask:
    name = "region"

    def apply(self, ori: np.ndarray, out: np.ndarray,
              box: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        region = face_region(out.shape, np.asarray(box, dtype=np.float64))
        # The face stays where ori's was: it gets at least ori's contrast there.
        matched, gain = tone.match_contrast(out, region, tone.contrast(ori, region))
        matched, ratio = blend.match_sharpness(matched, ori, region)
        return blend.alpha_blend(matched, out, region), {"sharpness_ratio": round(ratio, 3),
                                                         "contrast_gain": round(gain, 3)}


class GlassesMask:
    """The classic swap's glasses rule after another swapper. The region is where the
    picture changed (insightface pastes with a mask of its own)."""

    name = "glasses"

    def __init__(self, finder: FaceFinder | None) -> None:
        self.finder = finder

    def apply(self, ori: np.ndarray, out: np.ndarray,
              box: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        face = self.finder.main_face(ori) if self.finder is not None else None
        if face is None:
            return out, {"ori_frames_px": 0}
        changed = (np.abs(out.astype(np.int16) - ori.astype(np.int16)).max(axis=2) > 3)
        alpha = cv2.GaussianBlur(changed.astype(np.float32), (0, 0), max(1.0, 0.02 * face.size))
        frames = glasses.cut_lines(ori, face.points, face.size, alpha)
        if not frames.any():
            return out, {"ori_frames_px": 0}
        cleaned = glasses.remove_frames(out, frames, face.size, alpha)
        return cleaned, {"ori_frames_px": int(frames.sum())}
