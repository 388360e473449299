"""The runner's own cost: an emulator with zero latency and no quotas, every row through
the whole pipeline (submit, poll, download, transcode, write, journal).

    python -m bench.overhead --out disk|tmpfs --images tiny|512 [--rows 2000] --json OUT.json

``--out tmpfs`` puts the output folder (journal and images) on /dev/shm, to show what the
per-record fsyncs cost on this disk. ``--images tiny`` makes every result a 64x64 PNG (no
image work: the pipeline alone); ``512`` asks for 512x512 results (the smallest size the
t2i models take) and pays their decode and JPEG encode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from runner.emulator import EmulatorConfig
from runner.job import run_all
from runner.settings import JudgeSettings, Quota, Settings

from .common import (
    BENCH_KEY,
    OUT,
    T2I_MODELS,
    EmulatorProcess,
    MachineLoad,
    _write_csv,
    cpu_s,
    eprint,
    loadavg,
    now,
    peak_rss_mb,
    write_json,
)

TMPFS = Path("/dev/shm")


def overhead_settings(base_url: str, size: str) -> Settings:
    unlimited = Quota(submits_per_second=1e6, in_flight=32)
    return Settings(
        api_key=BENCH_KEY,
        base_url=base_url,
        models={"t2i": list(T2I_MODELS)},
        quotas={m: unlimited for m in T2I_MODELS},
        poll_qps=1e6,
        poll_first_s=0.001,
        size=size,
        concurrency=32,
        judge=JudgeSettings(enabled=False),
    )


def prepare(rows: int, out_kind: str, images: str) -> tuple[Path, Path]:
    """(task file, output folder) of an overhead run."""
    work = OUT / "overhead"
    work.mkdir(parents=True, exist_ok=True)
    tasks = work / f"task_{rows}.csv"
    _write_csv(
        tasks,
        (
            {"index": str(i), "task_type": "t2i", "prompt": f"overhead row {i}"}
            for i in range(1, rows + 1)
        ),
    )
    base = TMPFS if out_kind == "tmpfs" and os.path.isdir(TMPFS) else OUT
    out_dir = base / f"runner-overhead-{out_kind}-{images}"
    shutil.rmtree(out_dir, ignore_errors=True)
    return tasks, out_dir


async def bench_overhead(
    rows: int, out_kind: str, images: str, tasks: Path, out_dir: Path
) -> dict[str, Any]:
    work = tasks.parent
    config = EmulatorConfig.benchmark(seed=1)
    render = "tiny" if images == "tiny" else "cached"
    size = "512*512"
    with EmulatorProcess(config, render=render) as emu:
        settings = overhead_settings(emu.base_url, size)
        emu.reset_stats()
        load0, machine = loadavg(), MachineLoad()
        cpu0, ecpu0, t0 = cpu_s(), emu.cpu_s(), now()
        summary = await run_all(
            tasks, images=work, out=out_dir, settings=settings, configure_logging=True
        )
        wall = now() - t0
        cpu, ecpu = cpu_s() - cpu0, emu.cpu_s() - ecpu0
        busy = machine.busy_cores()
        stats = emu.stats()
    done = sum(1 for r in summary.rows if r.ok)
    return {
        "name": f"overhead ({out_kind}, {'64x64' if images == 'tiny' else '512x512'} results)",
        "out": str(out_dir.parent),
        "images": images,
        "rows": rows,
        "rows_done": done,
        "elapsed_s": round(summary.elapsed_s, 3),
        "wall_s": round(wall, 3),
        "tasks_per_s": round(done / summary.elapsed_s, 1) if summary.elapsed_s else None,
        "cpu_s": round(cpu, 2),
        "cpu_per_task_ms": round(1000 * cpu / max(1, done), 3),
        "emulator_cpu_s": round(ecpu, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "loadavg_before": load0,
        "machine_busy_cores": round(busy, 2),
        "others_busy_cores": round(max(0.0, busy - (cpu + ecpu) / wall), 2),
        "polls": stats["polls"],
        "submits": sum(stats["submits"].values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--out", choices=("disk", "tmpfs"), default="disk")
    p.add_argument("--images", choices=("tiny", "512"), default="tiny")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    tasks, out_dir = prepare(args.rows, args.out, args.images)
    result = asyncio.run(bench_overhead(args.rows, args.out, args.images, tasks, out_dir))
    shutil.rmtree(out_dir, ignore_errors=True)
    write_json(args.json or OUT / f"overhead-{args.out}-{args.images}.json", result)
    eprint(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
