"""What a swap returns, and the row-level error (both cross the process boundary by pickle)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from runner.errors import RunnerError


class SwapResult(BaseModel):
    jpeg: bytes  # the output, RGB JPEG, ready to write
    backend: str  # "inswapper" | "classic"
    identity_target: float | None  # cosine(output face, target face)
    identity_ori: float | None  # cosine(output face, ori face)
    embedding: str  # "arcface" | "dlib"
    detail: dict[str, Any] = Field(default_factory=dict)  # variant, distances, timings ...


class FaceSwapError(RunnerError):
    """The row cannot be swapped; the message is the reason shown to the user
    (e.g. "no face found in target_image"). Submit then falls back to ori_image."""
