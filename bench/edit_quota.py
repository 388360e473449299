"""Edit throughput before and after the qwen-image-edit quota fix, on the same workload.

    python -m bench.edit_quota [--rows 24] [--scale 1.0]

Before: the runner held qwen-image-edit to 2 slots (learned up to 8). After: the reference's
quota, 2 calls a second and no in-flight limit (bounded by --concurrency). The emulator
serves the reference's quota either way (a rate, no in-flight cap) with edit latencies of
5-15 s; latency and quota windows are x ``scale`` and the figures are given back in real
seconds. Only qwen-image-edit is listed, so nothing else hides the difference. The default
is the real time scale: a rate window of 0.1 s is at the mercy of a busy 2-core box's loop
jitter (hundreds of 429s at --scale 0.1 under load), a window of 1 s is not.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from PIL import Image

from runner.emulator import EmulatorConfig
from runner.job import run_all
from runner.settings import JudgeSettings, Quota, Settings

from .common import BENCH_KEY, OUT, EmulatorProcess

MODEL = "qwen-image-edit"


def _workload(work: Path, rows: int) -> Path:
    imgs = work / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (512, 512), (90, 140, 200)).save(imgs / "src.jpg")
    lines = ["index,task_type,prompt,ori_image,target_image"]
    lines += [f"{i},tie,make the sky orange {i},src.jpg," for i in range(rows)]
    task_csv = work / "task.csv"
    task_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return task_csv


def _world(scale: float) -> EmulatorConfig:
    """The reference's quotas (qwen-image-edit: 2 calls a second, no in-flight cap) and
    5-15 s edits, latency and quota windows x ``scale`` alike."""
    return EmulatorConfig(time_scale=scale, scale_windows=True, seed=7, latency="uniform:5:15")


def _settings(base_url: str, in_flight: int | None, scale: float) -> Settings:
    """The runner's defaults in the same scaled world (rates / scale, waits x scale); only
    qwen-image-edit's quota differs between the two runs."""
    d = Settings()
    quota = Quota(
        submits_per_second=2.0 / scale,
        in_flight=in_flight,
        learn=in_flight is not None,  # the old default: learned from 2 up to 8
        max_in_flight=8,
    )
    return Settings(
        api_key=BENCH_KEY,
        base_url=base_url,
        models={"tie": [MODEL], "vttie": [MODEL]},
        quotas={MODEL: quota},
        concurrency=32,
        poll_qps=d.poll_qps / scale,
        poll_first_s=d.poll_first_s * scale,
        backoff_max_s=d.backoff_max_s * scale,
        retry_after_cap_s=d.retry_after_cap_s * scale,
        task_timeout_s=d.task_timeout_s * scale,
        sync_timeout_s=d.sync_timeout_s * scale,
        judge=JudgeSettings(enabled=False),
    )


async def _one(label: str, in_flight: int | None, rows: int, scale: float) -> dict[str, Any]:
    work = OUT / "edit_quota" / label
    shutil.rmtree(work, ignore_errors=True)
    tasks = _workload(work, rows)
    with EmulatorProcess(_world(scale), render="cached") as emu:
        settings = _settings(emu.base_url, in_flight, scale)
        started = time.monotonic()
        summary = await run_all(
            tasks,
            images=work / "imgs",
            out=work / "out",
            settings=settings,
            configure_logging=False,
        )
        makespan = time.monotonic() - started
        stats = emu.stats()
    done = sum(1 for r in summary.rows if r.status == "done")
    real_s = makespan / scale
    return {
        "label": label,
        "rows_done": done,
        "makespan_real_s": round(real_s, 1),
        "edits_per_minute": round(60 * done / real_s, 1),
        "max_in_flight": stats["max_in_flight"].get(MODEL, 0),
        "http_429": sum(stats["http_429"].values()),
    }


def main() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(prog="python -m bench.edit_quota")
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    for label, in_flight in (("before (2 slots, learned up to 8)", 2), ("after (no cap)", None)):
        print(asyncio.run(_one(label.split()[0], in_flight, args.rows, args.scale)), flush=True)


if __name__ == "__main__":
    main()
