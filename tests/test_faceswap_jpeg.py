"""Deepfake outputs are saved the way their source was: its quantization tables and chroma
subsampling, read from the header; the IJG quality they stand for is estimated."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from runner.backends.faceswap import jpeg


def photo(seed: int = 0) -> np.ndarray:
    """Something with texture and colour edges (a flat picture quantizes to nothing)."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (12, 12, 3)), np.ones((16, 16, 1)))
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("quality", [50, 62, 75, 85, 92, 95, 100])
def test_quality_estimated_from_tables(tmp_path: Path, quality: int) -> None:
    path = tmp_path / "src.jpg"
    Image.fromarray(photo()).save(path, quality=quality)
    style = jpeg.source_style(path, default_quality=70)
    assert style.source == "jpeg"
    assert style.quality == quality


@pytest.mark.parametrize(("subsampling", "name"), [(0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")])
def test_output_has_the_source_tables_and_subsampling(tmp_path: Path, subsampling: int,
                                                      name: str) -> None:
    path = tmp_path / "src.jpg"
    Image.fromarray(photo(1)).save(path, quality=88, subsampling=subsampling)
    style = jpeg.source_style(path, default_quality=95)
    assert style.describe() == {"quality": 88, "subsampling": name, "from": "jpeg"}
    data = jpeg.encode(photo(2), style)
    with Image.open(path) as src, Image.open(io.BytesIO(data)) as out:
        assert JpegImagePlugin.get_sampling(out) == subsampling
        assert {k: list(v) for k, v in out.quantization.items()} == {
            k: list(v) for k, v in src.quantization.items()}


def test_custom_tables_are_copied_not_rounded_to_a_quality(tmp_path: Path) -> None:
    """A camera's own tables are no IJG quality: the output still gets exactly them."""
    tables = [[3 + (i % 7) for i in range(64)], [5 + (i % 11) for i in range(64)]]
    path = tmp_path / "camera.jpg"
    Image.fromarray(photo(3)).save(path, qtables=tables, subsampling=2)
    style = jpeg.source_style(path, default_quality=95)
    with Image.open(io.BytesIO(jpeg.encode(photo(4), style))) as out:
        assert [list(out.quantization[k]) for k in sorted(out.quantization)] == tables


def test_non_jpeg_sources_get_the_default(tmp_path: Path) -> None:
    png = tmp_path / "src.png"
    Image.fromarray(photo()).save(png)
    style = jpeg.source_style(png, default_quality=93)
    assert (style.quality, style.subsampling, style.source) == (93, 2, "default")
    assert jpeg.decode(jpeg.encode(photo(), style)).shape == (192, 192, 3)


def test_greyscale_source_gives_a_greyscale_output_with_its_table(tmp_path: Path) -> None:
    """ori's colour mode is kept: a greyscale JPEG (one table, no chroma) gives one too,
    whatever colours the array to save has."""
    grey = tmp_path / "grey.jpg"
    Image.fromarray(photo()[..., 0]).save(grey, quality=80)
    g = jpeg.source_style(grey, default_quality=95)
    assert (g.quality, g.mode, g.describe()["mode"]) == (80, "L", "L")
    data = jpeg.save_like_source(photo(), g)
    with Image.open(io.BytesIO(data)) as out, Image.open(grey) as src:
        assert out.mode == "L"
        assert list(out.quantization[0]) == list(src.quantization[0])
    assert jpeg.decode(data).shape == (192, 192, 3)


def test_unreadable_source_falls_back_quietly(tmp_path: Path) -> None:
    """The header read never fails the row: the decoder reports a bad file, not this."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    assert jpeg.source_style(bad, default_quality=90).source == "default"
    assert jpeg.source_style(tmp_path / "absent.jpg", default_quality=90).quality == 90


def test_settle_is_nearly_idempotent_on_a_decoded_source(tmp_path: Path) -> None:
    """ori's pixels, already through the source's quantizer, barely move in the settling
    round trip; fresh pixels move more (that is the history the new face gets)."""
    path = tmp_path / "src.jpg"
    Image.fromarray(photo(5)).save(path, quality=90, subsampling=2)
    style = jpeg.source_style(path, default_quality=95)
    decoded = jpeg.decode(path.read_bytes())
    fresh = photo(6)
    moved_old = np.abs(jpeg.settle(decoded, style).astype(int) - decoded).mean()
    moved_new = np.abs(jpeg.settle(fresh, style).astype(int) - fresh).mean()
    assert moved_old < 0.5 * moved_new, (moved_old, moved_new)


def round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=2)
    return jpeg.decode(buf.getvalue())


@pytest.mark.parametrize("earlier", [None, 60, 75, 80])
def test_an_earlier_compression_is_read_from_the_pixels(earlier: int | None) -> None:
    """A picture saved at ``earlier`` and again at 95 still dips at ``earlier`` when
    re-saved; one saved only at 95 has no dip."""
    once = photo(7) if earlier is None else round_trip(photo(7), earlier)
    assert jpeg.earlier_quality(round_trip(once, 95), 95) == earlier
    style = jpeg.with_history(jpeg.JpegStyle(quality=95), round_trip(once, 95))
    assert style.earlier == earlier
    assert style.describe().get("earlier_quality") == earlier


def test_the_new_face_goes_through_the_earlier_compression() -> None:
    """ori saved at 80 then 95: the pixels the swap changed (whole 8x8 blocks) are sent
    through quality 80 before the final save, so they dip at 80 as ori's do; the rest of
    the picture is left as it was. Without an earlier compression nothing changes."""
    ori = round_trip(round_trip(photo(8), 80), 95)
    out = ori.copy()
    out[50:139, 45:141] = photo(9)[50:139, 45:141]  # fresh pixels, no history
    style = jpeg.JpegStyle(quality=95, earlier=80)
    passed = jpeg.through_earlier(out, style, ori)
    blocks = np.zeros(ori.shape[:2], dtype=bool)
    blocks[48:144, 40:144] = True  # the 8x8 blocks the change touches
    assert np.array_equal(passed[~blocks], out[~blocks])
    assert not np.array_equal(passed[blocks], out[blocks])
    region = np.s_[48:144, 48:144]
    assert jpeg.earlier_quality(out[region], 95) is None
    assert jpeg.earlier_quality(passed[region], 95) == 80
    assert np.array_equal(jpeg.through_earlier(out, jpeg.JpegStyle(quality=95), ori), out)
    saved = jpeg.decode(jpeg.save_like_source(out, style, ori))
    assert jpeg.earlier_quality(saved[region], 95) == 80
