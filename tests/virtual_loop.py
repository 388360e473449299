"""An asyncio loop on virtual time: sleeps and timers move its clock, nothing waits for real.

``run_virtual(coro)`` runs a coroutine on it; ``loop.time()`` starts at 0 and jumps to the
next timer whenever nothing is ready. Real I/O still works (it is checked first), so a
test that waits on nothing but the clock runs in milliseconds, whatever span it covers.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EPOCH = 1_780_000_000.0  # the wall clock a virtual loop's time 0 stands for


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.loop: VirtualLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._real.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timer at all: only real I/O can wake us
            events = self._real.select(2.0)
            if not events:
                raise RuntimeError("virtual loop: nothing scheduled (the test deadlocked)")
            return events
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = 0.0
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)


def wall() -> float:
    """The wall clock of the running virtual loop."""
    return EPOCH + asyncio.get_running_loop().time()


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=VirtualLoop) as runner:
        return runner.run(coro)
