"""One model's lane: its in-flight slots, submit pacing and (for a quota that is not
published) the in-flight limit it learns.

``ModelLane`` paces submits per model at exactly what the quota's window allows
(``submit_window.SubmitWindow``; a 429 pauses it one turn), and, for quotas that are not published,
learns the in-flight limit (AIMD): down to what the server accepted on a 429, one slot up
after a quiet spell at the limit (counted in completions, so it does not depend on the time
scale); a probe that draws a 429 makes the next one wait longer. A model with no in-flight
limit (``Quota.in_flight`` None: the sync qwen-image-edit) is bounded by its submit rate:
its slots open as its submit turns come. ``lanes.LanePool`` hands the slots out.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import structlog

from runner.models import caps
from runner.scheduling.latency import LatencyModel
from runner.scheduling.submit_window import SubmitWindow
from runner.settings import Quota

log = structlog.get_logger(__name__)

_QUIET_TURNS = 2  # a quiet spell: this many completions per slot with no 429
_PROBE_BACKOFF = 8  # each probe that draws a 429 makes the next spell this much longer
_MAX_SPELL_FACTOR = _PROBE_BACKOFF**3
_UNBOUNDED = 1 << 30  # "no in-flight limit": free slots of a rate-bound lane


class LaneStats:
    """What one model did this run: counts, task durations, detection delays."""

    def __init__(self) -> None:
        self.submits = 0
        self.throttled = 0
        self.completed = 0
        self.failed = 0
        self.max_in_flight = 0
        self.latency = LatencyModel()
        # first "done" poll minus the task's true end (service timestamps only)
        self.detections = 0
        self.detection_sum_s = 0.0
        self.detection_max_s = 0.0

    def observe(self, seconds: float) -> None:
        """A task duration known exactly (a sync call, or the service's own timestamps)."""
        self.latency.observe(seconds, seconds)

    def quantile(self, q: float) -> float | None:
        return self.latency.quantile(q)

    def detected(self, delay_s: float) -> None:
        delay_s = max(0.0, delay_s)
        self.detections += 1
        self.detection_sum_s += delay_s
        self.detection_max_s = max(self.detection_max_s, delay_s)

    @property
    def detection_mean_s(self) -> float | None:
        return self.detection_sum_s / self.detections if self.detections else None


class ModelLane:
    """One model's slots, submit pacing and (for an unpublished quota) learned limit."""

    def __init__(self, name: str, quota: Quota, *, quiet_turns: int = _QUIET_TURNS) -> None:
        self.name = name
        self.quota = quota
        self.limit: int | None = quota.in_flight
        self.in_flight = 0
        self.stats = LaneStats()
        self.submit_window = SubmitWindow(quota.submits_per_second)
        self._quiet_turns = quiet_turns
        self._spell_factor = 1
        self._probed = False  # the current limit came from a probe not yet confirmed
        self._mark_completed = 0  # stats.completed when the limit last changed / 429'd
        self.raises = 0
        # how long a call may take before any is seen: the slowest documented latency of
        # the model's kind (runner.models), or what doctor --live measured (learned.py)
        self.prior_s = caps(name).latency_s[1]

    @property
    def rate_bound(self) -> bool:
        """No in-flight limit: only the submit rate (and the pool's cap) bounds it."""
        return self.limit is None

    @property
    def learned(self) -> bool:
        return bool(self.quota.learn) and self.limit is not None

    def need(self) -> int:
        """Slots this model can keep busy: its in-flight limit (a learned one: the most it
        may probe up to), or for a rate-bound lane its call rate times the slowest latency
        likely (p90 seen, else the prior), plus the call being handed out."""
        if self.limit is not None:
            return self.quota.max_in_flight if self.learned else self.limit
        p90 = self.stats.quantile(0.9)
        latency = p90 if p90 is not None else self.prior_s
        return math.ceil(self.quota.submits_per_second * latency) + 1

    @property
    def free(self) -> int:
        if self.limit is None:
            return _UNBOUNDED
        return max(0, self.limit - self.in_flight)

    def opens_in(self, now: float) -> float:
        """Seconds until a rate-bound lane hands out its next slot (0: now)."""
        return self.submit_window.opens_in(now) if self.limit is None else 0.0

    def _granted(self, now: float) -> None:
        if self.limit is None:  # book this holder's submit turn: the next slot opens after
            self.submit_window.book(now)

    async def submit_gate(self) -> None:
        """Wait for this model's next submit turn.

        The turn is taken when the caller actually passes, not reserved ahead: a loop that
        lags would otherwise wake several reserved turns at once and send them together.
        """
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            at = self.submit_window.next_at(now)
            if at <= now:
                self.submit_window.take(now)
                break
            await asyncio.sleep(at - now)
        self.stats.submits += 1

    def record_sync(self, seconds: float) -> None:
        """A sync call answered with a result after ``seconds`` (its duration is exact)."""
        self.stats.observe(seconds)
        self.stats.completed += 1

    def on_throttled(self) -> None:
        """A 429 on this model, called while the refused row still holds its slot.

        For a learned quota the slots the server accepted are the ones in flight but this
        one, so the limit drops to that (multiplicative enough: a burst of 429s converges
        on the true limit, not below it). A probe that failed makes the next one wait
        longer. Known quotas keep their limit. Either way new submits pause one turn:
        that is the only backoff the pacing takes.
        """
        self.stats.throttled += 1
        if self.learned and self.limit is not None:
            old = self.limit
            self.limit = max(1, min(self.limit, self.in_flight - 1))
            if self._probed:
                self._spell_factor = min(self._spell_factor * _PROBE_BACKOFF, _MAX_SPELL_FACTOR)
                self._probed = False
            if self.limit != old:
                log.info(
                    "quota_learned_down",
                    model=self.name,
                    limit=self.limit,
                    was=old,
                    next_probe_after=self.spell_needed,
                )
        self._mark_completed = self.stats.completed
        self._pause()

    def _pause(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (tests): nothing to pace
            return
        self.submit_window.pause(loop.time())

    @property
    def spell_needed(self) -> int:
        """Completions with no 429 before the next probe upward."""
        return self._quiet_turns * (self.limit or 1) * self._spell_factor

    def maybe_probe_up(self) -> bool:
        """Called when a waiter finds this lane full: after a quiet spell at the limit,
        try one more slot (additive increase). True when the limit was raised."""
        if not self.learned or self.limit is None or self.limit >= self.quota.max_in_flight:
            return False
        if self.in_flight < self.limit:
            return False
        if self.stats.completed - self._mark_completed < self.spell_needed:
            return False
        if self._probed:  # the last probe held a whole spell
            self._spell_factor = max(1, self._spell_factor // _PROBE_BACKOFF)
        self.limit += 1
        self.raises += 1
        self._probed = True
        self._mark_completed = self.stats.completed
        log.info("quota_probe_up", model=self.name, limit=self.limit)
        return True

    def set_learned(self, limit: int) -> None:
        """Start from a limit a previous run learned (learned quotas only)."""
        if not self.learned:
            return
        new = max(1, min(int(limit), self.quota.max_in_flight))
        if new != self.limit:
            log.info("quota_learned_loaded", model=self.name, limit=new, setting=self.limit)
        self.limit = new

    def view(self) -> dict[str, Any]:
        p50, p90 = self.stats.quantile(0.5), self.stats.quantile(0.9)
        det = self.stats.detection_mean_s
        return {
            "model": self.name,
            "in_flight": self.in_flight,
            "limit": self.limit,
            "learned": self.learned,
            "setting": self.quota.in_flight,
            "submits": self.stats.submits,
            "throttled": self.stats.throttled,
            "completed": self.stats.completed,
            "failed": self.stats.failed,
            "max_in_flight": self.stats.max_in_flight,
            "need": self.need(),
            "p50_s": round(p50, 2) if p50 is not None else None,
            "p90_s": round(p90, 2) if p90 is not None else None,
            "detections": self.stats.detections,
            "detection_mean_s": round(det, 4) if det is not None else None,
        }
