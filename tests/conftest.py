"""Shared helpers: task files and images made on the fly (tests never need the real data)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
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


# --------------------------------------------------------------------------- paid once

ROW_TAG = re.compile(r"tag(\d+)x")
# closes that mean the service gave nothing for the money (or misbehaved: more images than
# asked): a new request is legitimate. A task still running is never closed, so "timed out"
# is no reason; an uncertain request paid again is counted by the tests that allow it.
_LEGIT_CLOSE = ("FAILED", "UNKNOWN", "CANCELED", "succeeded without", "result", "answered")


def row_prompt(index: int | str, text: str = "a lighthouse at dusk") -> str:
    """A prompt that names its row, so the service's billing ledger can be read per row."""
    return f"{text} tag{index}x"


def billed_per_row(billed: Iterable[dict[str, Any]]) -> Counter[str]:
    """Requests the account paid for, per row (rows told apart by their prompt's tag)."""
    out: Counter[str] = Counter()
    for entry in billed:
        m = ROW_TAG.search(str(entry.get("prompt", "")))
        out[m.group(1) if m else "?"] += 1
    return out


def images_per_row(billed: Iterable[dict[str, Any]]) -> Counter[str]:
    """Images the account paid for, per row: what each request made (failed images are not
    billed), or what it asked for while that is not settled."""
    out: Counter[str] = Counter()
    for entry in billed:
        m = ROW_TAG.search(str(entry.get("prompt", "")))
        images = entry.get("images")
        out[m.group(1) if m else "?"] += int(entry["n"] if images is None else images)
    return out


def paid_twice(journal: Path, billed: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Rows the service billed more often than the journal can justify: for each row, the
    paid requests beyond one, less those the journal closed because the service gave
    nothing for them (FAILED, expired, timed out). Empty when everything was paid once."""
    from runner.store.journal import JOURNAL_NAME

    path = journal if journal.name.endswith(".jsonl") else journal / JOURNAL_NAME
    legit: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("ev") == "task_closed" and str(rec.get("why", "")).startswith(_LEGIT_CLOSE):
            legit[str(rec.get("index"))] += 1
    paid = billed_per_row(billed)
    extra = {row: n - 1 - legit[row] for row, n in paid.items()}
    return {row: n for row, n in extra.items() if n > 0}


@contextlib.asynccontextmanager
async def fault_emulator(
    time_scale: float = 0.005, seed: int = 3, **faults: Any
) -> AsyncIterator[Any]:
    """The in-process emulator without quotas (the tests pace nothing), with ``faults``."""
    from runner.emulator import Emulator, EmulatorConfig, FaultConfig

    cfg = EmulatorConfig(
        time_scale=time_scale,
        seed=seed,
        quotas_enabled=False,
        faults=FaultConfig.model_validate(faults),
    )
    async with Emulator(cfg) as emu:
        yield emu


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RUNNER_ or DASHSCOPE_ variable of the developer's shell, and a fresh working folder
    (no settings.toml or key file of the checkout): a test sees only what it sets."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("RUNNER_", "DASHSCOPE_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session, for tests that speak to the emulator over the wire."""
    async with aiohttp.ClientSession() as session:
        yield session
