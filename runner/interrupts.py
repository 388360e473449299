"""Ctrl-C and SIGTERM during a run: stop submitting, finish the closing files, then exit.

The first signal asks the scheduler to stop (what is done stays done; rows not finished are
"stopped", reason "interrupted") so that failed.csv, the summary and the report are still
written; a second one cancels the run at once. Outside the main thread (where signal
handlers cannot be set) nothing is installed and the defaults apply.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """``with Interrupts(stop):`` inside a coroutine; ``caught`` names the first signal."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop
        self.caught: signal.Signals | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.getsignal(sig)
                self._loop.add_signal_handler(sig, self._handle, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # no signals here
                self._previous.pop(sig, None)
        return self

    def _handle(self, sig: signal.Signals) -> None:
        if self.caught is None:
            self.caught = sig
            log.warning("run_interrupted", signal=sig.name)
            self.stop()
        elif self._task is not None:
            self._task.cancel()  # asked twice: stop now, closing files or not

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is None:
            return
        for sig, previous in self._previous.items():
            self._loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)
        self._previous.clear()

    @property
    def name(self) -> str | None:
        return self.caught.name if self.caught is not None else None
