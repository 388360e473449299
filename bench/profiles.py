"""This runner against latency profiles that are not its planner's assumptions.

    python -m bench.profiles --profile lognormal:8:60 --workload t2i --rows 96 \\
        --scale 0.25 [--polls-scaled] [--no-timestamps] [--mode known|learned] --json OUT.json

One run of one configuration, in a process of its own (its CPU time and peak memory are the
runner's alone); the emulator runs in another process with the profile for every model and
with or without the service's own timestamps in its poll answers. The runner runs with its
default settings, time-scaled consistently with the emulator (``runner_settings``).

Workloads: ``t2i`` (every row t2i: the three t2i models, 2 slots each) and ``edit`` (half
tie, half vttie: wanx2.1-imageedit, 2 slots, and the sync qwen-image-edit, 2 calls a second
with no in-flight limit).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
from pathlib import Path
from typing import Any

from PIL import Image

from runner.job import run_all

from . import simple_poll
from .common import (
    OUT,
    EmulatorProcess,
    MachineLoad,
    _write_csv,
    children_cpu_s,
    cpu_s,
    emulator_config,
    eprint,
    loadavg,
    lower_bound,
    now,
    peak_rss_mb,
    runner_settings,
    write_json,
)

WORKLOADS = ("t2i", "edit")


def build_rows(kind: str, rows: int, work: Path) -> Path:
    """``rows`` rows of one kind of workload in ``work``; returns the task file."""
    work.mkdir(parents=True, exist_ok=True)
    out: list[dict[str, str]] = []
    if kind == "edit":
        src = work / "src.png"
        if not src.exists():  # an ordinary photo-sized source: prepared once per row
            Image.linear_gradient("L").resize((800, 600)).convert("RGB").save(src)
    for i in range(1, rows + 1):
        row = {"index": str(i), "prompt": f"benchmark prompt {i}"}
        if kind == "t2i":
            row["task_type"] = "t2i"
        else:
            row["task_type"] = "tie" if i % 2 else "vttie"
            row["ori_image"] = "src.png"
        out.append(row)
    path = work / f"task_{kind}_{rows}.csv"
    _write_csv(path, out)
    return path


def _groups(kind: str) -> dict[str, tuple[str, ...]]:
    from .common import GROUPS

    return {"t2i": GROUPS["t2i"]} if kind == "t2i" else {"tie+vttie": GROUPS["tie+vttie"]}


async def bench_profile(
    profile: str,
    kind: str,
    rows: int,
    scale: float,
    *,
    timestamps: bool,
    mode: str = "known",
    polls_scaled: bool = False,
) -> dict[str, Any]:
    config = emulator_config(
        scale, profile=profile, timestamps=timestamps, polls_scaled=polls_scaled
    )
    tag = f"{profile.replace(':', '-')}-{kind}-{'ts' if timestamps else 'nots'}-{mode}"
    out_dir = OUT / "profiles" / tag
    shutil.rmtree(out_dir, ignore_errors=True)
    tasks = build_rows(kind, rows, OUT / "profiles" / "work")
    record = OUT / "profiles" / f"{tag}.endings.json"
    record.unlink(missing_ok=True)
    with EmulatorProcess(config, record=record) as emu:
        settings = runner_settings(emu.base_url, config, mode, scale)
        emu.reset_stats()
        load0, machine = loadavg(), MachineLoad()
        cpu0, kids0, ecpu0, t0 = cpu_s(), children_cpu_s(), emu.cpu_s(), now()
        summary = await run_all(
            tasks,
            images=tasks.parent,
            out=out_dir,
            settings=settings,
            configure_logging=True,
            progress=False,
        )
        wall = now() - t0
        cpu, kids, ecpu = cpu_s() - cpu0, children_cpu_s() - kids0, emu.cpu_s() - ecpu0
        busy = machine.busy_cores()
        stats = emu.stats()
    endings = emu.endings()
    makespan = summary.elapsed_s
    lb = lower_bound(stats, config, _groups(kind))
    durations = [v[1] for v in endings.values()]
    delays = [v[2] for v in endings.values()]
    submits = sum(stats["submits"].values()) + sum(stats["sync_calls"].values())
    refused = sum(stats["quota_refusals"].values())
    runner_det = [
        (m.get("detections") or 0, m.get("detection_mean_s")) for m in summary.models or []
    ]
    det_n = sum(n for n, _ in runner_det)
    det_sum = sum(n * (mean or 0.0) for n, mean in runner_det)
    median_task = statistics.median(durations) if durations else None
    mean_delay = statistics.mean(delays) if delays else None
    return {
        "profile": profile,
        "workload": kind,
        "rows": rows,
        "timestamps": timestamps,
        "mode": mode,
        "scale": scale,
        "polls_scaled": polls_scaled,
        "poll_rule": simple_poll.name(),
        "poll_qps_account": config.poll_qps,
        "rows_done": sum(1 for r in summary.rows if r.ok),
        "makespan_s": round(makespan, 3),
        "lower_bound": lb,
        "ratio": round(makespan / lb["bound_s"], 3) if lb["bound_s"] else None,
        "polled_tasks": len(endings),
        "median_task_s": round(median_task, 4) if median_task is not None else None,
        "detection_mean_s": round(mean_delay, 4) if mean_delay is not None else None,
        "detection_share": (
            round(mean_delay / median_task, 4) if mean_delay is not None and median_task else None
        ),
        "runner_detection_mean_s": round(det_sum / det_n, 4) if det_n else None,
        "polls": stats["polls"],
        "polls_per_s": round(stats["polls"] / makespan, 2) if makespan else None,
        "submits": submits,
        "http_429": sum(stats["http_429"].values()),
        "http_429_by_code": stats["http_429"],
        "quota_refusals": refused,
        "refused_share": round(refused / submits, 4) if submits else None,
        "quota_overruns": sum(stats["quota_overruns"].values()),
        "max_in_flight": stats["max_in_flight"],
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_per_row_ms": round(1000 * cpu / max(1, rows), 2),
        "children_cpu_s": round(kids, 2),
        "emulator_cpu_s": round(ecpu, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "loadavg_before": load0,
        "others_busy_cores": round(max(0.0, busy - (cpu + kids + ecpu) / wall), 2),
        "models": summary.models,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profiles")
    p.add_argument("--profile", required=True, help="uniform:A:B or lognormal:MEDIAN:P99")
    p.add_argument("--workload", choices=WORKLOADS, default="t2i")
    p.add_argument("--rows", type=int, default=96)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--no-timestamps", action="store_true")
    p.add_argument("--mode", choices=("known", "learned"), default="known")
    p.add_argument(
        "--polls-scaled",
        action="store_true",
        help="the account's query budget scales with the latencies (as many looks per task "
        "as in real time)",
    )
    p.add_argument(
        "--poll-rule",
        choices=("planner", "every", "oldest"),
        default="planner",
        help="planner: the runner's; every: each task every max(--poll-floor, waiting/qps), "
        "earliest expected finish first; oldest: the task unseen longest at each turn "
        "(bench.simple_poll, to measure the planner against)",
    )
    p.add_argument(
        "--poll-floor", type=float, default=1.0, help="the least gap of --poll-rule every"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.poll_rule != "planner":
        simple_poll.use(args.poll_rule, args.poll_floor)
    result = asyncio.run(
        bench_profile(
            args.profile,
            args.workload,
            args.rows,
            args.scale,
            timestamps=not args.no_timestamps,
            mode=args.mode,
            polls_scaled=args.polls_scaled,
        )
    )
    path = args.json or OUT / "profiles" / "last.json"
    write_json(path, result)
    eprint({k: v for k, v in result.items() if k not in ("models", "lower_bound")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
