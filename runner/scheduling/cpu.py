"""Threads for blocking CPU work (image decoding, resizing, encoding) below the loop's
priority."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

BACKGROUND_NICE = 10  # image work yields the CPU to the event loop (and to the emulator)


def _lower_priority() -> None:
    """Thread initializer: lower this thread's CPU priority (Linux nice is per thread)."""
    try:
        os.setpriority(
            os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE)
        )
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


class CpuPool:
    """Threads for blocking CPU work at a lower CPU priority than the event loop's thread.

    With image work on asyncio's default executor, busy threads share two cores with the
    loop thread: the loop then runs late (polls and submits after a slot frees are late,
    and slots idle). Here the work yields the CPU to the loop whenever the loop has
    something to do. Use what releases the GIL (OpenCV, Pillow decoders) inside.
    """

    def __init__(self, workers: int | None = None) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
        self.workers = workers or max(1, cores)
        self._executor: ThreadPoolExecutor | None = None

    def _get(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.workers,
                thread_name_prefix="cpu",
                initializer=_lower_priority,
            )
        return self._executor

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._get(), functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
