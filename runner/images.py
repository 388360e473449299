"""Image handling on both sides of the API: sources in, results out.

Everything here is blocking CPU work; the scheduler calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel

API_MIN_SIDE = 512
API_MAX_SIDE = 4096
# what every edit model takes: qwen-image-edit 384-3072 px a side, wanx2.1-imageedit 512-4096
EDIT_MAX_SIDE = 3072
MIN_USABLE_SIDE = 16  # below this a picture has nothing an edit could keep
MAX_SOURCE_PIXELS = 200_000_000  # 10000x10000 sources are real; a decompression bomb is not
DATA_URI_MAX_BYTES = 7 * 1024 * 1024
# Decoded pixels in flight across decode threads (one 14000x14000 RGB PNG is 588 MB).
DECODE_BUDGET_BYTES = 1 << 30
# Raster formats with in-process decoders only: never EPS/PDF (Ghostscript) or other plugins.
SAFE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO

# Pillow's own guard as a second line (it refuses at twice the limit); ours is exact, so its
# warning between the two would only repeat what ImageProblem already says.
Image.MAX_IMAGE_PIXELS = MAX_SOURCE_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow allocates a large image in blocks. Blocks above glibc's largest mmap threshold (32 MB)
# are mmapped and go back to the system when freed; the default 16 MB blocks stay resident in
# the malloc arena of the thread that decoded (12 rows of a 14000 px PNG peaked at 9 GB).
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(64 << 20)


class ImageProblem(ValueError):
    """The image cannot be used; the message says why, for the row's report."""


class PreparedSource(BaseModel):
    """A source image ready to send: a data URI (or URL) and what was done to it."""

    uri: str
    width: int
    height: int
    original_size: tuple[int, int]
    resized: bool
    note: str = ""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (RGBA, P, LA, CMYK, 16-bit grey, float) to 8-bit RGB, alpha on white."""
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        # integer shift, not floats: a 200 Mpx 16-bit picture stays at 2 bytes a pixel
        arr16 = np.asarray(img)
        shift = 8 if arr16.size and int(arr16.max()) > 255 else 0
        return Image.fromarray((arr16 >> shift).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0) if mode != "F" else 255.0 / max(hi, 1e-9)
        arr8 = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if mode != "RGB":
        return img.convert("RGB")
    return img


def _decoded_bytes(img: Image.Image) -> int:
    """What a full decode of ``img`` at its (drafted) size allocates, in bytes."""
    # Pillow keeps every multi-band mode in 4 bytes a pixel (RGB as RGBX)
    per_pixel = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
    return img.width * img.height * per_pixel.get(img.mode, 4)


class _DecodeBudget:
    """Bytes of decoded pixels in flight across threads: twelve rows of a large source decode
    one or two at a time instead of all at once. A single image above the cap still decodes,
    alone."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        n = min(nbytes, self.cap)
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.cap)
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


DECODE_BUDGET = _DecodeBudget(DECODE_BUDGET_BYTES)


def _problem(name: str, exc: BaseException) -> ImageProblem:
    text = str(exc)
    if "truncated" in text:
        return ImageProblem(f"{name}: unreadable image (truncated: the file ends too early)")
    return ImageProblem(f"{name}: unreadable image ({text})")


