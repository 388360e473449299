"""When to look at one task next, and how likely a look is to find it done.

A watched task is a ``TaskPlan``: when it started (our clock), when it was last looked at,
and its model's learned durations. The shared ``PollBudget`` asks every waiting plan when
it is worth a look (``due_at``) and, among those due, takes the one most likely to have
ended since its last look (``score``): while the budget is not exhausted every task near or
past its likely end is seen often; when it is short, the most likely done goes first.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable

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


class TaskPlan:
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
