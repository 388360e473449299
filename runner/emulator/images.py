"""Placeholder images and input-image handling. All functions here are blocking: call them
through asyncio.to_thread from the server.

Outputs are PNGs tagged with the text chunk ``Software=runner-emulator`` so nothing
downstream can mistake them for real model output.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

SOFTWARE_TAG = "runner-emulator"
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "WEBP", "TIFF"})
# Functions that repaint the whole picture rather than a region.
WHOLE_IMAGE_FUNCTIONS = frozenset({"stylization_all", "colorization", "super_resolution"})

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),", re.S)


class UnsupportedImage(ValueError):
    """The bytes are not an image in a format the service accepts."""


@dataclass(frozen=True)
class ImageProbe:
    format: str
    width: int
    height: int


def parse_data_uri(uri: str) -> bytes:
    """Bytes of a ``data:image/...;base64,`` URI; ValueError when malformed."""
    match = _DATA_URI.match(uri)
    if match is None or ";base64" not in match.group("params"):
        raise ValueError("not a base64 data URI")
    mime = match.group("mime") or ""
    if not mime.startswith("image/"):
        raise UnsupportedImage(f"data URI media type {mime!r} is not an image")
    try:
        return base64.b64decode(uri[match.end() :], validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64 payload: {exc}") from exc


def probe(data: bytes) -> ImageProbe:
    """Format and size from the header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            width, height = img.size
    except Exception as exc:  # PIL raises several types for junk input
        raise UnsupportedImage(f"cannot identify image: {exc}") from exc
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedImage(f"unsupported image format {fmt!r}")
    return ImageProbe(fmt, width, height)


def decode_rgb(data: bytes, max_side: int | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB, optionally shrunk so the longer side is at most max_side."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb = img.convert("RGB")
    if max_side is not None and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _text_chunk(key: str, value: str) -> bytes:
    """tEXt for Latin-1 values, iTXt (UTF-8) otherwise: prompts are often Chinese."""
    try:
        kind, data = b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1")
    except UnicodeEncodeError:
        kind, data = b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode()
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def encode_png(rgb: np.ndarray, extra: dict[str, str] | None = None) -> bytes:
    """PNG via OpenCV (faster than PIL) with tEXt chunks spliced in after IHDR."""
    # Level 1: these are throwaway placeholders, speed matters more than size.
    ok, buf = cv2.imencode(
        ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )
    if not ok:
        raise RuntimeError("PNG encoding failed")
    png = buf.tobytes()
    chunks = {"Software": SOFTWARE_TAG, **(extra or {})}
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature + IHDR length, type, data, CRC
    text = b"".join(_text_chunk(k, v) for k, v in chunks.items())
    return png[:ihdr_end] + text + png[ihdr_end:]


def _seed_int(*parts: object) -> int:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _ascii(text: str, limit: int) -> str:
    # Hershey fonts draw ASCII only; everything else becomes '?'.
    cleaned = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return cleaned[:limit]


def _draw_label(
    img: np.ndarray, text: str, center: tuple[int, int], width: int, height: int
) -> None:
    """White text with a dark outline, fitted into width x height around center."""
    font = cv2.FONT_HERSHEY_DUPLEX
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 2)
    scale = max(0.4, min(width / max(tw, 1), height / max(th, 1)))
    thickness = max(1, int(scale * 2))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    org = (int(center[0] - tw / 2), int(center[1] + th / 2))
    cv2.putText(img, text, org, font, scale, (0, 0, 0), thickness + 4, cv2.LINE_AA)
    cv2.putText(img, text, org, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def render_t2i(width: int, height: int, prompt: str, seed: int) -> bytes:
    """A textured, deterministic placeholder for (prompt, seed) with 'EMULATOR' on it."""
    rng = np.random.default_rng(_seed_int(prompt, seed))
    # Separable row/column vectors broadcast to HxW: full-size trig would cost ~1 s.
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    angle = rng.uniform(0, 2 * np.pi)
    t = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(30, 225, size=(2, 3)).astype(np.float32)
    # Soft ripples so the picture has structure at several scales.
    fx, fy = rng.uniform(0.01, 0.05, size=2)
    ripple = 18 * np.sin(fx * xs + rng.uniform(0, 6)) * np.cos(fy * ys)
    img = c0 + (c1 - c0) * t[..., None] + ripple[..., None]
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    side = min(width, height)
    for _ in range(int(rng.integers(6, 12))):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            radius = int(rng.integers(side // 20, side // 5))
            cv2.circle(canvas, (cx, cy), radius, color, -1, cv2.LINE_AA)
        else:
            w, h = (int(v) for v in rng.integers(side // 12, side // 3, size=2))
            cv2.rectangle(canvas, (cx, cy), (cx + w, cy + h), color, -1, cv2.LINE_AA)
    # Fine grain from a small tile: photo-like texture without per-pixel random draws.
    tile = rng.integers(-5, 6, size=(64, 64, 1), dtype=np.int16)
    grain = np.tile(tile, (height // 64 + 1, width // 64 + 1, 3))[:height, :width]
    canvas = np.clip(canvas.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    _draw_label(canvas, "EMULATOR", (width // 2, height // 2), int(width * 0.6), height // 6)
    caption = _ascii(prompt, 48)
    if caption:
        _draw_label(
            canvas, caption, (width // 2, int(height * 0.9)), int(width * 0.8), height // 20
        )
    return encode_png(canvas, {"Prompt": prompt[:200], "Seed": str(seed)})


def render_edit(source: bytes, prompt: str, seed: int, function: str) -> bytes:
    """The source picture, visibly changed, at the source size.

    Region functions tint a rectangle of about a quarter of the picture and label it;
    whole-image functions (stylization_all, colorization, super_resolution) recolour
    everything, so a judge sees them as heavy edits.
    """
    rgb = decode_rgb(source).copy()
    height, width = rgb.shape[:2]
    rng = np.random.default_rng(_seed_int(prompt, seed, function))
    tint = rng.uniform(0, 255, size=3).astype(np.float32)
    if function in WHOLE_IMAGE_FUNCTIONS:
        posterized = (rgb // 48) * 48
        out = 0.5 * posterized.astype(np.float32) + 0.5 * tint
        rgb = np.clip(out, 0, 255).astype(np.uint8)
        _draw_label(rgb, "EDITED", (width // 2, height // 2), int(width * 0.5), height // 8)
    else:
        rw, rh = int(width * 0.5), int(height * 0.5)
        x0 = int(rng.integers(0, width - rw + 1))
        y0 = int(rng.integers(0, height - rh + 1))
        region = rgb[y0 : y0 + rh, x0 : x0 + rw].astype(np.float32)
        rgb[y0 : y0 + rh, x0 : x0 + rw] = np.clip(0.4 * region + 0.6 * tint, 0, 255).astype(
            np.uint8
        )
        _draw_label(rgb, "EDITED", (x0 + rw // 2, y0 + rh // 2), int(rw * 0.7), rh // 4)
    return encode_png(rgb, {"Prompt": prompt[:200], "Function": function})


def corrupt_png(data: bytes) -> bytes:
    """Same length, PNG signature kept, the rest scrambled: decoders must reject it."""
    head = data[:16]
    rng = np.random.default_rng(len(data))
    tail = rng.integers(0, 256, size=max(len(data) - 16, 64), dtype=np.uint8).tobytes()
    return head + tail
