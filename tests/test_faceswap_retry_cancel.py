"""A face-swap row cancelled while its crash retry waits for the pool must give back every
slot it took: otherwise the pool shrinks by one worker for the rest of the run."""

from __future__ import annotations

import asyncio
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from runner.backends.faceswap import FaceSwapPool
from runner.settings import FaceSwapSettings


class ScriptedPool(FaceSwapPool):
    """No processes: ``_run`` crashes for rows named "crash", holds for rows named "hold"."""

    def __init__(self, settings: FaceSwapSettings) -> None:
        super().__init__(settings)
        self.release_hold = asyncio.Event()

    async def start(self) -> None:
        return None

    async def _rebuild(self, generation: int) -> None:
        self._generation += 1

    async def _run(self, job: Any) -> Any:
        if job.index.startswith("crash"):
            raise BrokenProcessPool("worker died")
        await self.release_hold.wait()
        raise AssertionError("not reached in this test")


async def test_cancel_during_the_crash_retry_gives_back_every_slot(tmp_path: Path) -> None:
    pool = ScriptedPool(FaceSwapSettings(backend="classic", models_dir=tmp_path, workers=3))
    slots = pool._get_slots()
    ori = tmp_path / "o.png"
    # one row holds a slot; the crashed row's retry takes the others and waits for the last
    holder = asyncio.ensure_future(pool.swap("hold", ori, ori))
    await asyncio.sleep(0.01)
    retry = asyncio.ensure_future(pool.swap("crash", ori, ori))
    await asyncio.sleep(0.05)
    assert slots._value == 0  # the retry holds the two free slots, waits for the third
    retry.cancel()
    holder.cancel()
    await asyncio.gather(retry, holder, return_exceptions=True)
    assert slots._value == 3
