"""Shared helpers: task files and images made on the fly (tests never need the real data)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HEADER = ["index", "task_type", "prompt", "ori_image", "target_image"]


def make_image(
    path: Path, size: tuple[int, int] = (640, 480), mode: str = "RGB", fmt: str = "PNG"
) -> Path:
    """A textured picture (not flat), so decoders and judges see real content."""
    w, h = size
    if w * h > 4_000_000:  # big pictures: a cheap gradient, noise would dominate test time
        img = Image.linear_gradient("L").resize(size).convert(mode if mode != "P" else "RGB")
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, fmt)
        return path
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 256)], -1
    )
    noise = rng.integers(0, 30, size=(h, w, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def png_bytes(
    size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 80, 40)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def write_tasks(
    path: Path,
    rows: Iterable[Iterable[str]],
    *,
    header: list[str] | None = HEADER,
    bom: bool = True,
    encoding: str = "utf-8",
) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header is not None:
        w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode(encoding)
    if bom and encoding == "utf-8":
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(data)
    return path


@pytest.fixture
def job(tmp_path: Path) -> Callable[..., Path]:
    """job(rows) -> task.csv in tmp_path, with images created for every named file."""

    def make(rows: list[tuple[str, ...]], img_size: tuple[int, int] = (640, 480)) -> Path:
        imgs = tmp_path / "imgs"
        imgs.mkdir(exist_ok=True)
        for row in rows:
            for name in row[3:5]:
                if name and not (imgs / name).exists() and "/" not in name:
                    make_image(imgs / name, img_size)
        return write_tasks(tmp_path / "task.csv", rows)

    return make
