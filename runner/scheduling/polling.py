"""Task queries under one account-wide budget, and the wait for a task to end.

The service allows 20 task queries a second per account (``poll_qps``, 15 by default, is
what the runner spends). ``PollBudget`` hands out turns ``1/qps`` apart to the waiting
tasks (``TaskPlan``): among those due, the one most likely to have ended since it was last
seen running. ``TaskWatcher.wait_terminal`` polls one task through it until the task ends
(or, one last poll past its deadline, is found still running), learning from each ending how
long the model's tasks take: from the service's own timestamps when the answer carries them,
else from the interval the polls bracket. Every time here is on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from runner.backends.dashscope.types import TERMINAL_STATUSES
from runner.errors import (
    DashScopeError,
    Fatal,
    RateLimited,
    ResultUnreachable,
    Retryable,
    Step,
    StillRunning,
)
from runner.policy import backoff_delay
from runner.scheduling.model_lane import ModelLane
from runner.scheduling.plan import ServiceClock, TaskPlan

log = structlog.get_logger(__name__)

_MAX_POLL_BACKOFF_S = 8.0
_LAST_LOOK = 1e12  # a task past its deadline takes the next turn before any other


class _Due(Protocol):
    def due_at(self, now: float, spread: float) -> float: ...
    def score(self, now: float) -> float: ...


class _Fixed:
    """A turn asked for with a fixed delay and urgency (``PollBudget.wait``)."""

    def __init__(self, at: float, urgency: Callable[[], float] | float | None) -> None:
        self.at = at
        self.urgency = urgency

    def due_at(self, now: float, spread: float) -> float:
        return self.at

    def score(self, now: float) -> float:
        u = self.urgency
        if u is None:
            return 1.0
        try:
            return float(u() if callable(u) else u)
        except Exception:  # a broken estimate must not stall polling
            return 1.0


class PollBudget:
    """One account-wide pace for task queries: turns ``1/qps`` apart, never in bursts.

    ``turn(plan)`` waits until ``plan`` is due and wins a turn: when several are due, the
    one with the highest ``score`` (the longest expected to have sat finished unseen) goes
    first, so a short budget is spent where it finds results. ``clock`` is the wall clock the
    plans use (``time.time``; tests pass one that follows a virtual loop).
    """

    def __init__(self, qps: float, *, clock: Callable[[], float] = time.time) -> None:
        self.qps = qps
        self.interval = 1.0 / qps
        self.clock = clock
        self.service = ServiceClock()
        self.polls = 0
        self._next = 0.0  # our time of the next free turn
        self._waiting: dict[int, tuple[_Due, asyncio.Future[None]]] = {}
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    async def turn(self, plan: _Due) -> None:
        """Wait until ``plan`` is due and takes a polling turn."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        key = next(self._seq)
        self._waiting[key] = (plan, fut)
        self._arm(loop)
        try:
            await fut
        finally:
            self._waiting.pop(key, None)

    async def wait(self, delay: float, urgency: Callable[[], float] | float | None = None) -> None:
        """Sleep ``delay``, then take the next polling turn (the most urgent first)."""
        await self.turn(_Fixed(self.clock() + max(0.0, delay), urgency))

    def pause(self, seconds: float) -> None:
        """The query API answered 429: no turn for ``seconds``."""
        self._next = max(self._next, self.clock() + seconds)
        self._timer_at = 0.0  # re-arm from scratch
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        live = [plan for plan, fut in self._waiting.values() if not fut.done()]
        if not live:
            return
        now = self.clock()
        spread = len(live) * self.interval
        wake = max(self._next, min(p.due_at(now, spread) for p in live))
        if self._timer is not None:
            if self._timer_at <= wake:
                return
            self._timer.cancel()
        self._timer_at = wake
        self._timer = loop.call_later(max(0.0, wake - now), self._grant, loop)

    def _grant(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = self.clock()
        best: tuple[float, int] | None = None
        if now >= self._next:
            # the same spread as _arm's: a due time it saw passed must still be passed here
            spread = sum(not fut.done() for _, fut in self._waiting.values()) * self.interval
            for key, (plan, fut) in self._waiting.items():
                if fut.done() or plan.due_at(now, spread) > now:
                    continue
                rank = (plan.score(now), -key)  # then the one waiting longest
                if best is None or rank > best:
                    best = rank
        if best is not None:
            _, fut = self._waiting.pop(-best[1])
            self._next = max(now, self._next) + self.interval
            self.polls += 1
            fut.set_result(None)
        self._arm(loop)


class _Client(Protocol):
    async def fetch_task(self, task_id: str) -> Any: ...


def _stamp(state: Any, name: str) -> float | None:
    value = getattr(state, name, None)
    return float(value) if isinstance(value, int | float) else None


class TaskWatcher:
    """Polls one task at a time (many at once share the budget) until it ends.

    The deadline is on the monotonic clock: ``timeout_s`` from this run's first poll of the
    task. A task is never given up unseen: past the deadline it is polled once more, and one
    still PENDING or RUNNING then raises ``StillRunning`` (the task stays open; the row fails
    for this run and the next run polls it). Nothing here closes or cancels a task.
    """

    def __init__(
        self, client: _Client, budget: PollBudget, *, timeout_s: float, first_s: float
    ) -> None:
        self.client = client
        self.budget = budget
        self.timeout_s = timeout_s
        self.first_s = first_s

    async def wait_terminal(
        self,
        lane: ModelLane,
        task_id: str,
        *,
        started: float | None = None,
        age_s: float = 0.0,
    ) -> Any:
        """The task's state as soon as it is SUCCEEDED, FAILED, CANCELED or UNKNOWN.

        ``started``: our clock's time of the submit, for a task sent in this run. A task of an
        earlier run has none; ``age_s`` is then how old the journal says it is (a hint for the
        planner only). Failed polls are polled again (429s and 5xx with backoff); a poll the
        service refuses for good raises ``ResultUnreachable`` (the task is kept), a ``Fatal``
        stops the run.
        """
        clock = self.budget.clock
        service = self.budget.service
        fresh = started is not None
        anchor = started if started is not None else clock() - max(0.0, age_s)
        plan = TaskPlan(lane, anchor, first_s=self.first_s, fresh=fresh)
        deadline: float | None = None
        failures = 0
        svc_submit: float | None = None
        last_look = False
        while True:
            if deadline is not None and not last_look:
                left = deadline - clock()
                try:
                    async with asyncio.timeout(max(0.0, left)):
                        await self.budget.turn(plan)
                except TimeoutError:
                    last_look = True  # the deadline: one look more, at once, then decide
                    await self.budget.turn(_Fixed(clock(), _LAST_LOOK))
            else:
                await self.budget.turn(plan)
            sent = clock()
            if deadline is None:
                deadline = sent + self.timeout_s
            plan.polls += 1
            plan.last_sent = sent
            try:
                state = await self.client.fetch_task(task_id)
            except Retryable as exc:  # the task is still there: look again later, never re-pay
                if last_look:
                    raise StillRunning(
                        self._still(task_id, f"its last poll failed: {exc}")
                    ) from None
                failures += 1
                delay = backoff_delay(min(failures, 6), exc.retry_after, max_s=_MAX_POLL_BACKOFF_S)
                plan.hold_until = clock() + delay
                if isinstance(exc, RateLimited):  # the account's query budget is spent
                    self.budget.pause(min(delay, _MAX_POLL_BACKOFF_S))
                log.info("poll_failed", task_id=task_id, error=str(exc), retry_in=round(delay, 2))
                continue
            except DashScopeError as exc:
                exc.model = exc.model or lane.name
                if isinstance(exc, Fatal):
                    raise exc.at(Step.POLL) from None
                raise ResultUnreachable(
                    f"polling task {task_id} was refused ({exc}); the task is kept: the next "
                    "run asks for it again without paying"
                ) from None
            recv = clock()
            failures = 0
            stamp = _stamp(state, "submit_time")
            if stamp is not None and svc_submit is None:
                svc_submit = stamp
                if fresh:
                    service.submitted(stamp, anchor)
                plan.anchor = service.to_ours(stamp)
            if state.status not in TERMINAL_STATUSES:
                if last_look:
                    raise StillRunning(self._still(task_id, f"it was {state.status}"))
                plan.last_not_done = sent
                continue
            self._learn(lane, plan, state, sent=sent, recv=recv, svc_submit=svc_submit)
            return state

    def _still(self, task_id: str, why: str) -> str:
        return (
            f"task {task_id} was still running at the service {self.timeout_s:.0f} s after "
            f"this run's first poll ({why}); it is kept, not paid again: the next run polls it"
        )

    def _learn(
        self,
        lane: ModelLane,
        plan: TaskPlan,
        state: Any,
        *,
        sent: float,
        recv: float,
        svc_submit: float | None,
    ) -> None:
        stats = lane.stats
        if state.status == "FAILED":
            stats.failed += 1
            return
        if state.status != "SUCCEEDED":
            return
        stats.completed += 1
        end = _stamp(state, "end_time")
        if end is not None and svc_submit is not None and end >= svc_submit:
            # the service's own duration: free of our detection delay, valid even when resumed
            stats.latency.observe(end - svc_submit, end - svc_submit)
            service = self.budget.service
            service.ended(end, recv, plan.last_not_done)
            if plan.fresh or plan.last_not_done is not None:  # we were watching when it ended
                stats.detected(recv - service.to_ours(end))
            return
        if plan.fresh:  # it ended after the last look that saw it running, by this answer
            seen_running = (plan.last_not_done or plan.anchor) - plan.anchor
            stats.latency.observe(seen_running, recv - plan.anchor)
