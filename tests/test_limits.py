"""The throughput brain (runner.limits): lanes, fairness, AIMD, persistence, polling."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
from pathlib import Path

import pytest

from runner.limits import (
    CpuPool,
    LanePool,
    ModelLane,
    PollBudget,
    apply_learned,
    load_learned,
    plan_poll_delay,
    poll_urgency,
    save_learned,
)
from runner.settings import Quota


def lanes(**limits: int) -> dict[str, ModelLane]:
    return {
        name: ModelLane(name, Quota(submits_per_second=1000, in_flight=n))
        for name, n in limits.items()
    }


def learned_lane(name: str = "m", start: int = 2, ceiling: int = 8) -> ModelLane:
    quota = Quota(submits_per_second=1000, in_flight=start, learn=True, max_in_flight=ceiling)
    return ModelLane(name, quota)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- the pool


async def test_most_preferred_free_model_first() -> None:
    pool = LanePool(lanes(a=1, b=1), total_cap=10)
    first = await pool.acquire(["a", "b"])
    second = await pool.acquire(["a", "b"])
    assert (first.name, second.name) == ("a", "b")


async def test_work_conserving_a_blocked_waiter_does_not_hold_up_a_free_model() -> None:
    pool = LanePool(lanes(a=1, b=1), total_cap=10)
    await pool.acquire(["a"])  # a is now full
    blocked = asyncio.create_task(pool.acquire(["a"]))
    await settle()
    later = await asyncio.wait_for(pool.acquire(["b"]), 1)  # b is free: no waiting behind
    assert later.name == "b" and not blocked.done()
    pool.release(pool.lanes["a"])
    assert (await asyncio.wait_for(blocked, 1)).name == "a"


async def test_a_freed_slot_goes_to_a_waiter_at_once() -> None:
    pool = LanePool(lanes(a=1, b=1), total_cap=10)
    held_a, held_b = await pool.acquire(["a", "b"]), await pool.acquire(["a", "b"])
    waiter = asyncio.create_task(pool.acquire(["a", "b"]))
    await settle()
    assert not waiter.done()
    pool.release(held_b)  # its second choice frees first: it takes that, not wait for a
    assert (await asyncio.wait_for(waiter, 1)).name == "b"
    assert held_a.in_flight == 1


async def test_total_cap() -> None:
    pool = LanePool(lanes(a=3, b=3), total_cap=2)
    await pool.acquire(["a"])
    await pool.acquire(["b"])
    third = asyncio.create_task(pool.acquire(["a", "b"]))
    await settle()
    assert not third.done() and pool.total == 2
    pool.release(pool.lanes["a"])
    await asyncio.wait_for(third, 1)


async def test_classes_sharing_one_model_take_turns() -> None:
    """Two task types that can only use the same model: not first come, all served."""
    pool = LanePool(lanes(shared=2), total_cap=10)
    order: list[str] = []

    async def row(kind: str) -> None:
        lane = await pool.acquire(["shared"] if kind == "tie" else ["shared", "shared"])
        order.append(kind)
        await asyncio.sleep(0.001)
        pool.release(lane)

    # every tie row queued before any vttie row
    rows = [asyncio.create_task(row("tie")) for _ in range(10)]
    await settle()
    rows += [asyncio.create_task(row("vttie")) for _ in range(10)]
    await asyncio.wait_for(asyncio.gather(*rows), 5)
    first_half = order[:10]
    assert 3 <= first_half.count("vttie") <= 7, order  # shared, not tie first


async def test_fair_split_keeps_each_type_on_its_preferred_model() -> None:
    """tie prefers edit-x, vttie prefers edit-y; with both queues long, each keeps its own
    model and neither is starved."""
    pool = LanePool(lanes(x=2, y=3), total_cap=10)
    grants: list[tuple[str, str]] = []

    async def row(kind: str, models: list[str]) -> None:
        lane = await pool.acquire(models)
        grants.append((kind, lane.name))
        await asyncio.sleep(0.002)
        pool.release(lane)

    rows = [asyncio.create_task(row("tie", ["x", "y"])) for _ in range(30)]
    rows += [asyncio.create_task(row("vttie", ["y", "x"])) for _ in range(30)]
    await asyncio.wait_for(asyncio.gather(*rows), 5)
    busy = grants[:40]  # while both queues are long
    assert 12 <= sum(k == "tie" for k, _ in busy) <= 28, grants
    mismatched = sum(1 for k, m in busy if (k == "tie" and m == "y") or (k == "vttie" and m == "x"))
    assert mismatched <= 10, grants


async def test_cancelled_waiter_leaves_the_queue() -> None:
    pool = LanePool(lanes(a=1), total_cap=10)
    held = await pool.acquire(["a"])
    waiter = asyncio.create_task(pool.acquire(["a"]))
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.release(held)
    assert pool.lanes["a"].in_flight == 0 and pool.waiting == 0


async def test_views_report_slots_and_latency() -> None:
    pool = LanePool(lanes(a=2), total_cap=10)
    lane = await pool.acquire(["a"])
    for s in (4.0, 6.0, 8.0, 10.0, 12.0):
        lane.stats.observe(s)
    (view,) = pool.views()
    assert view["in_flight"] == 1 and view["limit"] == 2 and view["p50_s"] == 8.0


# --------------------------------------------------------------------------- AIMD


async def test_learned_limit_drops_to_what_the_server_accepted() -> None:
    lane = learned_lane(start=6)
    pool = LanePool({"m": lane}, total_cap=10)
    held = [await pool.acquire(["m"]) for _ in range(6)]
    # the server took 3: each of the other 3 gets a 429 while holding its slot
    for _ in range(3):
        lane.on_throttled()
        pool.release(held.pop())
    assert lane.limit == 3 and lane.stats.throttled == 3


def test_known_quota_keeps_its_limit_on_429() -> None:
    lane = ModelLane("k", Quota(submits_per_second=1000, in_flight=2))
    lane.in_flight = 2
    lane.on_throttled()
    assert lane.limit == 2


def test_limit_never_below_one() -> None:
    lane = learned_lane(start=1)
    lane.in_flight = 1
    lane.on_throttled()
    assert lane.limit == 1


def _complete(lane: ModelLane, n: int) -> None:
    lane.stats.completed += n


def test_probe_up_after_a_quiet_spell_at_the_limit_only() -> None:
    lane = learned_lane(start=2, ceiling=3)
    lane.in_flight = 2
    assert not lane.maybe_probe_up()  # no spell yet
    _complete(lane, lane.spell_needed)
    lane.in_flight = 1
    assert not lane.maybe_probe_up()  # not at the limit: no demand for more
    lane.in_flight = 2
    assert lane.maybe_probe_up() and lane.limit == 3
    lane.in_flight = 3
    _complete(lane, 100)
    assert not lane.maybe_probe_up() and lane.limit == 3  # the ceiling


def test_a_failed_probe_makes_the_next_one_wait_longer() -> None:
    lane = learned_lane(start=2)
    lane.in_flight = 2
    base = lane.spell_needed
    _complete(lane, base)
    assert lane.maybe_probe_up() and lane.limit == 3
    lane.in_flight = 3
    lane.on_throttled()  # the probe drew a 429
    assert lane.limit == 2
    assert lane.spell_needed == 8 * base
    lane.in_flight = 2
    _complete(lane, base)
    assert not lane.maybe_probe_up()
    _complete(lane, 7 * base)
    assert lane.maybe_probe_up()


def test_a_lone_429_at_a_proven_limit_costs_no_slot() -> None:
    lane = learned_lane(start=2)
    lane.in_flight = 2
    _complete(lane, lane.spell_needed)
    assert lane.maybe_probe_up() and lane.limit == 3
    lane.in_flight = 3
    _complete(lane, lane.spell_needed)
    assert lane.maybe_probe_up() and lane.limit == 4  # 3 is proven now
    lane.in_flight = 4
    lane.on_throttled()  # the probe to 4 failed
    assert lane.limit == 3
    lane.in_flight = 3
    lane.on_throttled()  # a lone 429 at the proven 3 (the submit rate, most likely)
    assert lane.limit == 3
    lane.on_throttled()  # a second one within the spell: the quota did shrink
    assert lane.limit == 2 and lane.stats.throttled == 3


def test_a_probe_that_holds_becomes_the_floor() -> None:
    lane = learned_lane(start=2)
    lane.in_flight = 2
    _complete(lane, lane.spell_needed)
    assert lane.maybe_probe_up() and lane.limit == 3
    lane.in_flight = 3
    _complete(lane, lane.spell_needed)
    assert lane.maybe_probe_up() and lane.limit == 4
    assert lane.raises == 2 and lane.stats.throttled == 0


async def test_pool_probes_when_waiters_find_a_learned_lane_full() -> None:
    lane = learned_lane(start=1, ceiling=2)
    pool = LanePool({"m": lane}, total_cap=10)
    first = await pool.acquire(["m"])
    _complete(lane, lane.spell_needed)
    second = await asyncio.wait_for(pool.acquire(["m"]), 1)  # the probe made room
    assert lane.limit == 2 and {first.name, second.name} == {"m"}


# --------------------------------------------------------------------------- persistence


def test_learned_limits_round_trip(tmp_path: Path) -> None:
    a, b = learned_lane("a", start=2), learned_lane("b", start=2)
    known = ModelLane("k", Quota(in_flight=2))
    a.limit, b.limit = 3, 1
    a.stats.submits = b.stats.submits = known.stats.submits = 5
    path = tmp_path / "out" / "learned_quotas.json"
    saved = save_learned({"a": a, "b": b, "k": known}, path)
    assert saved == {"a": 3, "b": 1}
    assert load_learned(path) == {"a": 3, "b": 1}
    fresh = {"a": learned_lane("a"), "b": learned_lane("b"), "k": ModelLane("k", Quota())}
    apply_learned(fresh, load_learned(path))
    assert (fresh["a"].limit, fresh["b"].limit, fresh["k"].limit) == (3, 1, 2)


def test_saving_keeps_models_this_run_did_not_use(tmp_path: Path) -> None:
    path = tmp_path / "learned_quotas.json"
    a = learned_lane("a")
    a.limit, a.stats.submits = 3, 1
    save_learned([a], path)
    b = learned_lane("b")
    b.limit, b.stats.submits = 4, 1
    save_learned([b], path)
    assert load_learned(path) == {"a": 3, "b": 4}


def test_load_learned_tolerates_junk(tmp_path: Path) -> None:
    path = tmp_path / "learned_quotas.json"
    assert load_learned(path) == {}
    path.write_text("{not json")
    assert load_learned(path) == {}
    path.write_text(json.dumps({"models": {"a": {"limit": 0}, "b": {"limit": "x"}, "c": 2}}))
    assert load_learned(path) == {"c": 2}


def test_a_loaded_limit_is_clamped_to_the_ceiling() -> None:
    lane = learned_lane(start=2, ceiling=4)
    lane.set_learned(99)
    assert lane.limit == 4


# --------------------------------------------------------------------------- polling


def _history(lane: ModelLane, seconds: list[float]) -> ModelLane:
    for s in seconds:
        lane.stats.observe(s)
    return lane


def test_poll_plan_without_history_backs_off_gently() -> None:
    lane = lanes(a=2)["a"]
    delays = [plan_poll_delay(lane, 0.0, n, first_s=0.5) for n in range(6)]
    assert delays[0] == 0.5 and max(delays) <= 1.5


def test_poll_plan_from_the_latency_seen() -> None:
    lane = _history(lanes(a=2)["a"], [5.0 + 0.1 * i for i in range(100)])  # 5-15 s
    # nothing before the fastest task seen (less one gap)
    assert 4.0 < plan_poll_delay(lane, 0.5, 1) < 5.0
    gap = plan_poll_delay(lane, 9.0, 5)
    assert 0.2 <= gap <= 1.0  # a 10 s task: not every 100 ms, not 3 s late
    fast = _history(lanes(b=2)["b"], [0.05] * 10)
    assert plan_poll_delay(fast, 0.06, 3) >= 0.005


def test_urgency_is_the_chance_it_finished_since_the_last_look() -> None:
    lane = _history(lanes(a=2)["a"], [5.0 + 0.1 * i for i in range(101)])  # 5..15 s
    clock = [0.0]
    u = poll_urgency(lane, 0.0, 0.0, clock=lambda: clock[0])
    assert u() == 0.0  # too early for any
    clock[0] = 10.0
    mid = u()
    clock[0] = 20.0
    assert u() == 1.0 and 0.3 < mid < 0.7  # overdue: look now
    late = poll_urgency(lane, 0.0, 14.0, clock=lambda: 14.5)
    early = poll_urgency(lane, 0.0, 5.0, clock=lambda: 5.5)
    assert late() > early()  # near its expected end beats just started


async def test_poll_budget_serves_the_most_urgent_first() -> None:
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


async def test_poll_budget_paces_turns() -> None:
    budget = PollBudget(qps=50)
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def poll() -> None:
        await budget.wait(0)
        times.append(loop.time())

    await asyncio.wait_for(asyncio.gather(*(poll() for _ in range(6))), 5)
    times.sort()
    assert times[-1] - times[0] >= 5 * 0.02 * 0.9  # 6 turns need 5 intervals


async def test_cancelled_poll_waiter_is_dropped() -> None:
    budget = PollBudget(qps=5)
    await budget.wait(0)
    waiter = asyncio.create_task(budget.wait(0))
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(budget.wait(0), 2)


async def test_submit_gate_spaces_submits() -> None:
    lane = ModelLane("m", Quota(submits_per_second=50, in_flight=4))
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def submit() -> None:
        await lane.submit_gate()
        times.append(loop.time())

    await asyncio.wait_for(asyncio.gather(*(submit() for _ in range(4))), 5)
    times.sort()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.9 / 50 and lane.stats.submits == 4


# --------------------------------------------------------------------------- CPU pool


async def test_cpu_pool_runs_below_the_loops_priority() -> None:
    pool = CpuPool(workers=1)
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        name, prio = await pool.run(
            lambda: (threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, 0))
        )
        assert name.startswith("cpu")
        assert prio >= own  # lower priority (higher nice) where the OS lets us
    finally:
        pool.close()
