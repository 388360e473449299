"""Save a deepfake output the way its source was saved.

A face pasted into a photo and saved with other JPEG settings than the photo (another
quality, 4:4:4 where the photo was 4:2:0) carries a compression history of its own, which a
JPEG-ghost test finds (issue 14: AUC 0.986 under q95 4:4:4 for q95 4:2:0 sources). So the
output is saved with the source's own quantization tables and chroma subsampling, read from
its header (no pixel is decoded here), and the quality those tables correspond to is
estimated for the record. A greyscale JPEG source gives a greyscale JPEG with its one
table (the output keeps ori's colour mode, and its compression history). A source that is
not a JPEG gets the configured quality at 4:2:0, the web's usual setting.

A photo may have been compressed before its last save (a news photo saved at 80, then again
at 95): its pixels still carry that first quantizer, and the face pasted into it does not,
which the JPEG-ghost test also finds (the curve of a region's change under re-compression
dips at the earlier quality). That earlier quality is read from ori's pixels
(``earlier_quality``), and the pixels the swap changed go through it once before the
settling round trip.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

# The IJG (libjpeg) base luminance table, natural order: quality q scales it by
# 5000 / q (q < 50) or 200 - 2q percent.
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.int64)
SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
DEFAULT_SUBSAMPLING = 2  # 4:2:0
# The earlier compression: re-saving a crop of ori's lightness at each quality of
# EARLIER_RANGE, the change at one quality under EARLIER_DIP of the mean change
# EARLIER_STEP qualities either side of it is a dip, the quality an earlier save used.
EARLIER_RANGE = range(30, 95)
EARLIER_STEP = 4
EARLIER_DIP = 0.5
EARLIER_CROP = 192  # pixels, a multiple of 16 (the JPEG grid at 4:2:0)
EARLIER_MARGIN = 5  # an earlier quality this near the last save's is not told apart from it


def ijg_table(quality: int) -> np.ndarray:
    q = min(100, max(1, quality))
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((IJG_LUMA * scale + 50) // 100, 1, 255)


def estimate_quality(luma_table: list[int] | np.ndarray) -> int:
    """The IJG quality whose luminance table is closest to ``luma_table`` (natural order)."""
    table = np.asarray(luma_table, dtype=np.int64).ravel()
    if table.size != 64:
        raise ValueError(f"a quantization table has 64 entries, not {table.size}")
    errors = [int(np.abs(ijg_table(q) - table).sum()) for q in range(1, 101)]
    return 1 + int(np.argmin(errors))


@dataclass(frozen=True)
class JpegStyle:
    """How to save: the source's tables when it had usable ones, else a quality."""

    quality: int
    subsampling: int = DEFAULT_SUBSAMPLING
    qtables: list[list[int]] | None = field(default=None, compare=False)
    source: str = "default"  # "jpeg" when read from the source's header
    mode: str = "RGB"  # "L": a greyscale JPEG, its one table
    earlier: int | None = None  # the quality of a compression before the last, if any

    def describe(self) -> dict[str, object]:
        said: dict[str, object] = {"quality": self.quality, "subsampling": SUBSAMPLING_NAMES.get(
            self.subsampling, str(self.subsampling)), "from": self.source}
        if self.mode != "RGB":
            said["mode"] = self.mode
        if self.earlier is not None:
            said["earlier_quality"] = self.earlier
        return said


def source_style(path: str | Path, default_quality: int) -> JpegStyle:
    """The JPEG settings of the file at ``path`` (header only), or the default ones."""
    fallback = JpegStyle(quality=default_quality)
    try:
        with Image.open(path) as img:
            if img.format != "JPEG":
                return fallback
            tables = getattr(img, "quantization", None) or {}
            sampling = JpegImagePlugin.get_sampling(img)
            grey = img.mode == "L"
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return fallback  # the decoder proper reports an unreadable file
    luma = tables.get(0)
    if luma is None or len(luma) != 64:
        return fallback
    quality = estimate_quality(luma)
    if grey:  # one table, no chroma: the output is greyscale too
        return JpegStyle(quality=quality, qtables=[list(luma)], source="jpeg", mode="L")
    # Anything but the usual two or three tables: the quality stands in for them.
    usable = [list(tables[k]) for k in sorted(tables)]
    qtables = usable if len(usable) in (2, 3) and all(len(t) == 64 for t in usable) else None
    subsampling = sampling if sampling in SUBSAMPLING_NAMES else DEFAULT_SUBSAMPLING
    return JpegStyle(quality=quality, subsampling=subsampling, qtables=qtables, source="jpeg")