def _decode(
    source: Path | bytes, name: str, max_side: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    """The one guarded decode of untrusted bytes: the format is sniffed (never the name),
    only raster formats whose decoders are in-process are accepted, the pixel count is checked
    from the header before any pixel is decoded, JPEGs decode scaled down by libjpeg when
    ``max_side`` allows, the rest decode inside the shared byte budget and are reduced at
    once. Gives RGB, upright (EXIF orientation applied for every format), and the header size.
    """
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(fp, formats=SAFE_FORMATS) as img:
            w, h = img.size
            if w * h > MAX_SOURCE_PIXELS:
                raise ImageProblem(
                    f"{name}: {w}x{h} is too large to decode safely "
                    f"(over {MAX_SOURCE_PIXELS // 1_000_000} Mpx)"
                )
            if w < 1 or h < 1:
                raise ImageProblem(f"{name}: image has no pixels ({w}x{h})")
            if max_side and max(w, h) > max_side and img.format in ("JPEG", "MPO"):
                s = max_side / max(w, h)
                img.draft(img.mode, (max(1, math.ceil(w * s)), max(1, math.ceil(h * s))))
            with DECODE_BUDGET.hold(_decoded_bytes(img)):
                img.load()
                work: Image.Image = img
                if max_side and max(work.size) >= 2 * max_side:
                    # integer box reduce first: bounded and fast; Lanczos finishes below
                    work = work.reduce(max(work.size) // max_side)
                rgb = to_rgb(work)
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem(f"{name}: not an image file") from None
    except Image.DecompressionBombError:
        raise ImageProblem(f"{name}: image too large to decode safely") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise _problem(name, exc) from None
    except MemoryError:
        raise ImageProblem(f"{name}: image too large to decode here") from None
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=None)
    return rgb, (w, h)


def open_image(path: Path, *, max_side: int | None = None) -> Image.Image:
    """Decode an untrusted image file, whatever its extension claims, as upright 8-bit RGB.

    The one guarded opener: every decode of a file the runner did not write goes through it.
    ``max_side``: the result is scaled down (never up) to at most this many pixels a side,
    decoding at a reduced scale where the format allows. Raises ImageProblem with one line.
    """
    return _decode(Path(path), Path(path).name, max_side)[0]


def open_image_bytes(
    data: bytes, *, name: str = "image", max_side: int | None = None
) -> Image.Image:
    """``open_image`` for bytes in memory (a downloaded body)."""
    return _decode(data, name, max_side)[0]


def load_rgb(path: Path, *, max_side: int | None = None) -> np.ndarray:
    """``open_image`` as a contiguous HxWx3 uint8 RGB array."""
    return np.ascontiguousarray(np.asarray(open_image(path, max_side=max_side), np.uint8))


def fit_api_bounds(
    img: Image.Image, lo: int = API_MIN_SIDE, hi: int = API_MAX_SIDE
) -> tuple[Image.Image, bool]:
    """Scale so that every side lies in [lo, hi], keeping the aspect ratio."""
    w, h = img.size
    if min(w, h) < MIN_USABLE_SIDE:
        raise ImageProblem(f"image is {w}x{h}; too small to edit (under {MIN_USABLE_SIDE} px)")
    if max(w, h) / min(w, h) > hi / lo:
        raise ImageProblem(
            f"image is {w}x{h}; its aspect ratio cannot fit the API's {lo}-{hi} px per side"
        )
    scale = 1.0
    if max(w, h) > hi:
        scale = hi / max(w, h)
    if min(w, h) * scale < lo:
        scale = lo / min(w, h)
    if scale == 1.0:
        return img, False
    nw = min(hi, max(lo, round(w * scale)))
    nh = min(hi, max(lo, round(h * scale)))
    return img.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0), True


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    """JPEG through OpenCV, which releases the GIL while it encodes. Pillow's JPEG encoder
    holds it, so an encode in a worker thread stalls the event loop for its whole length.
    libjpeg's quality and subsampling are Pillow's, so the bytes are the same."""
    arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    sampling = (
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444
        if quality >= 90
        else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420
    )
    ok, buf = cv2.imencode(
        ".jpg",
        cv2.cvtColor(arr, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling],
    )
    if not ok:
        raise ImageProblem("JPEG encoding failed")
    return buf.tobytes()


