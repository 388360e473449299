"""Polling (runner.scheduling): task durations as a poller sees them, the shared query
budget, and the wait for one task to end, against a fake service on a virtual clock."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

import pytest

from runner.errors import Fatal, RateLimited, ServerError, StillRunning
from runner.scheduling import LatencyModel, ModelLane, PollBudget, TaskWatcher
from runner.settings import Quota

try:
    from virtual_loop import run_virtual, wall
except ImportError:  # run from the repository root as a package
    from tests.virtual_loop import run_virtual, wall


# --------------------------------------------------------------------------- a fake service


@dataclass
class State:
    task_id: str
    status: str
    urls: list[str] = field(default_factory=list)
    submit_time: float | None = None
    end_time: float | None = None


@dataclass
class _Task:
    start: float
    end: float  # our clock
    status: str = "SUCCEEDED"


class FakeService:
    """Tasks that end at a set time; a poll takes ``rtt`` and sees the state at its middle.
    With ``stamps`` the answers carry the service's own times, on a clock ``skew`` ahead."""

    def __init__(self, *, rtt: float = 0.02, stamps: bool = False, skew: float = 0.0) -> None:
        self.rtt = rtt
        self.stamps = stamps
        self.skew = skew
        self.tasks: dict[str, _Task] = {}
        self.polls: list[tuple[float, str]] = []  # (our time, task id)
        self.errors: list[Exception] = []  # raised by the next polls, in order
        self.seen_done: dict[str, float] = {}

    def add(self, task_id: str, start: float, seconds: float, status: str = "SUCCEEDED") -> None:
        self.tasks[task_id] = _Task(start, start + seconds, status)

    async def fetch_task(self, task_id: str) -> State:
        self.polls.append((wall(), task_id))
        await asyncio.sleep(self.rtt / 2)
        if self.errors:
            raise self.errors.pop(0)
        task = self.tasks[task_id]
        now = wall()
        done = now >= task.end
        await asyncio.sleep(self.rtt / 2)
        state = State(task_id, task.status if done else "RUNNING")
        if done:
            self.seen_done.setdefault(task_id, wall())
            state.urls = [f"https://results/{task_id}.png"] if task.status == "SUCCEEDED" else []
        if self.stamps:
            state.submit_time = task.start + self.skew
            state.end_time = task.end + self.skew if done else None
        return state

    def detection_delays(self, ids: list[str]) -> list[float]:
        return [self.seen_done[i] - self.tasks[i].end for i in ids]


def lane(name: str = "m", in_flight: int = 2) -> ModelLane:
    return ModelLane(name, Quota(submits_per_second=2, in_flight=in_flight))


def lognormal(median: float, p99: float) -> tuple[float, float]:
    return math.log(median), math.log(p99 / median) / 2.3263


PROFILES: dict[str, Any] = {
    "uniform 2-3 s": lambda r: r.uniform(2, 3),
    "uniform 5-15 s": lambda r: r.uniform(5, 15),
    "lognormal median 8 s, p99 60 s": lambda r: r.lognormvariate(*lognormal(8, 60)),
}


