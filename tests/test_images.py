"""Source preparation and result checks on the image shapes the real data has."""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, png_bytes
from PIL import Image

from runner.images import (
    MAX_SOURCE_PIXELS,
    ImageProblem,
    _DecodeBudget,
    load_rgb,
    open_image,
    open_image_bytes,
    prepare_source,
    result_to_jpeg,
)
from tests.image_helpers import png_bomb


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


# --------------------------------------------------------------------------- the guarded opener

def _orient6(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif.tobytes()


def _marked(size: tuple[int, int] = (800, 600)) -> Image.Image:
    """Red with a blue top-left corner: where the corner lands shows the rotation."""
    img = Image.new("RGB", size, (220, 0, 0))
    img.paste((0, 0, 220), (0, 0, 100, 100))
    return img


def _corner_after_orientation_6(img: Image.Image) -> bool:
    # orientation 6: the stored picture is shown turned 90 degrees clockwise; the stored
    # top-left corner ends up top-right
    px = np.asarray(img)
    return img.size == (600, 800) and px[20, -20, 2] > 150 and px[20, 20, 0] > 150


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied_and_dropped_for_every_format(tmp_path: Path, fmt) -> None:
    path = tmp_path / f"turned.{fmt.lower()}"
    img = _marked()
    img.save(path, fmt, exif=_orient6(img), **({"quality": 95} if fmt == "JPEG" else {}))
    src = prepare_source(path)
    sent = _decode_uri(src.uri)  # re-encoded: the tag is gone, the pixels are upright
    assert _corner_after_orientation_6(sent), fmt
    assert sent.getexif().get(0x0112) in (None, 1)
    assert (src.width, src.height) == (600, 800)
    assert _corner_after_orientation_6(open_image(path))


def test_png_exif_after_the_pixels_is_found_too(tmp_path: Path) -> None:
    """Some writers put eXIf after IDAT, where reading the header does not reach it."""
    buf = io.BytesIO()
    img = _marked()
    img.save(buf, "PNG", exif=_orient6(img))
    data = buf.getvalue()
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos : pos + 12 + length])
        pos += 12 + length
    exif = [c for c in chunks if c[4:8] == b"eXIf"]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    assert exif, "Pillow wrote no eXIf chunk"
    moved = rest[:-1] + exif + rest[-1:]  # just before IEND
    path = tmp_path / "late.png"
    path.write_bytes(data[:8] + b"".join(moved))
    assert _corner_after_orientation_6(_decode_uri(prepare_source(path).uri))


def test_a_truncated_jpeg_is_refused_not_sent(tmp_path: Path) -> None:
    whole = tmp_path / "whole.jpg"
    Image.effect_noise((1024, 768), 60).convert("RGB").save(whole, "JPEG", quality=90)
    data = whole.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])  # within bounds, RGB: the old fast path sent it
    with pytest.raises(ImageProblem, match=r"cut.jpg: unreadable image \(truncated"):
        prepare_source(cut)
    assert prepare_source(whole).uri.startswith("data:image/jpeg;base64,")  # sent as is
    assert base64.b64decode(prepare_source(whole).uri.split(",", 1)[1]) == data


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png", 15000)  # 225 Mpx, a few hundred KB
    assert bomb.stat().st_size < 2_000_000 and 15000 * 15000 > MAX_SOURCE_PIXELS
    for call in (prepare_source, open_image, lambda p: load_rgb(p, max_side=512)):
        with pytest.raises(ImageProblem, match="15000x15000 is too large to decode safely"):
            call(bomb)
    with pytest.raises(ImageProblem, match="too large to decode safely"):
        result_to_jpeg(bomb.read_bytes())


def test_only_in_process_raster_decoders(tmp_path: Path) -> None:
    """EPS would run Ghostscript: whatever its name, it is not an image to us."""
    eps = tmp_path / "x.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 600 600\nshowpage\n")
    with pytest.raises(ImageProblem, match="not an image file"):
        open_image(eps)


