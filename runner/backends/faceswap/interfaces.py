"""One interface per processor kind (FaceFusion's split): what a detector, a landmarker, a
swapper, a mask and an enhancer must offer. Implementations only need the shape (these
are ``typing.Protocol``s); ``processors`` registers them by name.

Pictures are RGB uint8 arrays (H, W, 3); boxes are x0, y0, x1, y1 in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from runner.backends.faceswap.jpeg import JpegStyle
    from runner.backends.faceswap.result import SwapResult


@dataclass
class Detections:
    """What a detector found: boxes (N, 4) as x0, y0, x1, y1, which stage found them, and
    five key points per box (N, 5, 2) and scores (N,) when the detector gives them (SCRFD
    does)."""

    boxes: np.ndarray
    how: str
    kps: np.ndarray | None = None
    scores: np.ndarray | None = None


class Detector(Protocol):
    """Every face box of a picture (and its five key points, when the detector has them)."""

    name: str

    def detect(self, rgb: np.ndarray) -> Detections: ...


class Landmarker(Protocol):
    """The 68 points (iBUG / dlib order, shape (68, 2), x and y) of the face in ``box``, or
    None when the landmarker finds no face there. A landmarker with more points (MediaPipe's
    468/478) returns their 68-point subset: masks, warp and identity speak iBUG-68."""

    name: str

    def points(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None: ...


class Swapper(Protocol):
    """ori's picture with target's face, as the delivered JPEG, identity measured on it;
    raises FaceSwapError with the row's reason."""

    name: str  # the result's ``backend``
    embedding: str  # what identity is measured with: "dlib" | "arcface"

    @property
    def providers(self) -> list[str]: ...

    def swap(self, ori: np.ndarray, target: np.ndarray, style: JpegStyle) -> SwapResult: ...


class Mask(Protocol):
    """A step after the paste: ``out`` (the swapped picture) kept or changed where the mask
    says, given ori and the face's box; returns the picture and what it reports."""

    name: str

    def apply(self, ori: np.ndarray, out: np.ndarray,
              box: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]: ...


class Enhancer(Protocol):
    """The face at five key points (eyes, nose tip, mouth corners) restored, blended back."""

    @property
    def name(self) -> str: ...

    def enhance(self, rgb: np.ndarray, kps: np.ndarray) -> np.ndarray: ...
