"""Source preparation and result checks on the image shapes the real data has."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, png_bytes
from PIL import Image

from runner.images import ImageProblem, prepare_source, result_to_jpeg


def _decode_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


@pytest.mark.parametrize(
    ("size", "mode", "fmt", "expect"),
    [
        ((300, 200), "RGB", "PNG", (768, 512)),  # below 512: scaled up
        ((5000, 3300), "RGB", "JPEG", (3072, 2028)),  # above 3072: scaled down (row 527)
        ((800, 600), "RGBA", "PNG", (800, 600)),
        ((800, 600), "CMYK", "JPEG", (800, 600)),
        ((700, 700), "P", "PNG", (700, 700)),
        ((600, 600), "L", "PNG", (600, 600)),
    ],
)
def test_sources_become_rgb_within_bounds(tmp_path: Path, size, mode, fmt, expect) -> None:
    path = make_image(tmp_path / "x.jpg", size, mode, fmt)  # named .jpg whatever it holds
    src = prepare_source(path)
    img = _decode_uri(src.uri)
    assert img.mode == "RGB" and img.size == expect
    assert (src.width, src.height) == expect and src.original_size == size


def test_sixteen_bit_png(tmp_path: Path) -> None:
    arr = (np.linspace(0, 65535, 600 * 600).reshape(600, 600)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    img = _decode_uri(prepare_source(path).uri)
    px = np.asarray(img)
    assert img.mode == "RGB" and px.max() > 200 and px.min() < 20  # scaled, not clipped


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGBA", (600, 600), (0, 0, 0, 0)).save(path)
    px = np.asarray(_decode_uri(prepare_source(path).uri))
    assert px.mean() > 250


@pytest.mark.parametrize(
    ("maker", "message"),
    [
        (lambda p: make_image(p, (1, 1)), "too small"),
        (lambda p: make_image(p, (6000, 100)), "aspect ratio"),
        (lambda p: p.write_bytes(b"%PDF-1.4 not an image"), "not an image"),
        (lambda p: p.write_bytes(png_bytes((600, 600))[:200]), "unreadable"),
    ],
)
def test_unusable_sources_say_why(tmp_path: Path, maker, message: str) -> None:
    path = tmp_path / "bad.jpg"
    maker(path)
    with pytest.raises(ImageProblem, match=message):
        prepare_source(path)


def test_huge_source_is_scaled(tmp_path: Path) -> None:
    path = make_image(tmp_path / "big.jpg", (10000, 10000), fmt="JPEG")
    src = prepare_source(path)
    assert (src.width, src.height) == (3072, 3072) and src.resized


def test_url_used_when_no_change_needed(tmp_path: Path) -> None:
    path = make_image(tmp_path / "ok.png", (800, 600))
    assert prepare_source(path, url="http://mirror/ok.png").uri == "http://mirror/ok.png"
    small = make_image(tmp_path / "small.png", (100, 100))
    assert prepare_source(small, url="http://mirror/small.png").uri.startswith("data:")


def test_results_checked_and_converted() -> None:
    jpeg, w, h = result_to_jpeg(png_bytes((64, 48)))
    assert jpeg[:3] == b"\xff\xd8\xff" and (w, h) == (64, 48)
    with pytest.raises(ImageProblem, match="not an image"):
        result_to_jpeg(b"<html>expired</html>")
    with pytest.raises(ImageProblem, match="damaged"):
        result_to_jpeg(png_bytes((640, 480))[:300])
    with pytest.raises(ImageProblem, match="empty"):
        result_to_jpeg(b"")
