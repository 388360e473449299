"""Task queries under one account-wide budget, when to look at each task, and the wait for a
task to end.

The service allows 20 task queries a second per account (``poll_qps``, 15 by default, is
what the runner spends). ``PollBudget`` hands out turns ``1/qps`` apart to the waiting
tasks. A waiting task is a ``WatchedTask``: when it started (our clock), when it was last
looked at, and its model's learned durations (``latency.LatencyModel``). The budget asks
every waiting task when it is worth a look (``due_at``) and, among those due, takes the one
most likely to have ended since its last look (``score``): while the budget is not
exhausted every task near or past its likely end is seen often; when it is short, the most
likely done goes first. ``ServiceClock`` maps the service's timestamps onto our clock.

``TaskWatcher.wait_terminal`` polls one task through the budget until the task ends (or, one
last poll past its deadline, is found still running), learning from each ending how long the
model's tasks take: from the service's own timestamps when the answer carries them, else
from the interval the polls bracket. Every time here is on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
import time
from collections import deque
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
from runner.scheduling.latency import LatencyModel
from runner.scheduling.model_lane import ModelLane

_MIN_GAP_S = 0.02  # never look at one task more often than this
_MAX_GAP_S = 2.0  # with history, never see a finished task more than this late
# With history a task may be looked at every 0.5 % of its model's median: the budget, not
# this gap, is what normally spaces the looks (spent, most likely done first).
_GAP_SHARE = 0.005
_COLD_SHARE = 0.1  # without history: every 10 % of the time it has run so far
_OVERDUE = 1.0 - 1e-9
_PRIOR_WEIGHT = 0.1  # share of the smoothing prior in the learned distribution
_PROBE_SHARE = 0.9  # a task's first look: at this share of the fastest end seen
_THIN_HISTORY = 16  # fewer endings than this: also look before the fastest end seen
_NEVER_SEEN = 1e12  # a resumed task not yet looked at: it may have ended hours ago


class ServiceClock:
    """The service's clock minus ours, from its timestamps.

    Each task we submitted gives ``submit_time - submitted_at``; each poll gives bounds:
    a task seen done at our ``recv`` ended by then (offset >= end - recv), one seen not done
    at our ``sent`` had not ended then (offset <= end - sent).
    """

    def __init__(self, keep: int = 64) -> None:
        self._samples: deque[float] = deque(maxlen=keep)
        self._low: deque[float] = deque(maxlen=keep)
        self._high: deque[float] = deque(maxlen=keep)

    def submitted(self, service_submit: float, our_submit: float) -> None:
        self._samples.append(service_submit - our_submit)

    def ended(self, service_end: float, seen_done: float, last_not_done: float | None) -> None:
        self._low.append(service_end - seen_done)
        if last_not_done is not None:
            self._high.append(service_end - last_not_done)

    @property
    def known(self) -> bool:
        return bool(self._samples or self._low)

    @property
    def offset(self) -> float:
        est = statistics.median(self._samples) if self._samples else None
        low = max(self._low) if self._low else None
        high = min(self._high) if self._high else None
        if low is not None and high is not None and low > high:  # jitter: split the difference
            return (low + high) / 2
        if est is None:
            est = low if low is not None else (high if high is not None else 0.0)
        if low is not None:
            est = max(est, low)
        if high is not None:
            est = min(est, high)
        return est

    def to_ours(self, service_time: float) -> float:
        return service_time - self.offset


class WatchedTask:
    """One watched task, as the planner sees it (times on our clock)."""

    def __init__(self, lane: ModelLane, anchor: float, *, first_s: float, fresh: bool) -> None:
        self.lane = lane
        self.anchor = anchor  # when the task started, on our clock
        self.first_s = first_s
        self.fresh = fresh  # we submitted it this run (not a resumed one of unknown age)
        self.polls = 0
        self.last_sent: float | None = None  # our time the last look was sent
        self.last_not_done: float | None = None  # our time of the last look that saw it running
        self.hold_until = 0.0  # after a failed look: not before this

    def gap(self, now: float, spread: float) -> float:
        """The least time between two looks at this task. ``spread`` is how often the
        budget could look at every waiting task: with history, never wait longer than that
        (a budget not exhausted is spent), nor look more often than 0.5 % of the median."""
        p50 = self.lane.stats.latency.quantile(0.5)
        if p50 is not None:
            return max(_MIN_GAP_S, min(_GAP_SHARE * p50, _MAX_GAP_S, spread))
        return self._cold_gap(now)

    def _cold_gap(self, now: float) -> float:
        """10 % of the time it has run (at most ``first_s``): counted to the last look, not
        to now, since a due time that moved with the clock would never come."""
        ran = (self.last_sent if self.last_sent is not None else now) - self.anchor
        return min(max(_COLD_SHARE * ran, _MIN_GAP_S), self.first_s)

    def due_at(self, now: float, spread: float = 0.0) -> float:
        """Our time from which a look at this task is worth a budget turn."""
        if self.polls == 0 and not self.fresh:
            return self.hold_until  # resumed: it may have ended long ago, look now
        gap = self.gap(now, spread)
        begins = self.lane.stats.latency.start
        after_last = self.last_sent + gap if self.last_sent is not None else 0.0
        if begins is None:
            start = self.anchor + self.first_s if self.polls == 0 else 0.0
            return max(start, after_last, self.hold_until)
        window = self.anchor + max(0.0, begins - gap)
        # Before the window: one look a little before the fastest end seen, and while the
        # history is thin (its fastest may be far from the true one) more at the cold pace;
        # scored next to nothing, they only take turns nobody else wants. A task faster
        # than any so far is then found early and lowers the estimate: it never becomes a
        # floor, and a busy budget is spent in the window.
        if self.last_sent is None:
            early = self.anchor + min(self.first_s, _PROBE_SHARE * begins)
            if len(self.lane.stats.latency) >= _THIN_HISTORY:
                early = self.anchor + _PROBE_SHARE * begins
        elif len(self.lane.stats.latency) < _THIN_HISTORY:
            early = self.last_sent + self._cold_gap(now)
        else:
            early = window
        return max(min(window, early), after_last, self.hold_until)

    def score(self, now: float) -> float:
        """How long, in expectation, the task has already sat finished and unseen (s).

        Looking first where this is largest minimises the mean detection delay for the
        budget spent: the most likely done, weighted by how long since it was looked at
        (a long-tail task is not starved by many likely ones).
        """
        if self.polls == 0 and not self.fresh:
            return _NEVER_SEEN
        e0 = (self.last_not_done or self.anchor) - self.anchor  # last seen running
        e = now - self.anchor
        if e <= e0:
            return 0.0
        lat = self.lane.stats.latency
        if not len(lat):  # no history: a log-uniform prior on its duration
            if e0 <= 0:
                return e
            return (e - e0) - e0 * math.log(e / e0)
        cdf = _smoothed(lat)
        before = cdf(e0)
        if before >= _OVERDUE:
            return e - e0  # slower than anything seen: it may have ended any moment since
        rest = 1.0 - before

        def done_by(t: float) -> float:
            return max(0.0, cdf(t) - before) / rest

        # the integral of P(done by t) from the last look to now (Simpson)
        return (e - e0) / 6.0 * (4.0 * done_by((e0 + e) / 2.0) + done_by(e))


def _smoothed(lat: LatencyModel) -> Callable[[float], float]:
    """The learned CDF with a little log-uniform mass from the first look to ten times the
    slowest seen: between far-apart observations (a heavy tail) the learned
    distribution has no mass at all, and a task running there would never be looked at."""
    low = max(1e-3, _PROBE_SHARE * (lat.start or 0.0))
    high = max(low * 10.0, (lat.latest or 0.0) * 10.0)
    span = math.log(high / low)

    def cdf(t: float) -> float:
        prior = 0.0 if t <= low else min(1.0, math.log(t / low) / span)
        return (1.0 - _PRIOR_WEIGHT) * lat.cdf(t) + _PRIOR_WEIGHT * prior

    return cdf


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

    ``turn(watched)`` waits until ``watched`` is due and wins a turn: when several are due, the
    one with the highest ``score`` (the longest expected to have sat finished unseen) goes
    first, so a short budget is spent where it finds results. ``clock`` is the clock the
    watched tasks use: ``time.monotonic``, the lifecycle's (tests pass one that follows a
    virtual loop).
    """

    def __init__(self, qps: float, *, clock: Callable[[], float] = time.monotonic) -> None:
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

    async def turn(self, watched: _Due) -> None:
        """Wait until ``watched`` is due and takes a polling turn."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        key = next(self._seq)
        self._waiting[key] = (watched, fut)
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
        live = [watched for watched, fut in self._waiting.values() if not fut.done()]
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
            for key, (watched, fut) in self._waiting.items():
                if fut.done() or watched.due_at(now, spread) > now:
                    continue
                rank = (watched.score(now), -key)  # then the one waiting longest
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
        watched = WatchedTask(lane, anchor, first_s=self.first_s, fresh=fresh)
        deadline: float | None = None
        failures = 0
        svc_submit: float | None = None
        last_look = False
        while True:
            if deadline is not None and not last_look:
                left = deadline - clock()
                try:
                    async with asyncio.timeout(max(0.0, left)):
                        await self.budget.turn(watched)
                except TimeoutError:
                    last_look = True  # the deadline: one look more, at once, then decide
                    await self.budget.turn(_Fixed(clock(), _LAST_LOOK))
            else:
                await self.budget.turn(watched)
            sent = clock()
            if deadline is None:
                deadline = sent + self.timeout_s
            watched.polls += 1
            watched.last_sent = sent
            try:
                state = await self.client.fetch_task(task_id)
            except Retryable as exc:  # the task is still there: look again later, never re-pay
                if last_look:
                    raise StillRunning(
                        self._still(task_id, f"its last poll failed: {exc}")
                    ) from None
                failures += 1
                delay = backoff_delay(min(failures, 6), exc.retry_after, max_s=_MAX_POLL_BACKOFF_S)
                watched.hold_until = clock() + delay
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
                watched.anchor = service.to_ours(stamp)
            if state.status not in TERMINAL_STATUSES:
                if last_look:
                    raise StillRunning(self._still(task_id, f"it was {state.status}"))
                watched.last_not_done = sent
                continue
            self._learn(lane, watched, state, sent=sent, recv=recv, svc_submit=svc_submit)
            return state

    def _still(self, task_id: str, why: str) -> str:
        return (
            f"task {task_id} was still running at the service {self.timeout_s:.0f} s after "
            f"this run's first poll ({why}); it is kept, not paid again: the next run polls it"
        )

    def _learn(
        self,
        lane: ModelLane,
        watched: WatchedTask,
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
            service.ended(end, recv, watched.last_not_done)
            if watched.fresh or watched.last_not_done is not None:  # watched when it ended
                stats.detected(recv - service.to_ours(end))
            return
        if watched.fresh:  # it ended after the last look that saw it running, by this answer
            seen_running = (watched.last_not_done or watched.anchor) - watched.anchor
            stats.latency.observe(seen_running, recv - watched.anchor)
