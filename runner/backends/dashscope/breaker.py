"""A circuit breaker per host: a dead network stops the run once, early, with one line.

Without it, a run with no route to the service makes every row retry its way to "gave up
after 6 attempts". Connection failures (DNS, refused, TLS, connect timeouts) are counted per
host; after ``min_failures`` of them in a row, over at least ``window_s`` seconds with no
answer from the host in between, the host is declared unreachable and every later call to
it raises :class:`ServiceUnreachable` at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

from runner.errors import ServiceUnreachable

log = structlog.get_logger(__name__)

# Failures to connect at all; a reset or a slow answer means the host is there.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,  # DNS, refused, unreachable, TLS (certificate, handshake)
    aiohttp.ConnectionTimeoutError,  # the connect (sock_connect) timeout
)


@dataclass
class _Streak:
    first: float
    count: int
    error: str


class HostBreaker:
    def __init__(
        self,
        window_s: float = 30.0,
        min_failures: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.min_failures = min_failures
        self._clock = clock
        self._streaks: dict[str, _Streak] = {}
        self._open: dict[str, _Streak] = {}

    def check(self, host: str) -> None:
        """Raises ServiceUnreachable when the host has been declared unreachable."""
        streak = self._open.get(host)
        if streak is not None:
            raise ServiceUnreachable(host, streak.error, self._clock() - streak.first)

    def success(self, host: str) -> None:
        """Any answer from the host (an error status included) ends a streak."""
        self._streaks.pop(host, None)

    def failure(self, host: str, exc: BaseException) -> ServiceUnreachable | None:
        """Counts a connection failure; returns the error to raise once the breaker opens."""
        now = self._clock()
        error = describe(exc)
        streak = self._streaks.get(host)
        if streak is None:
            streak = self._streaks[host] = _Streak(first=now, count=0, error=error)
        streak.count += 1
        streak.error = error
        if streak.count < self.min_failures or now - streak.first < self.window_s:
            return None
        self._open[host] = streak
        unreachable = ServiceUnreachable(host, error, now - streak.first)
        # Logged once, here; later calls raise without a line each.
        log.error(
            "dashscope.unreachable",
            host=host,
            error=error,
            failures=streak.count,
            seconds=round(now - streak.first, 1),
        )
        return unreachable


def describe(exc: BaseException) -> str:
    """A short, key-free description: the type and the OS's reason."""
    reason = getattr(exc, "os_error", None) or exc.__cause__ or exc
    text = str(reason).strip() or type(reason).__name__
    return f"{type(exc).__name__}: {text}"[:200]
