"""What the judge asks, laid out as the reference asks it.

One user message, no system message: the images first, then one text (context + rule +
question, ``reference``). SC for t2i shows the result; SC for an edit shows the source, then
the result; PQ shows the result alone. Every image is resized to about a 512 x 512 area,
keeping its aspect ratio, and sent as a PNG data URI, as GEdit-Bench's evaluation does.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

from PIL import Image

from runner.backends.judge.reference import reference
from runner.images import image_size, open_image

__all__ = ["IMAGE_AREA", "data_uri", "message", "pq_question", "question", "target_size"]

IMAGE_AREA = 512 * 512  # the reference's target area (pixels) for every image it shows


def question(prompt: str, *, edit: bool) -> str:
    """The SC question's text: a t2i row's (its result shown) or an edit's (source, result)."""
    ref = reference()
    return ref.edit_question(prompt) if edit else ref.t2i_question(prompt)


def pq_question() -> str:
    return reference().pq_question()


def message(image_uris: list[str], text: str) -> list[dict[str, Any]]:
    """The request's messages: one user turn, the images, then the text."""
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": uri}} for uri in image_uris
    ]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def target_size(width: int, height: int, area: int = IMAGE_AREA) -> tuple[int, int]:
    """The reference's size for an image: the same aspect ratio at about ``area`` pixels,
    each side truncated to whole pixels (up or down: a small image is enlarged too)."""
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    return max(1, int(new_width)), max(1, int(new_width / ratio))


def data_uri(path: Path, area: int = IMAGE_AREA) -> str:
    """Blocking: the image at the reference's size as a PNG data URI."""
    img = open_image(path, max_side=4 * math.isqrt(area))  # decoded reduced where it can be
    size = image_size(path) or img.size  # the ratio of the file's own size, as the reference
    if (size[0] >= size[1]) != (img.width >= img.height):  # turned upright by its EXIF
        size = (size[1], size[0])
    w, h = target_size(*size, area=area)
    img = img.resize((w, h), Image.Resampling.BICUBIC)  # PIL's default for RGB, as the reference
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
