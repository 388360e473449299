"""This runner on the time-scaled emulator: the whole workload in one run, measured.

    python -m bench.throughput --mode known|learned --json OUT.json [--scale 0.05]

Runs in a process of its own (``python -m bench`` starts one per configuration) so that its
CPU time and peak memory are the runner's alone; the emulator runs in another process.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from runner.emulator import EmulatorConfig
from runner.job import run_all

from .common import (
    EDIT_MODELS,
    GROUPS,
    OUT,
    SCALE,
    T2I_MODELS,
    EmulatorProcess,
    MachineLoad,
    Workload,
    build_workload,
    busy_share,
    children_cpu_s,
    cpu_s,
    emulator_config,
    eprint,
    faceswap_available,
    loadavg,
    lower_bound,
    now,
    peak_rss_mb,
    runner_settings,
    timeline_series,
    write_json,
)


def summarize_emulator(
    stats: dict[str, Any], config: EmulatorConfig, makespan: float, start: float = 0.0
) -> dict[str, Any]:
    """The emulator's side of a run: 429s, polls, submits, slots in use, the lower bound.
    ``start``: when the run began on the emulator's clock (its timeline is shifted so that
    the run starts at 0)."""
    lb = lower_bound(stats, config)
    models = [*T2I_MODELS, *EDIT_MODELS]
    shifted = [(t - start, m, v) for t, m, v in stats["timeline"]]
    series = timeline_series(shifted, models)
    busy = {
        m: round(busy_share(series[m], config.models[m].max_in_flight or 1, makespan), 3)
        for m in models
    }
    return {
        "lower_bound": lb,
        "ratio": round(makespan / lb["bound_s"], 3) if lb["bound_s"] else None,
        "http_429": sum(stats["http_429"].values()),
        "http_429_by_code": stats["http_429"],
        "quota_refusals": stats["quota_refusals"],
        "quota_overruns": sum(stats["quota_overruns"].values()),
        "submits": sum(stats["submits"].values()) + sum(stats["sync_calls"].values()),
        "submits_by_model": {
            m: stats["submits"].get(m, 0) + stats["sync_calls"].get(m, 0) for m in models
        },
        "polls": stats["polls"],
        "downloads": stats["downloads"],
        "judge_calls": sum(stats.get("judge_calls", {}).values()),
        "max_in_flight": {m: stats["max_in_flight"].get(m, 0) for m in models},
        "slots": {m: config.models[m].max_in_flight for m in models},
        "busy_share": busy,
        "timeline": {m: series[m] for m in models},
    }


class Probe:
    """Observer of ``run_all``: samples the runner's own slots and the event loop's lag."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s = every_s
        self.scheduler: Any = None
        self.lags: list[float] = []
        self.timeline: dict[str, list[tuple[float, int]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.t0 = 0.0

    def started(self, tasks: Any, scheduler: Any, banner: list[str]) -> None:
        self.scheduler = scheduler
        self._task = asyncio.get_running_loop().create_task(self._sample())

    def row(self, result: Any) -> None:
        pass

    def finished(self, summary: Any) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        last: dict[str, int] = {}
        while True:
            before = loop.time()
            await asyncio.sleep(self.every_s)
            now_ = loop.time()
            self.lags.append(now_ - before - self.every_s)
            for name, lane in self.scheduler.lanes.items():
                if last.get(name) != lane.in_flight:
                    last[name] = lane.in_flight
                    self.timeline.setdefault(name, [(0.0, 0)]).append(
                        (round(now_ - self.t0, 4), lane.in_flight)
                    )

    def lag_ms(self) -> dict[str, float]:
        if not self.lags:
            return {}
        lags = sorted(self.lags)
        pick = lambda q: round(1000 * lags[min(len(lags) - 1, int(q * len(lags)))], 2)  # noqa: E731
        return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": pick(1.0)}


async def bench_runner(
    mode: str, workload: Workload, out_dir: Path, scale: float = SCALE
) -> dict[str, Any]:
    config = emulator_config(scale)
    with EmulatorProcess(config) as emu:
        settings = runner_settings(emu.base_url, config, mode, scale)
        shutil.rmtree(out_dir, ignore_errors=True)
        emu.reset_stats()
        t_reset = now()
        load0, machine = loadavg(), MachineLoad()
        cpu0, kids0, ecpu0, t0 = cpu_s(), children_cpu_s(), emu.cpu_s(), now()
        probe = Probe()
        summary = await run_all(
            workload.tasks,
            images=workload.images,
            out=out_dir,
            settings=settings,
            observer=probe,
            configure_logging=True,
        )
        wall = now() - t0
        cpu, kids, ecpu = cpu_s() - cpu0, children_cpu_s() - kids0, emu.cpu_s() - ecpu0
        busy = machine.busy_cores()
        stats = emu.stats()
    rows = summary.rows
    done = sum(1 for r in rows if r.ok)
    api_rows = [r for r in rows if r.task_type != "deepfake"]
    swap_rows = [r for r in rows if r.task_type == "deepfake"]
    makespan = summary.elapsed_s
    result: dict[str, Any] = {
        "name": f"runner ({mode} quotas)",
        "mode": mode,
        "scale": scale,
        "rows_total": len(rows),
        "rows_done": done,
        "rows_api": len(api_rows),
        "rows_api_done": sum(1 for r in api_rows if r.ok),
        "rows_deepfake": len(swap_rows),
        "rows_deepfake_done": sum(1 for r in swap_rows if r.ok),
        "failed": Counter((r.reason or r.status)[:120] for r in rows if not r.ok).most_common(5),
        "makespan_s": round(makespan, 3),
        "api_done_at_s": round(max((r.seconds for r in api_rows), default=0.0), 3),
        "deepfake_done_at_s": round(max((r.seconds for r in swap_rows), default=0.0), 3),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 2),
        "cpu_per_task_ms": round(1000 * cpu / max(1, len(rows)), 2),
        "children_cpu_s": round(kids, 2),
        "emulator_cpu_s": round(ecpu, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "loadavg_before": load0,
        "machine_busy_cores": round(busy, 2),
        "others_busy_cores": round(max(0.0, busy - (cpu + kids + ecpu) / wall), 2),
        "loop_lag_ms": probe.lag_ms(),
        "runner_timeline": probe.timeline,  # the run's clock (0 = start)
        "start_offset_s": round(probe.t0 - t_reset, 4),  # the run's start, emulator's clock
        "runner_polls": summary.polls,
        "runner_submits": summary.submits,
        "runner_throttled": summary.throttled,
        "retries": summary.retries,
        "models": summary.models,
        "faceswap": summary.faceswap,
        "groups": {k: list(v) for k, v in GROUPS.items()},
    }
    result.update(summarize_emulator(stats, config, makespan, probe.t0 - t_reset))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.throughput")
    p.add_argument("--mode", choices=("known", "learned"), default="known")
    p.add_argument("--scale", type=float, default=SCALE)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--no-faceswap", action="store_true", help="API rows only")
    p.add_argument("--limit", type=int, default=0, help="first N rows of each type (a smoke run)")
    args = p.parse_args(argv)
    swap_ok, why = faceswap_available()
    workload = build_workload(deepfake=swap_ok and not args.no_faceswap)
    if not swap_ok:
        eprint(f"face swap unavailable ({why}): API rows only")
    if args.limit:
        workload = _limited(workload, args.limit)
    out_dir = OUT / f"runner-{args.mode}"
    result = asyncio.run(bench_runner(args.mode, workload, out_dir, args.scale))
    result["workload"] = {"source": workload.source, "rows": workload.rows, "notes": workload.notes}
    if not swap_ok:
        result["faceswap_problem"] = why
    path = args.json or OUT / f"runner-{args.mode}.json"
    write_json(path, result)
    show = {k: v for k, v in result.items() if k not in ("timeline", "models")}
    eprint(show)
    return 0


def _limited(workload: Workload, n: int) -> Workload:
    from .common import _read_csv, _write_csv

    rows = _read_csv(workload.tasks)
    kept: list[dict[str, str]] = []
    seen: Counter[str] = Counter()
    for r in rows:
        if seen[r["task_type"]] < n:
            seen[r["task_type"]] += 1
            kept.append(r)
    path = workload.tasks.with_name("task_small.csv")
    _write_csv(path, kept)
    return Workload(path, workload.images, dict(seen), workload.source, 0, workload.notes)


if __name__ == "__main__":
    raise SystemExit(main())
