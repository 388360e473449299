"""Shared helpers: task files and images made on the fly (tests never need the real data)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def emulator_get(port: int, path: str = "/_emulator/stats") -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def emulator_process(*args: str, program: list[str] | None = None) -> Iterator[int]:
    """The emulator in a process of its own (so it outlives a killed runner); yields its
    port. ``program`` replaces ``-m runner.emulator`` (e.g. ``-c`` with a patched main)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *(program or ["-m", "runner.emulator"]), "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            emulator_get(port)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the emulator did not start")
            time.sleep(0.1)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