def _proven(path: Path) -> tuple[str, str, tuple[int, int], int] | None:
    """(format, mode, size, EXIF orientation) of a file proven whole, cheaply: a PNG's chunk
    checksums verified to IEND, a JPEG decoded to its last scan at 1/8 scale (a truncated
    one fails here). None: anything else or anything odd; the full decode says what."""
    try:
        with Image.open(path, formats=("PNG", "JPEG")) as img:
            fmt, mode, (w, h) = img.format, img.mode, img.size
            if w * h > MAX_SOURCE_PIXELS:
                return None
            if fmt == "PNG":
                img.verify()
            else:
                img.draft(mode, (max(1, w // 8), max(1, h // 8)))
                img.load()
        with Image.open(path, formats=("PNG", "JPEG")) as img:
            if fmt == "JPEG" or "exif" in img.info or "Raw profile type exif" in img.info:
                orientation = int(img.getexif().get(0x0112, 1))
            else:
                # a PNG's eXIf may follow its pixels, where only a decode would find it
                orientation = 0 if b"eXIf" in path.read_bytes() else 1
    except Exception:  # anything odd: the full path reports it properly
        return None
    return str(fmt), mode, (w, h), orientation


def _as_is(path: Path, url: str | None) -> PreparedSource | None:
    """An upright RGB PNG or JPEG, proven whole and already within both edit models' bounds,
    goes as it is: no re-encode. None: it needs the full path."""
    proven = _proven(path)
    if proven is None:
        return None
    fmt, mode, (w, h), orientation = proven
    if mode != "RGB" or orientation != 1:
        return None
    if not (API_MIN_SIDE <= min(w, h) and max(w, h) <= EDIT_MAX_SIDE):
        return None
    if url:
        return PreparedSource(uri=url, width=w, height=h, original_size=(w, h), resized=False)
    data = path.read_bytes()
    if len(data) > DATA_URI_MAX_BYTES:
        return None
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    uri = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    return PreparedSource(uri=uri, width=w, height=h, original_size=(w, h), resized=False)


def prepare_source(path: Path, *, url: str | None = None, quality: int = 95) -> PreparedSource:
    """Read a source, make it RGB within the API's bounds, and give it as a data URI.

    ``url``: a public address of the same file; used as is when the file needs no change.
    """
    quick = _as_is(path, url)
    if quick is not None:
        return quick
    img, original = _decode(path, path.name, EDIT_MAX_SIDE)
    fitted, resized = fit_api_bounds(img, hi=EDIT_MAX_SIDE)
    resized = resized or img.size != original
    note = (
        f"resized {original[0]}x{original[1]} -> {fitted.width}x{fitted.height}" if resized else ""
    )
    if url and not resized:
        return PreparedSource(
            uri=url, width=img.width, height=img.height, original_size=original, resized=False
        )
    data = encode_jpeg(fitted, quality)
    q = quality
    while len(data) > DATA_URI_MAX_BYTES and q > 60:
        q -= 10
        data = encode_jpeg(fitted, q)
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    return PreparedSource(
        uri=uri,
        width=fitted.width,
        height=fitted.height,
        original_size=original,
        resized=resized,
        note=note,
    )


def result_to_jpeg(data: bytes, quality: int = 95) -> tuple[bytes, int, int]:
    """Prove a downloaded body is a whole image and re-encode it as RGB JPEG."""
    if not data:
        raise ImageProblem("empty result body")
    try:
        with Image.open(io.BytesIO(data), formats=SAFE_FORMATS) as probe:
            probe.verify()  # catches corrupt chunks and bad checksums
    except UnidentifiedImageError:
        head = data[:40].decode("latin-1", "replace").strip()
        raise ImageProblem(f"result is not an image (starts {head!r})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageProblem(f"result image is damaged ({exc})") from None
    except Image.DecompressionBombError:
        raise ImageProblem("result image is too large to decode safely") from None
    try:
        rgb = open_image_bytes(data, name="result")  # the guarded decode finds truncation
    except ImageProblem as exc:
        raise ImageProblem(f"result image is damaged ({exc})") from None
    return encode_jpeg(rgb, quality), rgb.width, rgb.height


def placeholder_jpeg(size: tuple[int, int] = (1024, 1024), quality: int = 90) -> bytes:
    """A neutral mid-grey picture: the fallback for a t2i row with no result."""
    img = Image.new("RGB", size, (128, 128, 128))
    return encode_jpeg(img, quality)


def image_size(path: Path) -> tuple[int, int] | None:
    """The header's size, no decode; None: not an image this module would open."""
    try:
        with Image.open(path, formats=SAFE_FORMATS) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None