def test_an_rgb_array_and_max_side(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (2000, 1000), (255, 0, 0)).save(path)
    arr = load_rgb(path)
    assert arr.shape == (1000, 2000, 3) and arr.flags["C_CONTIGUOUS"]
    assert tuple(arr[0, 0]) == (255, 0, 0)
    small = load_rgb(path, max_side=300)
    assert small.shape == (150, 300, 3)
    tiny = Image.new("RGB", (100, 50))
    assert open_image_bytes(png_bytes((100, 50)), max_side=300).size == tiny.size  # never up


def test_large_jpeg_decodes_at_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.linear_gradient("L").resize((8000, 6000)).save(path, quality=80)
    img = open_image(path, max_side=1000)
    assert img.size == (1000, 750) and img.mode == "RGB"


def test_decode_budget_bounds_bytes_in_flight() -> None:
    budget = _DecodeBudget(100)
    inside: list[int] = []
    seen: list[list[int]] = []
    lock = threading.Lock()

    def decode(n: int) -> None:
        with budget.hold(n):
            with lock:
                inside.append(n)
                seen.append(sorted(inside))
            time.sleep(0.02)
            with lock:
                inside.remove(n)

    threads = [threading.Thread(target=decode, args=(n,)) for n in (60, 60, 60, 30, 500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads) and len(seen) == 5
    # never over the cap together; an image larger than the cap decodes, alone
    assert all(sum(s) <= 100 or s == [500] for s in seen), seen
    assert budget.used == 0


_PEAK_SCRIPT = """
import resource, sys
from pathlib import Path
from runner.images import ImageProblem, load_rgb, prepare_source
from runner.outputs.thumbs import _make_thumb
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
bomb = Path(sys.argv[1])
for call in (prepare_source, lambda p: load_rgb(p, max_side=640)):
    try:
        call(bomb)
        print("decoded!")
    except ImageProblem as exc:
        pass
print("thumb", _make_thumb(bomb, bomb.with_name("thumb.jpg")))
print("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def test_a_bomb_through_the_report_and_face_swap_openers_costs_no_memory(tmp_path: Path) -> None:
    """The issue's 20000x20000 PNG: 3.2 GB through the thumbnailer before. Now refused from
    its header: the process grows by less than one decoded row band."""
    bomb = png_bomb(tmp_path / "bomb.png", 20000)
    res = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(bomb)],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "decoded!" not in res.stdout and "thumb None" in res.stdout
    grew_kb = int(res.stdout.split("grew_kb")[1])
    assert grew_kb < 64 * 1024, res.stdout  # a decode would be 400 MB (L) or 1.2 GB (RGB)
    assert not (tmp_path / "thumb.jpg").exists()


def test_thumbnail_temp_files_are_named_for_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import runner.outputs.thumbs as report
    from runner.store.files import TEMP_MARK, sweep_temp

    src = make_image(tmp_path / "src.png", (640, 480))
    thumbs = tmp_path / "out" / "thumbs"
    names: list[str] = []

    def full_disk(a: Path, b: Path) -> None:
        names.append(Path(a).name)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report.os, "replace", full_disk)
    assert report._make_thumb(src, thumbs / "a.jpg") is None
    assert names and names[0].startswith(".a.jpg" + TEMP_MARK)
    assert [p.name for p in thumbs.iterdir()] == []  # the failed write removed its temp file

    def killed(a: Path, b: Path) -> None:  # a kill between write and rename: sweep's job
        raise KeyboardInterrupt

    monkeypatch.setattr(report.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        report._make_thumb(src, thumbs / "b.jpg")
    assert len(list(thumbs.iterdir())) == 1
    assert sweep_temp(tmp_path / "out") == 1 and list(thumbs.iterdir()) == []
    monkeypatch.undo()
    assert report._make_thumb(src, thumbs / "c.jpg") == (160, 120)
