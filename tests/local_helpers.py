"""Helpers of the local-generation tests (test_local_run, test_local_ray)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.backends.local import LocalPool


def digest(path: Path) -> str:
    with Image.open(path) as img:
        img.load()
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (32, 32)
        return hashlib.sha256(img.tobytes()).hexdigest()


def pixels_apart(a: Path, b: Path) -> float:
    """Mean absolute difference of two outputs in 0-255 levels: the same seed made in another
    batch (a retried job is batched with other jobs) differs by float rounding only."""
    with Image.open(a) as x, Image.open(b) as y:
        return float(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)).mean())


def kill_when_busy(monkeypatch: pytest.MonkeyPatch, model: str, killed: list[int]):
    """A task that SIGKILLs the model's worker once it holds a job (the pool is caught as
    run_all builds it)."""
    pools: list[LocalPool] = []
    real_init = LocalPool.__init__

    def spy(self: LocalPool, settings) -> None:
        real_init(self, settings)
        pools.append(self)

    monkeypatch.setattr(LocalPool, "__init__", spy)

    async def killer() -> None:
        while True:
            await asyncio.sleep(0.05)
            workers = pools[0].workers(model) if pools else []
            if workers and workers[0].pending and workers[0].alive:
                killed.append(workers[0].pid)
                os.kill(workers[0].pid, signal.SIGKILL)
                return

    return asyncio.create_task(killer())
