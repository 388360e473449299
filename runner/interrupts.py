"""Ctrl-C and SIGTERM during a run: stop cleanly on the first, leave at once on the second.

The first signal stops the run: what it waits for at start-up (the face-swap workers
loading) is given up, the scheduler is asked to stop (what is done stays done; rows not
finished are "stopped", reason "interrupted"), and failed.csv, the summary and the report
are still written. A notice says what the stop waits for and that a second signal leaves.

The second signal leaves at once: what the run awaits through ``until_left`` is abandoned
(cancelled, not waited for) and ``Left`` raised, so the caller writes what it can (the
journal's last records, failed.csv, summary.json) and returns. Signals after that are
ignored. Once a run stops (a signal, or ``quiet()`` for a stop of its own such as a dead
network), errors of the tasks it abandoned go to the log file, not the console, for the rest
of the loop's life (no "Task exception was never retrieved" under the closing lines).

Outside the main thread (where signal handlers cannot be set) nothing is installed and the
defaults apply.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")
Notice = Callable[[str], None]


class Left(Exception):
    """A second signal: the run is left at once; what it waited for is abandoned."""


def _log_notice(line: str) -> None:
    log.warning("run_stopping", line=line)


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """After a stop: an abandoned task's error is logged to the file, not shown."""
    exc = context.get("exception")
    log.info("after_stop", message=context.get("message"), error=repr(exc) if exc else None)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: asyncio says nothing of it


class Interrupts:
    """``with Interrupts(notice) as interrupts:`` inside a coroutine; ``name`` names the
    first signal. ``when_stopped(fn)`` registers what a first signal stops,
    ``until_stopped(aw)`` and ``until_left(aw)`` await what a first or second one gives up."""

    def __init__(self, notice: Notice | None = None) -> None:
        self.notice = notice or _log_notice
        self.caught: signal.Signals | None = None
        self.left = False
        self._stops: list[Callable[[], None]] = []
        self._stopped: asyncio.Future[None] | None = None
        self._left: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> Interrupts:
        loop = asyncio.get_running_loop()
        self._stopped, self._left = loop.create_future(), loop.create_future()
        if threading.current_thread() is not threading.main_thread():
            return self
        self._loop = loop
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._handle, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # no signals here
                self._previous.pop(sig, None)
        return self

    # --- the signals --------------------------------------------------------------------
    def _handle(self, sig: signal.Signals) -> None:
        if self.caught is None:
            self.caught = sig
            log.info("run_interrupted", signal=sig.name)
            self.quiet()
            key = "Ctrl-C" if sig == signal.SIGINT else sig.name
            self.notice(
                f"{sig.name}: stopping. No new row starts; rows under way are stopped, then "
                f"failed.csv, summary.json and report.html are written ({key} again to leave "
                "at once)."
            )
            _set(self._stopped)
            for stop in list(self._stops):
                stop()
        elif not self.left:
            self.left = True
            log.info("run_left", signal=sig.name)
            _set(self._left)

    def quiet(self) -> None:
        """From now on, errors of abandoned tasks go to the log file (the run stopped)."""
        asyncio.get_running_loop().set_exception_handler(_quiet_exception_handler)

    # --- what a signal gives up ------------------------------------------------------------
    def when_stopped(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` on the first signal (at once if it came already)."""
        self._stops.append(stop)
        if self.caught is not None:
            stop()

    async def until_stopped(self, aw: Awaitable[T]) -> T | None:
        """``aw``'s result, or None when a signal came first (``aw`` is then cancelled)."""
        assert self._stopped is not None, "use inside `with Interrupts()`"
        finished, result = await self._until(aw, self._stopped)
        return result if finished else None

    async def until_left(self, aw: Awaitable[T]) -> T:
        """``aw``'s result; a second signal abandons it (cancelled, not waited for) and
        raises ``Left``."""
        assert self._left is not None, "use inside `with Interrupts()`"
        finished, result = await self._until(aw, self._left)
        if not finished:
            raise Left()
        return result  # type: ignore[return-value]

    async def _until(
        self, aw: Awaitable[T], gate: asyncio.Future[None]
    ) -> tuple[bool, T | None]:
        """(whether ``aw`` finished, its result); given up (cancelled) once ``gate`` is set."""
        task = asyncio.ensure_future(aw)
        if not gate.done():
            try:
                await asyncio.wait({task, gate}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                task.cancel()
                # the run cancelled from outside (a caller's timeout): its own stop (the paid
                # calls' drain) ends before the client under it closes; cancelled again, not
                await asyncio.wait({task})
                raise
        if task.done():
            return True, task.result()
        task.cancel()
        task.add_done_callback(_retrieve)
        return False, None

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


def _set(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


__all__ = ["SIGNALS", "Interrupts", "Left"]
