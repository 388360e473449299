"""The throughput brain: per-model slots (lanes), learned quotas, poll planning, poll budget.

DashScope caps each model at a few tasks in flight and a few submits a second, and task
queries at 20 a second per account. Speed is how fully every allowed model's slots stay
busy, so:

* ``LanePool.acquire(models)`` is work-conserving: a waiter gets the most preferred model
  of its list that has a free slot, and no slot stays idle while a waiter could use it.
  Waiters with different model lists (task types) that share a model share its slots
  fairly: the class holding fewer slots goes first, then the one that prefers the model.
* ``ModelLane`` paces submits per model and, for quotas that are not published, learns the
  in-flight limit (AIMD): down to what the server accepted on a 429, one slot up after a
  quiet spell at the limit (counted in completions, so it does not depend on the time
  scale); a probe that draws a 429 makes the next one wait four times longer.
  ``save_learned`` / ``load_learned`` keep what was learned for the next run.
* ``plan_poll_delay`` plans a task's next query from the latency seen so far for its model;
  ``PollBudget`` spends one shared budget, most likely finished task first
  (``poll_urgency``).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import json
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import structlog

from .settings import Quota

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

LEARNED_NAME = "learned_quotas.json"  # under --out: what a run learned, for the next one

_SUBMIT_MARGIN = (
    1.5  # submits spaced 1.5/rate: request sizes and processing vary, windows are exact
)
_QUIET_TURNS = 2  # a quiet spell: this many completions per slot with no 429
_PROBE_BACKOFF = 8  # each probe that draws a 429 makes the next spell this much longer
_MAX_SPELL_FACTOR = _PROBE_BACKOFF**3
_KEEP_LATENCIES = 2000


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
        if len(self.latencies) > _KEEP_LATENCIES:  # keep memory flat on long runs
            del self.latencies[::2]

    def quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        i = min(len(self.latencies) - 1, max(0, round(q * (len(self.latencies) - 1))))
        return self.latencies[i]

    def cdf(self, seconds: float) -> float:
        """Share of observed tasks that took at most ``seconds`` (0 without history)."""
        n = len(self.latencies)
        return bisect.bisect_right(self.latencies, seconds) / n if n else 0.0


class ModelLane:
    """One model's slots, submit pacing and (for an unpublished quota) learned limit."""

    def __init__(
        self,
        name: str,
        quota: Quota,
        *,
        quiet_turns: int = _QUIET_TURNS,
        quiet_s: float = 0.0,
    ) -> None:
        self.name = name
        self.quota = quota
        self.limit = quota.in_flight
        self.in_flight = 0
        self.stats = LaneStats()
        self._next_submit = 0.0
        self._interval = _SUBMIT_MARGIN / quota.submits_per_second
        self._quiet_turns = quiet_turns
        self._quiet_s = quiet_s  # optional wall-clock floor on a quiet spell
        self._spell_factor = 1
        self._probed = False  # the current limit came from a probe not yet confirmed
        self._floor = 0  # the highest limit that held a whole quiet spell (proven)
        self._strike: int | None = None  # stats.completed at a 429 forgiven at a proven level
        self._mark_completed = 0  # stats.completed when the limit last changed / 429'd
        self._mark_time = time.monotonic()
        self.raises = 0
        self.decreases = 0

    @property
    def free(self) -> int:
        return max(0, self.limit - self.in_flight)

    @property
    def learned(self) -> bool:
        return self.quota.learn

    async def submit_gate(self) -> None:
        """Wait for this model's next submit turn.

        The turn is taken when the caller actually passes, not reserved ahead: a loop that
        lags would otherwise wake several reserved turns at once and send them together.
        """
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if now >= self._next_submit:
                self._next_submit = now + self._interval
                break
            await asyncio.sleep(self._next_submit - now)
        self.stats.submits += 1

    def on_throttled(self) -> None:
        """A 429 on this model, called while the refused row still holds its slot.

        For a learned quota the slots the server accepted are the ones in flight but this
        one, so the limit drops to that (multiplicative enough: a burst of 429s converges
        on the true limit, not below it). A probe that failed makes the next one wait
        longer. At a proven limit (one that held a whole quiet spell) a lone 429 is more
        likely the submit rate (request sizes make arrivals uneven) than the slots: it is
        forgiven once per spell. Known quotas keep their limit. Either way new submits
        pause one interval.
        """
        self.stats.throttled += 1
        if self.quota.learn:
            old = self.limit
            forgive = (
                self.limit <= self._floor
                and not self._probed
                and (
                    self._strike is None or self.stats.completed - self._strike >= self.spell_needed
                )
            )
            if forgive:
                self._strike = self.stats.completed
                log.info("quota_429_forgiven", model=self.name, limit=self.limit)
                self._pause()
                return
            self.limit = max(1, min(self.limit, self.in_flight - 1))
            self._floor = min(self._floor, self.limit)
            if self._probed:
                self._spell_factor = min(self._spell_factor * _PROBE_BACKOFF, _MAX_SPELL_FACTOR)
                self._probed = False
            if self.limit != old:
                self.decreases += 1
                log.info(
                    "quota_learned_down",
                    model=self.name,
                    limit=self.limit,
                    was=old,
                    next_probe_after=self.spell_needed,
                )
        self._mark_completed = self.stats.completed
        self._mark_time = time.monotonic()
        self._pause()

    def _pause(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (tests): nothing to pace
            return
        self._next_submit = max(self._next_submit, loop.time() + self._interval)

    @property
    def spell_needed(self) -> int:
        """Completions with no 429 before the next probe upward."""
        return self._quiet_turns * self.limit * self._spell_factor

    def maybe_probe_up(self) -> bool:
        """Called when a waiter finds this lane full: after a quiet spell at the limit,
        try one more slot (additive increase). True when the limit was raised."""
        if not self.quota.learn or self.limit >= self.quota.max_in_flight:
            return False
        if self.in_flight < self.limit:
            return False
        if self.stats.completed - self._mark_completed < self.spell_needed:
            return False
        if self._quiet_s and time.monotonic() - self._mark_time < self._quiet_s:
            return False
        if self._probed:  # the last probe held a whole spell
            self._spell_factor = max(1, self._spell_factor // _PROBE_BACKOFF)
        self._floor = max(self._floor, self.limit)  # this limit held a whole spell
        self.limit += 1
        self.raises += 1
        self._probed = True
        self._mark_completed = self.stats.completed
        self._mark_time = time.monotonic()
        log.info("quota_probe_up", model=self.name, limit=self.limit)
        return True

    def set_learned(self, limit: int) -> None:
        """Start from a limit a previous run learned (learned quotas only)."""
        if not self.quota.learn:
            return
        new = max(1, min(int(limit), self.quota.max_in_flight))
        if new != self.limit:
            log.info("quota_learned_loaded", model=self.name, limit=new, setting=self.limit)
        self.limit = new

    def view(self) -> dict[str, Any]:
        p50, p90 = self.stats.quantile(0.5), self.stats.quantile(0.9)
        return {
            "model": self.name,
            "in_flight": self.in_flight,
            "limit": self.limit,
            "learned": self.quota.learn,
            "setting": self.quota.in_flight,
            "submits": self.stats.submits,
            "throttled": self.stats.throttled,
            "completed": self.stats.completed,
            "failed": self.stats.failed,
            "max_in_flight": self.stats.max_in_flight,
            "p50_s": round(p50, 2) if p50 is not None else None,
            "p90_s": round(p90, 2) if p90 is not None else None,
        }


# --------------------------------------------------------------------------- the pool

Klass = tuple[str, ...]  # a waiter's model list: waiters with the same list are one class


@dataclass
class _Waiter:
    seq: int
    fut: asyncio.Future[ModelLane]
    owner: asyncio.Task[Any] | None


class LanePool:
    """Hands out model slots under each model's limit and one overall cap."""

    def __init__(self, lanes: dict[str, ModelLane], total_cap: int) -> None:
        self.lanes = lanes
        self.total_cap = total_cap
        self.total = 0
        self._queues: dict[Klass, deque[_Waiter]] = {}
        self._held: Counter[Klass] = Counter()
        self._owned: dict[asyncio.Task[Any] | None, list[tuple[str, Klass]]] = {}
        self._seq = itertools.count()
        self.grants: Counter[tuple[Klass, str]] = Counter()

    # -- bookkeeping ----------------------------------------------------------
    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _best(self, klass: Klass) -> tuple[int, ModelLane] | None:
        """(rank, lane) of the most preferred lane of ``klass`` with a free slot."""
        for rank, name in enumerate(klass):
            lane = self.lanes.get(name)
            if lane is None:
                continue
            if lane.free <= 0:
                lane.maybe_probe_up()  # demand at the limit: maybe one more slot
            if lane.free > 0:
                return rank, lane
        return None

    def _take(self, lane: ModelLane, klass: Klass, owner: asyncio.Task[Any] | None) -> ModelLane:
        lane.in_flight += 1
        self.total += 1
        lane.stats.max_in_flight = max(lane.stats.max_in_flight, lane.in_flight)
        self._held[klass] += 1
        self._owned.setdefault(owner, []).append((lane.name, klass))
        self.grants[(klass, lane.name)] += 1
        return lane

    def _forget(self, lane: ModelLane) -> None:
        """Which class held the slot being released: the releasing task's, else any."""
        owner = _current_task()
        for key in (owner, *self._owned):
            held = self._owned.get(key)
            if not held:
                continue
            for i, (name, klass) in enumerate(held):
                if name == lane.name:
                    del held[i]
                    if not held:
                        del self._owned[key]
                    self._held[klass] -= 1
                    return

    # -- API ------------------------------------------------------------------
    async def acquire(self, models: Sequence[str]) -> ModelLane:
        """A slot of the most preferred of ``models`` that has one free (waits if none)."""
        klass: Klass = tuple(models)
        owner = _current_task()
        if not self.waiting and self.total < self.total_cap:
            best = self._best(klass)
            if best is not None:
                return self._take(best[1], klass, owner)
        fut: asyncio.Future[ModelLane] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(next(self._seq), fut, owner)
        self._queues.setdefault(klass, deque()).append(waiter)
        self._dispatch()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # granted just as we were cancelled
            else:
                queue = self._queues.get(klass)
                if queue is not None:
                    try:
                        queue.remove(waiter)
                    except ValueError:
                        pass
            raise

    def release(self, lane: ModelLane) -> None:
        lane.in_flight -= 1
        self.total -= 1
        self._forget(lane)
        self._dispatch()

    def kick(self) -> None:
        """Re-run the hand-out (after a limit changed outside acquire/release)."""
        self._dispatch()

    def _dispatch(self) -> None:
        while self.total < self.total_cap:
            choice: tuple[tuple[int, int, int], Klass, ModelLane] | None = None
            for klass, queue in self._queues.items():
                while queue and queue[0].fut.done():  # cancelled waiters
                    queue.popleft()
                if not queue:
                    continue
                best = self._best(klass)
                if best is None:
                    continue
                rank, lane = best
                # fewest slots held first, then the class that prefers this model,
                # then the oldest waiter
                key = (self._held[klass], rank, queue[0].seq)
                if choice is None or key < choice[0]:
                    choice = (key, klass, lane)
            if choice is None:
                return
            _, klass, lane = choice
            waiter = self._queues[klass].popleft()
            waiter.fut.set_result(self._take(lane, klass, waiter.owner))

    def views(self) -> list[dict[str, Any]]:
        return [lane.view() for lane in self.lanes.values()]


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


# --------------------------------------------------------------------------- learned quotas


def save_learned(
    lanes: Mapping[str, ModelLane] | Iterable[ModelLane], path: Path
) -> dict[str, int]:
    """Write the learned limits (learned quotas only) to ``path`` atomically; log them."""
    items = lanes.values() if isinstance(lanes, Mapping) else lanes
    learned = {lane.name: lane for lane in items if lane.quota.learn}
    data: dict[str, Any] = {}
    if path.is_file():  # keep what other runs learned of models this run did not use
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old, dict) and isinstance(old.get("models"), dict):
                data = dict(old["models"])
        except (OSError, ValueError):
            data = {}
    for name, lane in learned.items():
        if lane.stats.submits == 0 and name in data:
            continue  # nothing new was learned of it
        data[name] = {
            "limit": lane.limit,
            "setting": lane.quota.in_flight,
            "submits": lane.stats.submits,
            "throttled": lane.stats.throttled,
            "saved_at": round(time.time(), 3),
        }
        log.info(
            "quota_learned",
            model=name,
            limit=lane.limit,
            setting=lane.quota.in_flight,
            submits=lane.stats.submits,
            throttled=lane.stats.throttled,
        )
    body = json.dumps({"version": 1, "models": data}, indent=1, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {name: int(v["limit"]) for name, v in data.items()}


def load_learned(path: Path) -> dict[str, int]:
    """The limits a previous run learned ({} when there is no usable file)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        return {}
    out: dict[str, int] = {}
    for name, entry in models.items():
        limit = entry.get("limit") if isinstance(entry, dict) else entry
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
            out[str(name)] = limit
    return out


def apply_learned(lanes: Mapping[str, ModelLane], learned: Mapping[str, int]) -> None:
    """Start each learned lane from the limit a previous run kept."""
    for name, limit in learned.items():
        lane = lanes.get(name)
        if lane is not None:
            lane.set_learned(limit)


# --------------------------------------------------------------------------- polling


@dataclass
class _PollWaiter:
    seq: int
    fut: asyncio.Future[None]
    urgency: Callable[[], float] | float | None


def _urgency_of(w: _PollWaiter) -> float:
    u = w.urgency
    if u is None:
        return 1.0
    if callable(u):
        try:
            return float(u())
        except Exception:  # a broken estimate must not stall polling
            return 1.0
    return float(u)


class PollBudget:
    """One account-wide pace for task queries (the service allows 20 a second).

    ``wait(delay, urgency=...)`` sleeps ``delay`` and then takes a polling turn. Turns are
    ``1/qps`` apart; when several tasks are due at once the most urgent goes first (the one
    most likely to have finished since it was last looked at, see ``poll_urgency``), so a
    busy budget is spent where it finds results.
    """

    def __init__(self, qps: float) -> None:
        self.qps = qps
        self.interval = 1.0 / qps
        self._next = 0.0  # loop time of the next free turn
        self._due: list[_PollWaiter] = []
        self._timer: asyncio.TimerHandle | None = None
        self._seq = itertools.count()
        self.polls = 0
        self.queued = 0  # turns that had to wait for the budget
        self.max_queue = 0

    async def wait(self, delay: float, urgency: Callable[[], float] | float | None = None) -> None:
        """Sleep ``delay``, then take the next polling turn (the most urgent first)."""
        if delay > 0:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._due and now >= self._next:
            self._next = now + self.interval
            self.polls += 1
            return
        fut: asyncio.Future[None] = loop.create_future()
        waiter = _PollWaiter(next(self._seq), fut, urgency)
        self._due.append(waiter)
        self.queued += 1
        self.max_queue = max(self.max_queue, len(self._due))
        self._arm(loop)
        try:
            await fut
        except asyncio.CancelledError:
            if not fut.done() or fut.cancelled():
                try:
                    self._due.remove(waiter)
                except ValueError:
                    pass
            raise

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self._due:
            self._timer = loop.call_at(max(loop.time(), self._next), self._grant, loop)

    def _grant(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._due = [w for w in self._due if not w.fut.done()]
        if not self._due:
            return
        best = max(self._due, key=lambda w: (_urgency_of(w), -w.seq))
        self._due.remove(best)
        now = loop.time()
        self._next = max(now, self._next) + self.interval
        self.polls += 1
        best.fut.set_result(None)
        self._arm(loop)


_MIN_GAP_S = 0.005  # never poll one task faster than this
_MAX_GAP_S = 1.5  # never notice a finished task more than this late (with history)
_GAP_SHARE = 0.04  # gap between polls of one task: this share of its model's p50


def plan_poll_delay(
    lane: ModelLane, elapsed: float, polls_done: int, first_s: float = 0.5
) -> float:
    """When to look at a task next, from what this model's tasks have taken so far.

    Without history: first_s x (1, 2, 2, 3, ...): the first tasks of a model are found
    within 1.5 s at the default. With history: nothing before the fastest task seen so far
    (less one gap), then every 4 % of the median latency (a 10 s task: every 0.4 s, so a
    finished task is seen about 0.2 s late on average), clamped to 5 ms - 1.5 s. The
    shared budget decides who goes first when many are due at once.
    """
    lats = lane.stats.latencies
    if not lats:
        steps = (1.0, 2.0, 2.0)
        return first_s * (steps[polls_done] if polls_done < len(steps) else 3.0)
    p50 = lats[len(lats) // 2]
    gap = min(max(_GAP_SHARE * p50, _MIN_GAP_S), _MAX_GAP_S)
    earliest = lats[0] - gap  # observed latencies include our own detection delay
    if elapsed < earliest:
        return earliest - elapsed
    return gap


def poll_urgency(
    lane: ModelLane,
    submitted_at: float,
    last_elapsed: float,
    clock: Callable[[], float] = time.time,
) -> Callable[[], float]:
    """How likely a task is to have finished since it was last looked at (0..1), for
    ``PollBudget.wait``: P(done by now | not done at the last poll), from the latencies seen
    for its model. ``submitted_at`` and ``clock`` share a time base (wall clock by
    default, as the journal keeps it). Without history: how long it has waited, in
    proportion to a minute, so the oldest goes first."""
    stats = lane.stats

    def urgency() -> float:
        elapsed = clock() - submitted_at
        if not stats.latencies:
            return min(0.99, max(0.0, elapsed) / 60.0)
        before = stats.cdf(last_elapsed)
        now = stats.cdf(elapsed)
        if before >= 1.0:
            return 1.0  # slower than anything seen: overdue, look now
        return max(0.0, (now - before) / (1.0 - before))

    return urgency


def expected_finish(lane: ModelLane, submitted_at: float) -> float | None:
    """When a task of this model is expected to end (submitted_at + median), or None."""
    p50 = lane.stats.quantile(0.5)
    return None if p50 is None else submitted_at + p50


# --------------------------------------------------------------------------- CPU work

BACKGROUND_NICE = 10  # image work yields the CPU to the event loop (and to the emulator)


def _lower_priority() -> None:
    """Thread initializer: lower this thread's CPU priority (Linux nice is per thread)."""
    try:
        os.setpriority(
            os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE)
        )
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


class CpuPool:
    """Threads for blocking CPU work (decoding, resizing, encoding images) at a lower CPU
    priority than the event loop's thread.

    With image work on asyncio's default executor, six busy threads share two cores with
    the loop thread: the loop then runs late (polls and submits after a slot frees are
    late, and slots idle). Here the work yields the CPU to the loop whenever the loop has
    something to do. Use what releases the GIL (OpenCV, Pillow decoders) inside.
    """

    def __init__(self, workers: int | None = None) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
        self.workers = workers or max(1, cores)
        self._executor: ThreadPoolExecutor | None = None

    def _get(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.workers,
                thread_name_prefix="cpu",
                initializer=_lower_priority,
            )
        return self._executor

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._get(), functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
