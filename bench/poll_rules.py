"""The poll planner against simpler rules, on a virtual clock (issue 27's measurement).

    python -m bench.poll_rules [--seeds 3] [--json OUT.json]

Three models keep every slot busy (submit, watch until done, submit the next) against
tests/test_polling.py's fake service on a virtual loop, sharing the default budget of 15
queries a second: 2 slots each (6 tasks in flight: the budget is ample) and 10 each (30 in
flight: a look at every task costs 2 s of budget). Each profile, seed and budget runs once
with the runner's planner and once with each rule of ``bench.simple_poll``. The figure is
what polling decides: the mean detection delay (a task's end to the first answer saying
so) over the median task time, past each slot's first three tasks, and the polls per task.
A slot is busy for its task plus that delay, so a slot-bound run is longer by about as much.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from pathlib import Path
from typing import Any

from runner.scheduling import ModelLane, PollBudget, TaskWatcher, polling
from tests.test_polling import PROFILES, FakeService, lane
from tests.virtual_loop import run_virtual, wall

from . import simple_poll
from .common import eprint, write_json

RULES = ("planner", "every", "oldest")
SLOTS = (2, 10)
_PLANNER = polling.WatchedTask


async def _drive(
    service: FakeService, lanes: list[ModelLane], draw: Any, per_slot: int, seed: int
) -> tuple[PollBudget, list[str]]:
    budget = PollBudget(15, clock=wall)
    watcher = TaskWatcher(service, budget, timeout_s=900, first_s=0.5)
    rng = random.Random(seed)
    ids: list[str] = []

    async def slot(ln: ModelLane, k: int) -> None:
        for i in range(per_slot):
            task_id = f"{ln.name}-{k}-{i}"
            submitted = wall()
            service.add(task_id, submitted + service.rtt / 2, draw(rng))
            await asyncio.sleep(service.rtt)  # the submit's own round trip
            await watcher.wait_terminal(ln, task_id, started=submitted)
            if i >= 3:
                ids.append(task_id)

    await asyncio.gather(*(slot(ln, k) for ln in lanes for k in range(ln.limit or 1)))
    return budget, ids


def one(profile: str, rule: str, seed: int, stamps: bool, slots: int) -> dict[str, Any]:
    """One run: ``rule`` polls 3 models x ``slots`` on ``profile``."""
    if rule == "planner":
        polling.WatchedTask = _PLANNER  # type: ignore[misc]
    else:
        simple_poll.use(rule, 1.0)
    service = FakeService(stamps=stamps)
    lanes = [lane(name, slots) for name in "abc"]
    per_slot = max(12, 60 // slots)
    budget, ids = run_virtual(_drive(service, lanes, PROFILES[profile], per_slot, seed))
    durations = [t.end - t.start for t in service.tasks.values()]
    delay = statistics.mean(service.detection_delays(ids))
    return {
        "profile": profile,
        "in_flight": 3 * slots,
        "stamps": stamps,
        "rule": simple_poll.name(),
        "seed": seed,
        "delay_share": delay / statistics.median(durations),
        "polls_per_task": budget.polls / len(service.tasks),
    }


def table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: one per profile, budget, timestamps and rule."""
    lines = [
        "| profile | in flight | timestamps | rule | delay / median: mean (min-max) | polls/task |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int, bool, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["profile"], r["in_flight"], r["stamps"], r["rule"]), []).append(r)
    for (profile, flight, stamps, rule), rs in groups.items():
        shares = [100 * r["delay_share"] for r in rs]
        polls = statistics.mean(r["polls_per_task"] for r in rs)
        lines.append(
            f"| {profile} | {flight} | {'yes' if stamps else 'no'} | {rule} | "
            f"{statistics.mean(shares):.1f} % ({min(shares):.1f}-{max(shares):.1f}) | "
            f"{polls:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.poll_rules")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    results = [
        one(profile, rule, seed, stamps, slots)
        for profile in PROFILES
        for slots in SLOTS
        for stamps in (False, True)
        for rule in RULES
        for seed in range(1, args.seeds + 1)
    ]
    print("\n".join(table(results)))
    if args.json:
        write_json(args.json, {"results": results})
    eprint(f"{len(results)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
