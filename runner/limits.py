"""Per-model quotas (slots in flight, submits a second) and the shared polling budget.

``LanePool.acquire(models)`` is work-conserving and fair: a waiter gets the most preferred
model of its list that has a free slot; waiters are served in arrival order, but one whose
models are all busy never holds up a later one whose model is free. A learned quota (AIMD)
halves on a 429 and grows by one slot after a quiet spell.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from .settings import Quota

log = structlog.get_logger(__name__)

_SUBMIT_MARGIN = 1.08  # space submits a little wider than 1/rate: clocks and windows differ


@dataclass
class LaneStats:
    submits: int = 0
    throttled: int = 0
    completed: int = 0
    failed: int = 0
    max_in_flight: int = 0
    latencies: list[float] = field(default_factory=list)  # kept sorted

    def observe(self, seconds: float) -> None:
        bisect.insort(self.latencies, seconds)
        if len(self.latencies) > 2000:  # keep memory flat on long runs
            del self.latencies[::2]

    def quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        i = min(len(self.latencies) - 1, max(0, round(q * (len(self.latencies) - 1))))
        return self.latencies[i]


class ModelLane:
    """One model's slots and submit pacing."""

    def __init__(self, name: str, quota: Quota, *, quiet_s: float = 30.0) -> None:
        self.name = name
        self.quota = quota
        self.limit = quota.in_flight
        self.in_flight = 0
        self.stats = LaneStats()
        self._next_submit = 0.0
        self._interval = _SUBMIT_MARGIN / quota.submits_per_second
        self._quiet_s = quiet_s
        self._last_throttle = 0.0
        self._last_raise = time.monotonic()

    @property
    def free(self) -> int:
        return max(0, self.limit - self.in_flight)

    async def submit_gate(self) -> None:
        """Wait for this model's next submit turn (reserve it first, then sleep)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = max(now, self._next_submit)
        self._next_submit = at + self._interval
        if at > now:
            await asyncio.sleep(at - now)
        self.stats.submits += 1

    def on_throttled(self) -> None:
        """A 429 on this model. For a learned quota: the slots the server accepted are the
        ones in flight but this one, so the limit drops to that (each 429 of a burst
        releases one slot, so a burst converges on the true limit, not below it)."""
        self.stats.throttled += 1
        self._last_throttle = time.monotonic()
        if self.quota.learn:
            old = self.limit
            self.limit = max(1, min(self.limit, self.in_flight - 1))
            if self.limit != old:
                log.info("quota_learned_down", model=self.name, limit=self.limit, was=old)
        # pause new submits on this model a moment: the window needs to drain
        loop = asyncio.get_running_loop()
        self._next_submit = max(self._next_submit, loop.time() + self._interval)

    def maybe_probe_up(self) -> None:
        """After a quiet spell at the limit, try one more slot (additive increase)."""
        if not self.quota.learn or self.limit >= self.quota.max_in_flight:
            return
        now = time.monotonic()
        if (
            self.in_flight >= self.limit
            and now - self._last_throttle > self._quiet_s
            and now - self._last_raise > self._quiet_s
        ):
            self.limit += 1
            self._last_raise = now
            log.info("quota_probe_up", model=self.name, limit=self.limit)

    def view(self) -> dict[str, object]:
        p50, p90 = self.stats.quantile(0.5), self.stats.quantile(0.9)
        return {
            "model": self.name,
            "in_flight": self.in_flight,
            "limit": self.limit,
            "learned": self.quota.learn,
            "submits": self.stats.submits,
            "throttled": self.stats.throttled,
            "completed": self.stats.completed,
            "p50_s": round(p50, 2) if p50 is not None else None,
            "p90_s": round(p90, 2) if p90 is not None else None,
        }


class LanePool:
    """Hands out model slots under each model's limit and one overall cap."""

    def __init__(self, lanes: dict[str, ModelLane], total_cap: int) -> None:
        self.lanes = lanes
        self.total_cap = total_cap
        self.total = 0
        self._waiters: deque[tuple[tuple[str, ...], asyncio.Future[ModelLane]]] = deque()

    def _pick(self, models: Sequence[str]) -> ModelLane | None:
        if self.total >= self.total_cap:
            return None
        for name in models:
            lane = self.lanes[name]
            lane.maybe_probe_up()
            if lane.free > 0:
                return lane
        return None

    def _take(self, lane: ModelLane) -> ModelLane:
        lane.in_flight += 1
        self.total += 1
        lane.stats.max_in_flight = max(lane.stats.max_in_flight, lane.in_flight)
        return lane

    async def acquire(self, models: Sequence[str]) -> ModelLane:
        models = tuple(models)
        if not self._waiters:
            lane = self._pick(models)
            if lane is not None:
                return self._take(lane)
        fut: asyncio.Future[ModelLane] = asyncio.get_running_loop().create_future()
        entry = (models, fut)
        self._waiters.append(entry)
        self._dispatch()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # granted just as we were cancelled
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
            raise

    def release(self, lane: ModelLane) -> None:
        lane.in_flight -= 1
        self.total -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        if not self._waiters:
            return
        kept: deque[tuple[tuple[str, ...], asyncio.Future[ModelLane]]] = deque()
        while self._waiters:
            models, fut = self._waiters.popleft()
            if fut.done():
                continue
            lane = self._pick(models)
            if lane is None:
                kept.append((models, fut))
                if self.total >= self.total_cap:
                    kept.extend(self._waiters)
                    self._waiters.clear()
                continue
            fut.set_result(self._take(lane))
        self._waiters = kept

    def views(self) -> list[dict[str, object]]:
        return [lane.view() for lane in self.lanes.values()]


class PollBudget:
    """One account-wide pace for task queries (the service allows 20 a second)."""

    def __init__(self, qps: float) -> None:
        self.interval = 1.0 / qps
        self._next = 0.0
        self.polls = 0

    async def wait(self, delay: float) -> None:
        """Sleep ``delay``, then take the next free polling turn."""
        if delay > 0:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)
        self.polls += 1


def plan_poll_delay(
    lane: ModelLane, elapsed: float, polls_done: int, first_s: float = 0.5
) -> float:
    """When to look at a task next, from what this model's tasks have taken so far.

    Without history: first_s x (1, 2, 2, 4, 4, then 6). With it: wait until the fastest
    tenth would be done, then poll at a tenth of the typical latency, so a finished task
    is seen within about 10 % of its run time without wasting the shared budget.
    """
    p10, p50 = lane.stats.quantile(0.1), lane.stats.quantile(0.5)
    if p10 is None or p50 is None:
        steps = (1, 2, 2, 4, 4)
        return first_s * (steps[polls_done] if polls_done < len(steps) else 6)
    gap = min(max(0.1 * p50, 0.02), 3.0)
    if elapsed < p10:
        return max(p10 - elapsed, gap)
    return gap
