"""Handing out per-model slots (lanes) under each model's quota and one overall cap.

DashScope caps each model at a few tasks in flight and a few submits a second. Speed is how
fully every allowed model's slots stay busy, so ``LanePool.slot(models)`` is work-conserving:
a waiter gets the most preferred model of its list that has a free slot, and no slot stays
idle while a waiter could use it. Waiters with
different model lists (task types) that share a model share its slots fairly: the class
holding fewer slots goes first, then the one that prefers the model. A rate-bound lane
(no in-flight limit) hands its slots out as its submit turns come, so that it stays busy at
its call rate without its waiters holding the cap. Each model's own slots, submit
window and learned limit are ``model_lane.ModelLane``'s.

The overall cap is the user's ``concurrency`` when one was given; then every hand-out it
delays while a model had a free slot is counted (``cap_held``), with the figure that would
not have bound (``needed``: what the lanes' quotas and observed latencies need), for the
progress display and the summary. Without one the cap follows what the lanes need and
never binds: only the quotas do.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.scheduling.model_lane import ModelLane

__all__ = ["LanePool", "Slot", "cap_note"]

Klass = tuple[str, ...]  # a waiter's model list: waiters with the same list are one class


@dataclass
class _Waiter:
    seq: int
    klass: Klass
    fut: asyncio.Future[ModelLane]
    held: bool = False  # counted once as delayed by the overall cap


class Slot:
    """A held slot: ``lane`` is its model; ``release()`` gives it back (idempotent)."""

    def __init__(self, pool: LanePool, lane: ModelLane, klass: Klass) -> None:
        self.pool = pool
        self.lane = lane
        self.klass = klass
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool._give_back(self.lane, self.klass)


class _SlotContext:
    """``async with pool.slot(models) as held``: waits for a slot, gives it back at exit
    unless ``held.release()`` already did."""

    def __init__(self, pool: LanePool, models: Sequence[str]) -> None:
        self._pool = pool
        self._klass: Klass = tuple(models)
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        lane = await self._pool._wait_for(self._klass)
        self._slot = Slot(self._pool, lane, self._klass)
        return self._slot

    async def __aexit__(self, *exc_info: object) -> None:
        if self._slot is not None:
            self._slot.release()


def cap_note(views: list[dict[str, Any]]) -> str | None:
    """One line when the user's overall cap held requests back that a model's quota would
    have let through (``LanePool.cap_view`` on the views), else None."""
    view = next((v for v in views if "cap_held" in v), None)
    if view is None or not view["cap_given"] or not view["cap_held"]:
        return None
    return (
        f"concurrency {view['cap']} held back {view['cap_held']} request(s) while their "
        f"model had a free slot: {view['cap_needed']} would not bind (or leave it unset)"
    )


class LanePool:
    """Hands out model slots under each model's limit and one overall cap."""

    def __init__(
        self, lanes: dict[str, ModelLane], total_cap: int, *, cap_given: bool = True
    ) -> None:
        self.lanes = lanes
        self.total_cap = total_cap
        self.cap_given = cap_given  # False: automatic, never binds
        self.cap_held = 0  # waiters the given cap delayed while a model had a free slot
        self.total = 0
        self._queues: dict[Klass, deque[_Waiter]] = {}
        self._held: Counter[Klass] = Counter()
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def cap(self) -> int:
        """The overall cap in force: the given one; automatic, one more than is in flight (it
        never binds: only the quotas do; ``needed`` is the figure it stands for)."""
        return self.total_cap if self.cap_given else self.total + 1

    def needed(self) -> int:
        """In flight at once that no quota would refuse: the sum of the lanes' needs."""
        return sum(lane.need() for lane in self.lanes.values())

    def cap_view(self) -> dict[str, Any]:
        """The overall cap, whether the user gave it, how often it held a slot back, and
        the figure that would not bind."""
        needed = self.needed()
        return {
            "cap": self.total_cap if self.cap_given else max(self.total_cap, needed),
            "cap_given": self.cap_given,
            "cap_held": self.cap_held,
            "cap_needed": needed,
        }

    # -- API ------------------------------------------------------------------
    def slot(self, models: Sequence[str]) -> _SlotContext:
        """``async with pool.slot(models) as held``: a slot of the most preferred of
        ``models`` with one free (waits if none); ``held.release()`` gives it back early."""
        return _SlotContext(self, models)

    def views(self) -> list[dict[str, Any]]:
        """Each lane's view, with the overall cap's (``cap_view``) on every one."""
        cap = self.cap_view()
        return [lane.view() | cap for lane in self.lanes.values()]

    # -- hand-out -------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _best(self, klass: Klass, now: float) -> tuple[int, ModelLane] | None:
        """(rank, lane) of the most preferred lane of ``klass`` with a free slot."""
        for rank, name in enumerate(klass):
            lane = self.lanes.get(name)
            if lane is None:
                continue
            if lane.free <= 0:
                lane.maybe_probe_up()  # demand at the limit: maybe one more slot
            if lane.free > 0 and lane.opens_in(now) <= 0:
                return rank, lane
        return None

    def _take(self, lane: ModelLane, klass: Klass, now: float) -> ModelLane:
        lane.in_flight += 1
        self.total += 1
        lane.stats.max_in_flight = max(lane.stats.max_in_flight, lane.in_flight)
        lane._granted(now)
        self._held[klass] += 1
        return lane

    async def _wait_for(self, klass: Klass) -> ModelLane:
        now = self._now()
        if not self.waiting and self.total < self.cap:
            best = self._best(klass, now)
            if best is not None:
                return self._take(best[1], klass, now)
        fut: asyncio.Future[ModelLane] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(next(self._seq), klass, fut)
        self._queues.setdefault(klass, deque()).append(waiter)
        self._dispatch()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._give_back(fut.result(), klass)  # granted just as we were cancelled
            else:
                queue = self._queues.get(klass)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
            raise

    def _give_back(self, lane: ModelLane, klass: Klass) -> None:
        lane.in_flight -= 1
        self.total -= 1
        self._held[klass] -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            now = self._now()
        except RuntimeError:  # a limit changed outside a loop (tests): nothing waits
            return
        while self.total < self.cap:
            choice: tuple[tuple[int, int, int], Klass, ModelLane] | None = None
            for klass, queue in self._queues.items():
                while queue and queue[0].fut.done():  # cancelled waiters
                    queue.popleft()
                if not queue:
                    continue
                best = self._best(klass, now)
                if best is None:
                    continue
                rank, lane = best
                # fewest slots held first, then the class that prefers this model,
                # then the oldest waiter
                key = (self._held[klass], rank, queue[0].seq)
                if choice is None or key < choice[0]:
                    choice = (key, klass, lane)
            if choice is None:
                break
            _, klass, lane = choice
            waiter = self._queues[klass].popleft()
            waiter.fut.set_result(self._take(lane, klass, now))
        if self.total >= self.cap:
            self._count_held(now)
        self._arm(now)

    def _count_held(self, now: float) -> None:
        """The overall cap is full: count each waiter whose model has a free slot now (once)."""
        for klass, queue in self._queues.items():
            if not queue or queue[0].held or queue[0].fut.done():
                continue
            lanes = (self.lanes.get(name) for name in klass)
            if any(ln is not None and ln.free > 0 and ln.opens_in(now) <= 0 for ln in lanes):
                queue[0].held = True
                self.cap_held += 1

    def _arm(self, now: float) -> None:
        """Wake the hand-out when a rate-bound lane a waiter could use opens its next slot
        (no release announces that)."""
        if self.total >= self.cap:
            return
        wake: float | None = None
        for klass, queue in self._queues.items():
            if not queue:
                continue
            for name in klass:
                lane = self.lanes.get(name)
                if lane is not None and lane.rate_bound:
                    t = lane.opens_in(now)
                    if t > 0 and (wake is None or t < wake):
                        wake = t
        if wake is None:
            return
        if self._timer is not None:
            if self._timer.when() <= now + wake:
                return
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(wake, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._dispatch()
