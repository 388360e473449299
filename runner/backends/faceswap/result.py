"""What a swap returns, and the row-level error (both cross the process boundary by pickle).

A swap may make several pictures of one row (the classic swapper's full swap and the
guard's partial swaps; the inswapper's one): each is a ``SwapVariant`` with its JPEG, its
identity scores and its local realism score. ``SwapResult`` carries the one the swapper
chose offline (``jpeg``, the scores, ``detail``) and every variant it made (``variants``,
the chosen one marked), so a judge can pick another by the competition's own formula
(``sqrt(10 * identity_target * PQ)``) without swapping again.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from runner.errors import RowFailed, RunnerError


class SwapVariant(BaseModel):
    """One picture a swap made of a row."""

    name: str  # "natural", "ori-mouth", "features" ... (``classic.Variant``), "inswapper"
    jpeg: bytes  # the picture as it would be delivered
    identity_target: float | None  # cosine(its face, target's face), the swap's embedding
    identity_ori: float | None  # cosine(its face, ori's face)
    # The local realism score: 1.0 when nothing wrong is seen (features where the warp put
    # them, no fold, no unhandled pose or expression gap: ``guard.realism``); lower for each
    # sign of a torn face. None where the swapper has no landmarks to check it with.
    realism: float | None
    offline_score: float  # what the offline choice ranks by (identity, realism, seam)
    chosen: bool = False  # the one the offline choice took: ``SwapResult.jpeg``


class SwapResult(BaseModel):
    jpeg: bytes  # the output JPEG (greyscale where ori's was), ready to write
    backend: str  # "inswapper" | "classic"
    identity_target: float | None  # cosine(output face, target face)
    identity_ori: float | None  # cosine(output face, ori face)
    embedding: str  # "arcface" | "dlib"
    detail: dict[str, Any] = Field(default_factory=dict)  # variant, distances, timings ...
    variants: list[SwapVariant] = Field(default_factory=list)  # every picture made, in order

    @property
    def chosen(self) -> SwapVariant | None:
        """The variant the offline choice took (its JPEG is ``jpeg``)."""
        return next((v for v in self.variants if v.chosen), None)


class FaceSwapError(RunnerError):
    """The row cannot be swapped; the message is the reason shown to the user
    (e.g. "no face found in target_image"). Submit then falls back to ori_image."""


class FaceSwapBadInput(FaceSwapError, RowFailed):
    """The row's own pictures cannot be swapped (no face found, a source missing or not an
    image): a rerun with the same inputs would fail the same way (a ``RowFailed``: the row
    ends as "bad input")."""