async def _drive(
    service: FakeService,
    lanes: list[ModelLane],
    draw: Any,
    per_lane: int,
    *,
    qps: float = 15,
) -> tuple[PollBudget, dict[str, list[str]]]:
    """Keep every slot of every lane busy: submit, watch until done, submit the next."""
    budget = PollBudget(qps, clock=wall)
    watcher = TaskWatcher(service, budget, timeout_s=900, first_s=0.5)
    rng = random.Random(7)
    ids: dict[str, list[str]] = {ln.name: [] for ln in lanes}

    async def slot(ln: ModelLane, k: int) -> None:
        for i in range(per_lane // (ln.limit or 1)):
            task_id = f"{ln.name}-{k}-{i}"
            submitted = wall()
            service.add(task_id, submitted + service.rtt / 2, draw(rng))
            await asyncio.sleep(service.rtt)  # the submit's own round trip
            state = await watcher.wait_terminal(ln, task_id, started=submitted)
            assert state.status == "SUCCEEDED"
            ids[ln.name].append(task_id)

    await asyncio.gather(*(slot(ln, k) for ln in lanes for k in range(ln.limit or 1)))
    return budget, ids


# --------------------------------------------------------------------------- durations


def test_interval_observations_from_sparse_polls_are_not_biased_late() -> None:
    """Tasks of 2-3 s looked at 0.5, 1.5, 2.5 and 4 s after submit: "submit to seen done"
    says 3.25 s on average and 2.5 s at the fastest; the intervals say what is true."""
    rng = random.Random(7)
    polls = [0.0, 0.5, 1.5, 2.5, 4.0]
    model, seen = LatencyModel(), []
    for _ in range(200):
        true = rng.uniform(2, 3)
        hi = next(p for p in polls if p >= true)
        lo = polls[polls.index(hi) - 1]
        model.observe(lo, hi)
        seen.append(hi)
    assert statistics.median(seen) > 2.9 or min(seen) > 2.4  # the bias is in the data
    assert model.quantile(0.5) == pytest.approx(2.5, abs=0.15)
    assert model.earliest is not None and model.earliest <= 2.0  # never later than the truth
    assert model.cdf(1.4) == 0.0 and model.cdf(4.0) == 1.0


def test_exact_durations_give_their_own_quantiles() -> None:
    model = LatencyModel()
    for s in range(1, 101):
        model.observe(float(s), float(s))
    assert model.quantile(0.5) == pytest.approx(50, abs=1)
    assert model.cdf(25.0) == pytest.approx(0.25, abs=0.01)
    assert (model.earliest, model.latest) == (pytest.approx(1.0, abs=1e-5), 100.0)
    assert LatencyModel().quantile(0.5) is None and LatencyModel().cdf(3.0) == 0.0


def test_only_the_latest_observations_count() -> None:
    model = LatencyModel(keep=50)
    for _ in range(100):
        model.observe(100.0, 100.0)  # an old, slow hour
    for _ in range(50):
        model.observe(10.0, 10.0)
    assert model.quantile(0.99) == pytest.approx(10.0) and len(model) == 50


# --------------------------------------------------------------------------- the watcher


@pytest.mark.parametrize("profile", list(PROFILES))
def test_tasks_are_seen_soon_after_they_end_without_service_timestamps(profile: str) -> None:
    """Three models of two slots share the default budget; every finished task is found
    within 5 % of the median task time on average, and the durations learned from what
    the polls bracket match the true ones (the old planner learned its own delay)."""
    service = FakeService(stamps=False)
    lanes = [lane("a"), lane("b"), lane("c")]
    budget, ids = run_virtual(_drive(service, lanes, PROFILES[profile], per_lane=40))
    every = [i for v in ids.values() for i in v]
    true = [service.tasks[i].end - service.tasks[i].start for i in every]
    later = [i for v in ids.values() for i in v[6:]]  # past the first tasks of each model
    delay = statistics.mean(service.detection_delays(later))
    assert delay < 0.05 * statistics.median(true), (profile, delay)
    learned = lanes[0].stats.latency
    assert learned.earliest is not None and learned.earliest <= min(true) + service.rtt
    assert learned.quantile(0.5) == pytest.approx(statistics.median(true), rel=0.1)
    times = sorted(t for t, _ in service.polls)
    assert budget.polls == len(times)
    # never above the budget's pace: any 16 looks span at least a second
    assert all(b - a >= 1.0 - 1e-6 for a, b in zip(times, times[15:], strict=False))


def test_service_timestamps_give_exact_durations_the_clock_offset_and_detection_delay() -> None:
    service = FakeService(stamps=True, skew=3.0)  # the service's clock is 3 s ahead of ours
    lanes = [lane("a")]
    budget, ids = run_virtual(_drive(service, lanes, PROFILES["uniform 5-15 s"], per_lane=30))
    stats = lanes[0].stats
    true = sorted(service.tasks[i].end - service.tasks[i].start for i in ids["a"])
    assert stats.quantile(0.5) in (pytest.approx(true[14]), pytest.approx(true[15]))
    assert stats.latency.earliest == pytest.approx(true[0], abs=1e-5)
    assert budget.service.offset == pytest.approx(3.0, abs=0.05)
    real = service.detection_delays(ids["a"])
    assert stats.detections == len(ids["a"]) == 30
    assert stats.detection_mean_s == pytest.approx(statistics.mean(real), abs=0.03)
    assert stats.completed == 30


def test_a_resumed_task_23_hours_old_is_polled_at_once_and_learned_only_from_stamps() -> None:
    """A resumed task is learned from the service's timestamps only, never from the
    journal's hours-old submit time."""

    async def go(stamps: bool) -> ModelLane:
        service = FakeService(stamps=stamps)
        ln = lane()
        budget = PollBudget(15, clock=wall)
        watcher = TaskWatcher(service, budget, timeout_s=900, first_s=0.5)
        long_ago = wall() - 23 * 3600
        service.add("old", long_ago, 23 * 3600 + 40)  # still running: ends in 40 s
        start = wall()
        state = await watcher.wait_terminal(ln, "old", age_s=wall() - long_ago)
        assert state.status == "SUCCEEDED"
        assert service.polls[0][0] == pytest.approx(start, abs=0.05)  # looked at it at once
        return ln

    plain = run_virtual(go(False))
    assert len(plain.stats.latency) == 0  # "23 h" would be a lie
    stamped = run_virtual(go(True))
    assert stamped.stats.quantile(0.5) == pytest.approx(23 * 3600 + 40, abs=0.01)
    assert stamped.stats.detections == 1  # it was watched while it ended


def test_the_deadline_counts_from_this_runs_first_poll_and_ends_with_one_more_look() -> None:
    """A task still running at its deadline is polled once more and then kept (StillRunning),
    never closed unseen; the deadline counts from this run's first poll, not the submit."""

    async def go() -> tuple[float, int, str]:
        service = FakeService()
        budget = PollBudget(15, clock=wall)
        watcher = TaskWatcher(service, budget, timeout_s=60, first_s=0.5)
        submitted = wall() - 20 * 60  # a rerun 20 minutes after a crash
        service.add("t", submitted, 10 * 3600)
        start = wall()
        with pytest.raises(StillRunning) as info:
            await watcher.wait_terminal(lane(), "t", age_s=wall() - submitted)
        last = service.polls[-1][0] - start
        return wall() - start, int(last >= 60.0), str(info.value)

    took, looked_after, why = run_virtual(go())
    assert 59.5 <= took <= 61.0
    assert looked_after == 1  # the last look came after the deadline
    assert "kept" in why and "next run" in why


def test_a_task_ending_just_at_its_deadline_is_taken_not_kept() -> None:
    async def go() -> str:
        service = FakeService()
        watcher = TaskWatcher(service, PollBudget(15, clock=wall), timeout_s=30, first_s=40)
        start = wall()
        service.add("t", start, 30.2)  # ends right after the deadline; no look in between
        state = await watcher.wait_terminal(lane(), "t", started=start)
        return str(state.status)

    assert run_virtual(go()) == "SUCCEEDED"


def test_a_clock_that_steps_neither_ends_nor_freezes_a_wait() -> None:
    """The watcher's deadline and the poll budget run on the monotonic clock: the wall clock
    jumping a day forward (NTP, a laptop asleep) or an hour back changes nothing."""
    import time as real_time

    async def go(step: float) -> tuple[float, str]:
        loop = asyncio.get_running_loop()
        service = FakeService()
        budget = PollBudget(15, clock=loop.time)  # a monotonic clock, on the virtual loop
        watcher = TaskWatcher(service, budget, timeout_s=60, first_s=0.5)
        service.add("t", wall(), 30.0)
        original = real_time.time

        async def jump() -> None:  # the wall clock steps while the task runs
            await asyncio.sleep(10.0)
            real_time.time = lambda: original() + step  # type: ignore[assignment]

        jumper = asyncio.ensure_future(jump())
        try:
            state = await watcher.wait_terminal(lane(), "t", started=loop.time())
        finally:
            jumper.cancel()
            real_time.time = original  # type: ignore[assignment]
        return loop.time(), str(state.status)

    for step in (86400.0, -3600.0):
        took, status = run_virtual(go(step))
        assert status == "SUCCEEDED" and 30.0 <= took < 33.0  # seen as it ended, no sooner


def test_failed_polls_are_polled_again_honouring_retry_after_and_fatal_propagates() -> None:
    async def go() -> list[float]:
        service = FakeService()
        budget = PollBudget(15, clock=wall)
        watcher = TaskWatcher(service, budget, timeout_s=900, first_s=0.5)
        start = wall()
        service.add("t", start, 1.0)
        service.errors = [RateLimited("slow down", retry_after=3.0), ServerError("boom")]
        state = await watcher.wait_terminal(lane(), "t", started=start)
        assert state.status == "SUCCEEDED"
        times = [t - start for t, _ in service.polls]
        service.add("f", wall(), 1.0)
        service.errors = [Fatal("InvalidApiKey")]
        with pytest.raises(Fatal):
            await watcher.wait_terminal(lane(), "f", started=wall())
        return times

    times = run_virtual(go())
    assert times[1] - times[0] >= 3.0  # the 429's Retry-After
    assert len(times) >= 3  # the 5xx was polled again too


@pytest.mark.parametrize("status", ["FAILED", "CANCELED", "UNKNOWN"])
def test_every_terminal_status_is_returned_for_the_caller_to_decide(status: str) -> None:
    async def go() -> tuple[str, ModelLane]:
        service = FakeService()
        ln = lane()
        watcher = TaskWatcher(service, PollBudget(15, clock=wall), timeout_s=900, first_s=0.5)
        service.add("t", wall(), 2.0, status=status)
        state = await watcher.wait_terminal(ln, "t", started=wall())
        return state.status, ln

    got, ln = run_virtual(go())
    assert got == status
    assert ln.stats.completed == 0 and len(ln.stats.latency) == 0
    assert ln.stats.failed == (1 if status == "FAILED" else 0)


# --------------------------------------------------------------------------- the budget


def test_budget_is_spent_while_tasks_may_have_ended() -> None:
    """Six t2i tasks of 60-180 s in flight: once they are past the fastest seen, the
    budget is spent on them (not 1 look every few seconds), never above its pace."""

    async def go() -> tuple[int, float]:
        service = FakeService(stamps=True)
        lanes = [lane(n) for n in "abc"]
        for ln in lanes:  # history: 60-180 s
            for k in range(50):
                ln.stats.observe(60 + 120 * k / 49)
        budget = PollBudget(15, clock=wall)
        watcher = TaskWatcher(service, budget, timeout_s=900, first_s=0.5)
        start = wall()
        jobs = []
        for ln in lanes:
            for k in range(2):
                tid = f"{ln.name}{k}"
                service.add(tid, start, 170.0 + k)
                jobs.append(watcher.wait_terminal(ln, tid, started=start))
        await asyncio.gather(*jobs)
        window = [t for t, _ in service.polls if start + 70 <= t < start + 160]
        return len(window), 90.0

    n, span = run_virtual(go())
    assert 0.9 * 15 * span <= n <= 15 * span + 1


async def test_budget_serves_the_most_urgent_first() -> None:
    budget = PollBudget(qps=20)  # one turn every 50 ms
    await budget.wait(0)  # take the free turn: the next ones queue
    order: list[str] = []

    async def poll(name: str, urgency: float) -> None:
        await budget.wait(0, urgency)
        order.append(name)

    tasks = [
        asyncio.create_task(poll(n, u)) for n, u in (("low", 0.1), ("high", 0.9), ("mid", 0.5))
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["high", "mid", "low"]
    assert budget.polls == 4


def test_budget_paces_turns_and_a_429_pauses_it() -> None:
    async def go() -> list[float]:
        budget = PollBudget(qps=10)
        loop = asyncio.get_running_loop()
        times: list[float] = []

        async def poll() -> None:
            await budget.wait(0)
            times.append(loop.time())

        await asyncio.gather(*(poll() for _ in range(5)))
        budget.pause(2.0)
        await poll()
        return times

    times = run_virtual(go())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.1 - 1e-9 for g in gaps[:4])
    assert gaps[4] >= 2.0


async def test_cancelled_poll_waiter_is_dropped() -> None:
    budget = PollBudget(qps=5)
    await budget.wait(0)
    waiter = asyncio.create_task(budget.wait(0))
    for _ in range(5):
        await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(budget.wait(0), 2)


# --------------------------------------------------------------------------- when to look


def _learned(seconds: list[float]) -> ModelLane:
    ln = lane()
    for s in seconds:
        ln.stats.observe(s)
    return ln


def test_a_task_is_first_looked_at_just_before_the_fastest_end_seen() -> None:
    from runner.scheduling import WatchedTask

    cold = WatchedTask(lane(), 100.0, first_s=0.5, fresh=True)
    assert cold.due_at(100.0) == pytest.approx(100.5)  # no history: poll_first_s
    learned = _learned([2.0 + i / 100 for i in range(101)])
    warm = WatchedTask(learned, 100.0, first_s=0.5, fresh=True)
    first = warm.due_at(100.0)
    assert 101.7 <= first < 102.0  # a little before 2 s: a faster task is found early
    warm.polls, warm.last_sent, warm.last_not_done = 1, first, first
    assert 101.9 <= warm.due_at(first) <= 102.0  # then from where tasks start to end
    thin = WatchedTask(_learned([4.0, 5.0, 6.0]), 100.0, first_s=0.5, fresh=True)
    assert thin.due_at(100.0) == pytest.approx(100.5)  # few endings: look early too
    thin.polls, thin.last_sent, thin.last_not_done = 1, 101.0, 101.0
    assert thin.due_at(101.0) == pytest.approx(101.1)  # at the cold pace, 10 % of its age
    resumed = WatchedTask(warm.lane, 100.0 - 3600, first_s=0.5, fresh=False)
    assert resumed.due_at(100.0) == 0.0  # an old task: look at once
    assert resumed.score(100.0) > 1e6


def test_the_score_is_the_time_a_task_may_have_sat_finished_unseen() -> None:
    from runner.scheduling import WatchedTask

    ln = _learned([2.0 + i / 100 for i in range(101)])  # 2-3 s

    def watched(last_seen: float) -> WatchedTask:
        p = WatchedTask(ln, 0.0, first_s=0.5, fresh=True)
        p.polls, p.last_sent, p.last_not_done = 1, last_seen, last_seen
        return p

    near_end = watched(2.8).score(2.9)  # most of those still running at 2.8 end by 2.9
    early = watched(2.0).score(2.1)
    assert near_end > 3 * early > 0
    assert watched(2.5).score(2.9) > watched(2.8).score(2.9)  # looked at longer ago: more owed
    # past everything seen: still owed looks, more the longer it waits (not starved)
    assert watched(3.5).score(5.0) > 4 * watched(3.5).score(4.0) > 0
    assert watched(1.0).score(1.5) < 0.01  # before any task ends: next to nothing


def test_a_task_started_on_the_lifecycles_clock_is_timed_on_the_same_clock() -> None:
    """The lifecycle stamps a submit with time.monotonic(), and the default budget times the
    polls on that clock too: a task with no service timestamps is learned at its real length
    (before: the wall clock minus the monotonic one, about 1.8e9 s) and its deadline is not
    moved by a wall-clock step."""
    import time

    answers = iter(["RUNNING", "SUCCEEDED"])

    class Client:
        async def fetch_task(self, task_id: str) -> State:
            status = next(answers)
            urls = [f"https://r/{task_id}.png"] if status == "SUCCEEDED" else []
            return State(task_id, status, urls)

    async def go() -> ModelLane:
        ln = lane()
        watcher = TaskWatcher(Client(), PollBudget(50.0), timeout_s=30.0, first_s=0.01)
        await watcher.wait_terminal(ln, "t-1", started=time.monotonic())
        return ln

    learned = asyncio.run(go()).stats.quantile(0.5)
    assert learned is not None and 0.0 <= learned < 5.0