def _resaved(grey: Image.Image, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    grey.save(buf, "JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        return np.asarray(img, dtype=np.float32)


def earlier_quality(rgb: np.ndarray, last: int) -> int | None:
    """The IJG quality of a compression ``rgb`` went through before its last save (at
    ``last``), or None when its pixels show none: a crop of its lightness on the JPEG grid
    is re-saved at every quality of EARLIER_RANGE, and one whose change dips under
    EARLIER_DIP of its neighbours' is taken."""
    h, w = rgb.shape[:2]
    side = min(EARLIER_CROP, h // 16 * 16, w // 16 * 16)
    if side < 16:
        return None
    top, left = (h - side) // 32 * 16, (w - side) // 32 * 16
    grey = Image.fromarray(np.ascontiguousarray(rgb[top : top + side, left : left + side])
                           ).convert("L")
    base = np.asarray(grey, dtype=np.float32)
    qualities = [q for q in EARLIER_RANGE if q <= last - EARLIER_MARGIN]
    change = {q: float(((_resaved(grey, q) - base) ** 2).mean()) for q in qualities}
    best: tuple[float, int] | None = None
    for q in qualities:
        below, above = change.get(q - EARLIER_STEP), change.get(q + EARLIER_STEP)
        if below is None or above is None:
            continue
        ratio = change[q] / max((below + above) / 2, 1e-6)
        if best is None or ratio < best[0]:
            best = (ratio, q)
    return best[1] if best is not None and best[0] < EARLIER_DIP else None


def with_history(style: JpegStyle, ori: np.ndarray) -> JpegStyle:
    """``style`` with the earlier compression ori's pixels show (``earlier_quality``)."""
    return replace(style, earlier=earlier_quality(ori, style.quality))


def encode(rgb: np.ndarray, style: JpegStyle) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(rgb)
    if style.mode == "L":
        img = img.convert("L")
    if style.qtables is not None:
        img.save(buf, "JPEG", qtables=style.qtables, subsampling=style.subsampling,
                 optimize=False)
    else:
        img.save(buf, "JPEG", quality=style.quality, subsampling=style.subsampling,
                 optimize=False)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def settle(rgb: np.ndarray, style: JpegStyle) -> np.ndarray:
    """One round trip through the source's settings before the final save.

    ori's pixels were already decoded from such a JPEG, so for them the round trip changes
    almost nothing; the new face gets the same one compression behind it, and after the
    final save both have been through the same quantizer twice.
    """
    return decode(encode(rgb, style))


def through_earlier(rgb: np.ndarray, style: JpegStyle, ori: np.ndarray) -> np.ndarray:
    """The pixels that differ from ``ori`` (and the rest of their 8x8 blocks) sent through
    the earlier compression ori's pixels went through; ``rgb`` itself when there was none."""
    if style.earlier is None or rgb.shape != ori.shape:
        return rgb
    touched = np.any(rgb != ori, axis=2)
    if not touched.any():
        return rgb
    h, w = touched.shape
    hb, wb = h // 8 * 8, w // 8 * 8
    if hb and wb:  # whole blocks; a strip narrower than a block at the edge, pixel by pixel
        blocks = touched[:hb, :wb].reshape(hb // 8, 8, wb // 8, 8).any(axis=(1, 3))
        touched[:hb, :wb] = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)
    buf = io.BytesIO()
    img = Image.fromarray(rgb)
    if style.mode == "L":
        img = img.convert("L")
    img.save(buf, "JPEG", quality=style.earlier, subsampling=style.subsampling)
    again = decode(buf.getvalue())
    return np.where(touched[..., None], again, rgb)


def save_like_source(rgb: np.ndarray, style: JpegStyle, ori: np.ndarray | None = None) -> bytes:
    """The output as JPEG bytes saved as ori was: what the swap changed first through ori's
    earlier compression (``through_earlier``, with ``ori``), then one settling round trip
    and the final save, so face and background share one compression history."""
    if ori is not None:
        rgb = through_earlier(rgb, style, ori)
    return encode(settle(rgb, style), style)
