"""How long one model's tasks take, from observations as a poller sees them.

A poller does not see when a task ended, only that it was not done at one poll and done at
the next: the end lies in that interval. Learning "submit to seen done" would learn the
poller's own delay too, and planning from it would make that delay permanent (nothing is
looked at before the fastest task "seen"). So every observation is the interval it is,
``(lo, hi]`` (an exact duration, from the service's own timestamps or a sync call, is
``lo == hi``), and the distribution is the one that best explains all the intervals
together (the self-consistent, Turnbull estimate): the smallest ``lo`` is a true lower
bound (no task took less), the largest ``hi`` a true upper bound, and it sharpens as
observations overlap, whatever the poll schedule was.
"""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np

_KEEP = 256  # the latest observations: latency drifts with the hour, memory stays flat
_EXACT = 1e-6  # an interval narrower than this is an exact duration
_EM_STEPS = 30


class LatencyModel:
    """The distribution of a model's task durations (seconds), interval-censored."""

    def __init__(self, keep: int = _KEEP) -> None:
        self._obs: deque[tuple[float, float]] = deque(maxlen=keep)
        self._xs: list[float] = []  # breakpoints of the piecewise-linear CDF
        self._fs: list[float] = []  # CDF at each breakpoint (jumps included)
        self._slopes: list[float] = []  # CDF slope just right of each breakpoint
        self._floor = 0.0  # the smallest lower end
        self._dirty = False

    def __len__(self) -> int:
        return len(self._obs)

    def observe(self, lo: float, hi: float) -> None:
        """A task that ended after ``lo`` seconds and by ``hi`` seconds."""
        lo = max(0.0, lo)
        hi = max(lo, hi)
        self._obs.append((lo, hi))
        self._dirty = True

    def _build(self) -> None:
        """The self-consistent (Turnbull) estimate: each interval's mass goes where the
        other observations say tasks end, not evenly over its width. An interval from
        sparse polls is wide; spread evenly it would blur the estimate, the planner would
        look too early and too seldom near the real end, and the next intervals would be
        as wide. A few EM steps from the even spread; mass even within each bin."""
        hi = np.fromiter((b for _, b in self._obs), float)
        # an exact duration d is the bin (d - 1 us, d]: done by d counts it
        lo = np.fromiter((min(a, b - _EXACT) for a, b in self._obs), float)
        edges = np.unique(np.concatenate([lo, hi]))
        left, right = edges[:-1], edges[1:]
        cover = (lo[:, None] <= left[None, :]) & (right[None, :] <= hi[:, None])
        share = cover * (right - left)[None, :]
        share /= share.sum(axis=1, keepdims=True)
        mass = share.mean(axis=0)
        for _ in range(_EM_STEPS):
            mass = mass * (cover / (cover @ mass)[:, None]).mean(axis=0)
        cdf = np.concatenate([[0.0], np.cumsum(mass)])
        cdf /= cdf[-1]
        self._xs = edges.tolist()
        self._fs = cdf.tolist()
        self._slopes = [
            (f1 - f0) / (x1 - x0) if x1 > x0 else 0.0
            for x0, x1, f0, f1 in zip(self._xs, self._xs[1:], self._fs, self._fs[1:], strict=False)
        ] + [0.0]
        self._floor = float(lo.min())
        self._dirty = False

    def _ready(self) -> bool:
        if self._dirty:
            self._build()
        return bool(self._xs)

    def cdf(self, t: float) -> float:
        """Share of tasks that took at most ``t`` seconds (0 without history)."""
        if not self._ready():
            return 0.0
        i = bisect.bisect_right(self._xs, t) - 1
        if i < 0:
            return 0.0
        return min(1.0, self._fs[i] + self._slopes[i] * (t - self._xs[i]))

    def quantile(self, q: float) -> float | None:
        """The duration that a share ``q`` of tasks did not exceed (None without history)."""
        if not self._ready():
            return None
        xs, fs = self._xs, self._fs
        i = bisect.bisect_left(fs, q)
        if i == 0:
            return xs[0]
        if i >= len(xs):
            return xs[-1]
        j = i - 1
        if self._slopes[j] > 0:
            return min(xs[i], xs[j] + (q - fs[j]) / self._slopes[j])
        return xs[i]

    @property
    def earliest(self) -> float | None:
        """No task observed took less than this (the smallest lower bound)."""
        return self._floor if self._ready() else None

    @property
    def start(self) -> float | None:
        """Where the estimate's mass begins: the fastest tasks end from here on."""
        if not self._ready():
            return None
        i = bisect.bisect_right(self._fs, 1e-9)  # the first breakpoint with mass up to it
        return self._xs[max(0, i - 1)]

    @property
    def latest(self) -> float | None:
        """Every task observed had ended by this (the largest upper bound)."""
        return self._xs[-1] if self._ready() else None
