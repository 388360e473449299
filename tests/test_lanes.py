"""Model slots (runner.scheduling.lanes): work-conserving fair hand-out, the slot handle,
rate-bound lanes, submit pacing, AIMD on learned quotas and their persistence."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest

from runner.scheduling import (
    CpuPool,
    LanePool,
    ModelLane,
    Slot,
    apply_learned,
    load_learned,
    save_learned,
)
from runner.scheduling.lanes import cap_note
from runner.scheduling.learned import Learned, ModelCheck, save_checks
from runner.settings import Quota

try:
    from virtual_loop import run_virtual
except ImportError:  # run from the repository root as a package
    from tests.virtual_loop import run_virtual


def lanes(**limits: int) -> dict[str, ModelLane]:
    return {
        name: ModelLane(name, Quota(submits_per_second=1000, in_flight=n))
        for name, n in limits.items()
    }


def learned_lane(name: str = "m", start: int = 2, ceiling: int = 8) -> ModelLane:
    quota = Quota(submits_per_second=1000, in_flight=start, learn=True, max_in_flight=ceiling)
    return ModelLane(name, quota)


def rate_bound(name: str = "sync", rate: float = 2.0) -> ModelLane:
    """A model with no in-flight limit (the sync qwen-image-edit): only its call rate."""
    return ModelLane(name, Quota(submits_per_second=rate, in_flight=None))


async def take(pool: LanePool, models: list[str]) -> Slot:
    """A held slot, as ``async with pool.slot(models)`` enters it; ``release()`` ends it."""
    return await pool.slot(models).__aenter__()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- the pool


async def test_most_preferred_free_model_first() -> None:
    pool = LanePool(lanes(a=1, b=1), total_cap=10)
    first = await take(pool, ["a", "b"])
    second = await take(pool, ["a", "b"])
    assert (first.lane.name, second.lane.name) == ("a", "b")


async def test_work_conserving_a_blocked_waiter_does_not_hold_up_a_free_model() -> None:
    pool = LanePool(lanes(a=1, b=1), total_cap=10)
    held_a = await take(pool, ["a"])  # a is now full
    blocked = asyncio.create_task(take(pool, ["a"]))
    await settle()
    later = await asyncio.wait_for(take(pool, ["b"]), 1)  # b is free: no waiting behind
    assert later.lane.name == "b" and not blocked.done()
    held_a.release()
    assert (await asyncio.wait_for(blocked, 1)).lane.name == "a"


async def test_a_freed_slot_goes_to_a_waiter_at_once() -> None:
    pool = LanePool(lanes(a=1, b=1), total_cap=10)
    held_a, held_b = await take(pool, ["a", "b"]), await take(pool, ["a", "b"])
    waiter = asyncio.create_task(take(pool, ["a", "b"]))
    await settle()
    assert not waiter.done()
    held_b.release()  # its second choice frees first: it takes that, not wait for a
    assert (await asyncio.wait_for(waiter, 1)).lane.name == "b"
    assert held_a.lane.in_flight == 1


async def test_total_cap() -> None:
    pool = LanePool(lanes(a=3, b=3), total_cap=2)
    held_a = await take(pool, ["a"])
    await take(pool, ["b"])
    third = asyncio.create_task(take(pool, ["a", "b"]))
    await settle()
    assert not third.done() and pool.total == 2
    held_a.release()
    await asyncio.wait_for(third, 1)


async def test_a_given_cap_that_binds_is_counted_with_the_figure_that_would_not() -> None:
    pool = LanePool(lanes(a=3, b=3), total_cap=2, cap_given=True)
    held_a = [await take(pool, ["a"])]
    await take(pool, ["b"])
    held = [asyncio.create_task(take(pool, ["a", "b"])) for _ in range(2)]
    await settle()
    assert pool.cap_held >= 1 and pool.total == 2  # a's and b's quotas had room
    view = pool.views()[0]
    assert (view["cap"], view["cap_given"], view["cap_needed"]) == (2, True, 6)
    note = cap_note(pool.views())
    assert note is not None and "concurrency 2 held back" in note and "6 would not bind" in note
    held_a[0].release()
    held_a.append(await asyncio.wait_for(held[0], 1))
    held_a[1].release()
    await asyncio.wait_for(asyncio.gather(*held), 1)


async def test_an_automatic_cap_never_binds_before_the_quotas() -> None:
    # the start figure is only what the quotas were thought to need: it never holds a slot
    pool = LanePool(lanes(a=3, b=3), total_cap=2, cap_given=False)
    got = [await asyncio.wait_for(take(pool, ["a", "b"]), 1) for _ in range(6)]
    assert sorted(g.lane.name for g in got) == ["a"] * 3 + ["b"] * 3 and pool.cap_held == 0
    assert cap_note(pool.views()) is None
    assert pool.views()[0]["cap"] == 6  # what the lanes need
    seventh = asyncio.create_task(take(pool, ["a", "b"]))
    await settle()
    assert not seventh.done()  # now the quotas bind
    got[0].release()
    await asyncio.wait_for(seventh, 1)


def test_a_rate_bound_lanes_need_follows_its_latency() -> None:
    lane = rate_bound("qwen-image-plus", rate=2.0)
    assert lane.need() == 2 * 180 + 1  # t2i's slowest documented latency, before any is seen
    for seconds in (10.0, 12.0, 11.0, 9.0, 10.5):
        lane.stats.observe(seconds)
    assert 2 * 9 < lane.need() <= 2 * 12 + 1
    assert lanes(a=3)["a"].need() == 3 and learned_lane(ceiling=8).need() == 8


async def test_classes_sharing_one_model_take_turns() -> None:
    """Two task types that can only use the same model: not first come, all served."""
    pool = LanePool(lanes(shared=2), total_cap=10)
    order: list[str] = []

    async def row(kind: str) -> None:
        async with pool.slot(["shared"] if kind == "tie" else ["shared", "shared"]):
            order.append(kind)
            await asyncio.sleep(0.001)

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
        async with pool.slot(models) as held:
            grants.append((kind, held.lane.name))
            await asyncio.sleep(0.002)

    rows = [asyncio.create_task(row("tie", ["x", "y"])) for _ in range(30)]
    rows += [asyncio.create_task(row("vttie", ["y", "x"])) for _ in range(30)]
    await asyncio.wait_for(asyncio.gather(*rows), 5)
    busy = grants[:40]  # while both queues are long
    assert 12 <= sum(k == "tie" for k, _ in busy) <= 28, grants
    mismatched = sum(1 for k, m in busy if (k == "tie" and m == "y") or (k == "vttie" and m == "x"))
    assert mismatched <= 10, grants


async def test_cancelled_waiter_leaves_the_queue() -> None:
    pool = LanePool(lanes(a=1), total_cap=10)
    held = await take(pool, ["a"])
    waiter = asyncio.create_task(take(pool, ["a"]))
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    held.release()
    assert pool.lanes["a"].in_flight == 0 and pool.waiting == 0


async def test_views_report_slots_and_latency() -> None:
    pool = LanePool(lanes(a=2), total_cap=10)
    lane = (await take(pool, ["a"])).lane
    for s in (4.0, 6.0, 8.0, 10.0, 12.0):
        lane.stats.observe(s)
    (view,) = pool.views()
    assert view["in_flight"] == 1 and view["limit"] == 2 and view["p50_s"] == 8.0


# --------------------------------------------------------------------------- AIMD


async def test_learned_limit_drops_to_what_the_server_accepted() -> None:
    lane = learned_lane(start=6)
    pool = LanePool({"m": lane}, total_cap=10)
    held = [await take(pool, ["m"]) for _ in range(6)]
    # the server took 3: each of the other 3 gets a 429 while holding its slot
    for _ in range(3):
        lane.on_throttled()
        held.pop().release()
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


def test_probes_that_hold_raise_the_limit_one_slot_a_spell() -> None:
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
    first = await take(pool, ["m"])
    _complete(lane, lane.spell_needed)
    second = await asyncio.wait_for(take(pool, ["m"]), 1)  # the probe made room
    assert lane.limit == 2 and {first.lane.name, second.lane.name} == {"m"}


# --------------------------------------------------------------------------- persistence


def test_learned_limits_round_trip(tmp_path: Path) -> None:
    a, b = learned_lane("a", start=2), learned_lane("b", start=2)
    known = ModelLane("k", Quota(in_flight=2))
    a.limit, b.limit = 3, 1
    a.stats.submits = b.stats.submits = known.stats.submits = 5
    path = tmp_path / "out" / "learned_quotas.json"
    saved = save_learned({"a": a, "b": b, "k": known}, path)
    assert saved == {"a": 3, "b": 1}
    assert load_learned(path).limits == {"a": 3, "b": 1}
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
    assert load_learned(path).limits == {"a": 3, "b": 4}


def test_load_learned_tolerates_junk(tmp_path: Path) -> None:
    path = tmp_path / "learned_quotas.json"
    assert load_learned(path) == Learned()
    path.write_text("{not json")
    assert load_learned(path) == Learned()
    path.write_text(json.dumps({"models": {"a": {"limit": 0}, "b": {"limit": "x"}, "c": 2}}))
    assert load_learned(path).limits == {"c": 2}


def test_a_loaded_limit_is_clamped_to_the_ceiling() -> None:
    lane = learned_lane(start=2, ceiling=4)
    lane.set_learned(99)
    assert lane.limit == 4


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


def test_submits_fill_exactly_the_quota_window_and_a_lone_429_pauses_a_quarter_turn() -> None:
    """2 a second is 2 in any second: two slots that free together refill together (not
    half a second apart), a third waits for the window, and a 429 costs one turn."""

    async def go() -> tuple[list[float], float]:
        lane = ModelLane("m", Quota(submits_per_second=2, in_flight=8))
        loop = asyncio.get_running_loop()
        times: list[float] = []
        window = lane.submit_window.window

        async def submit() -> None:
            await lane.submit_gate()
            times.append(loop.time())

        await asyncio.gather(*(submit() for _ in range(6)))
        await asyncio.sleep(5.0)  # the window is empty again
        lane.on_throttled()  # a late answer: 429
        await submit()
        return times, window

    times, window = run_virtual(go())
    assert 1.0 < window < 1.05  # the quota's second and a guard of a few ms
    assert times[:2] == [0.0, 0.0]
    assert all(b - a >= 1.0 for a, b in zip(times, times[2:6], strict=False))  # never 3 a second
    assert times[5] - times[0] <= 2 * window + 1e-6  # and no slower than the window allows
    assert times[6] - times[5] == pytest.approx(5.0 + 0.125, abs=1e-6)  # a lone 429: 1/4 turn


def test_429s_in_a_row_pause_longer_and_widen_the_window_guard() -> None:
    async def go() -> tuple[list[float], float, float]:
        lane = ModelLane("m", Quota(submits_per_second=2, in_flight=8))
        loop = asyncio.get_running_loop()
        before = lane.submit_window.window
        pauses = []
        for _ in range(5):  # refused again and again (another client takes the turns)
            lane.on_throttled()
            now = loop.time()
            pauses.append(lane.submit_window.next_at(now) - now)
            await asyncio.sleep(pauses[-1])
        return pauses, before, lane.submit_window.window

    pauses, before, after = run_virtual(go())
    # 1/4, 1/2, 1, 2, 2 turns of 0.5 s: no hammering, and no more than two turns
    assert pauses == pytest.approx([0.125, 0.25, 0.5, 1.0, 1.0], abs=1e-6)
    assert before < after <= 1.0 + 0.15 + 1e-9  # the guard grew, within 15 % of the window


# --------------------------------------------------------------------------- the slot handle


async def test_a_slot_handle_releases_once_early_or_at_exit() -> None:
    pool = LanePool(lanes(a=1), total_cap=10)
    async with pool.slot(["a"]) as held:
        assert held.lane.name == "a" and held.lane.in_flight == 1
        waiter = asyncio.create_task(take(pool, ["a"]))
        await settle()
        assert not waiter.done()
        held.release()  # the task is terminal: the slot goes before the download
        held.release()  # idempotent
        got = await asyncio.wait_for(waiter, 1)
        assert got.lane.in_flight == 1 and pool.total == 1
    assert pool.lanes["a"].in_flight == 1  # the exit did not release a second time
    got.release()
    assert pool.total == 0 and pool.lanes["a"].in_flight == 0


async def test_a_slot_is_given_back_when_the_body_raises_or_the_wait_is_cancelled() -> None:
    pool = LanePool(lanes(a=1), total_cap=10)
    with pytest.raises(RuntimeError):
        async with pool.slot(["a"]):
            raise RuntimeError("boom")
    assert pool.total == 0
    async with pool.slot(["a"]):
        entered = False

        async def wait() -> None:
            nonlocal entered
            async with pool.slot(["a"]):
                entered = True

        waiter = asyncio.create_task(wait())
        await settle()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert not entered and pool.total == 0 and pool.waiting == 0


async def test_slots_handed_out_by_handle_are_shared_fairly_by_class() -> None:
    pool = LanePool(lanes(shared=2), total_cap=10)
    order: list[str] = []

    async def row(kind: str, models: list[str]) -> None:
        async with pool.slot(models):
            order.append(kind)
            await asyncio.sleep(0.001)

    rows = [asyncio.create_task(row("tie", ["shared"])) for _ in range(10)]
    await settle()
    rows += [asyncio.create_task(row("vttie", ["shared", "other"])) for _ in range(10)]
    await asyncio.wait_for(asyncio.gather(*rows), 5)
    assert 3 <= order[:10].count("vttie") <= 7, order


# --------------------------------------------------------------------------- rate-bound lanes


def test_a_rate_bound_lane_stays_busy_at_its_call_rate_without_hoarding_the_cap() -> None:
    """qwen-image-edit (sync, no in-flight limit, 2 calls a second, 8 s a call): 40 rows
    keep it at 2 calls a second, never more than two rows hold a slot unsent, and a row of
    another model arriving meanwhile is not held up by the cap."""

    async def go() -> tuple[list[float], int, float, int, float]:
        sync = rate_bound("sync", rate=2.0)
        pool = LanePool({"sync": sync, **lanes(a=2)}, total_cap=24)
        loop = asyncio.get_running_loop()
        sent: list[float] = []
        unsent = 0
        worst = 0

        async def row() -> None:
            nonlocal unsent, worst
            async with pool.slot(["sync"]) as held:
                unsent += 1
                worst = max(worst, unsent)
                await held.lane.submit_gate()
                unsent -= 1
                sent.append(loop.time())
                await asyncio.sleep(8.0)  # the call holds its slot until it answers

        rows = [asyncio.create_task(row()) for _ in range(40)]
        await asyncio.sleep(1.0)
        asked = loop.time()
        async with pool.slot(["a"]):
            other_wait = loop.time() - asked
        await asyncio.gather(*rows)
        return sent, worst, other_wait, sync.stats.max_in_flight, sync.submit_window.window

    sent, worst, other_wait, peak, window = run_virtual(go())
    assert len(sent) == 40
    assert all(b - a >= 1.0 for a, b in zip(sent, sent[2:], strict=False))  # 2 in any second
    assert window < 1.05  # the quota's second, and a guard of a few ms
    # and every turn used: busy at its rate
    assert sent[-1] - sent[0] <= 19 * window + 1e-6
    assert worst <= 2 and other_wait == 0.0
    assert 16 <= peak <= 18  # 8 s x 2 a second, plus the next one waiting for its turn


def test_doctor_checks_are_kept_beside_the_learned_limits(tmp_path: Path) -> None:
    path = tmp_path / "learned_quotas.json"
    a = learned_lane("a")
    a.limit, a.stats.submits = 3, 1
    save_learned([a], path)
    save_checks(
        {
            "a": ModelCheck(served=True, route="sync", latency_s=12.5, checked_at=1.0),
            "gone": ModelCheck(served=False, note="Model not exist."),
        },
        path,
    )
    a.limit = 4
    save_learned([a], path)  # a later run keeps doctor's findings
    learned = load_learned(path)
    assert learned.limits == {"a": 4}
    assert learned.checks["a"] == ModelCheck(True, "sync", 12.5, 1.0, "")
    assert not learned.checks["gone"].served
    fresh = {"a": learned_lane("a"), "gone": ModelLane("gone", Quota())}
    apply_learned(fresh, learned)
    assert fresh["a"].prior_s == 12.5 and fresh["a"].limit == 4


def test_the_summary_says_when_a_given_cap_held_requests_back() -> None:
    import io

    from rich.console import Console

    from runner.cli import print_summary
    from runner.outcomes import RunSummary

    view = {
        "model": "a",
        "submits": 10,
        "limit": 3,
        "learned": False,
        "throttled": 0,
        "completed": 10,
        "p50_s": 1.0,
        "p90_s": 2.0,
        "cap": 2,
        "cap_given": True,
        "cap_held": 7,
        "cap_needed": 6,
    }
    summary = RunSummary(rows=[], elapsed_s=1.0, emulated=True, backend="emulator", models=[view])
    out = io.StringIO()
    print_summary(Console(file=out, width=200), summary)
    assert "concurrency 2 held back 7 request(s)" in out.getvalue()
    assert "6 would not bind" in out.getvalue()
    out = io.StringIO()
    quiet = summary.model_copy(update={"models": [view | {"cap_given": False}]})
    print_summary(Console(file=out, width=200), quiet)
    assert "held back" not in out.getvalue()  # an automatic cap never binds: nothing to say
