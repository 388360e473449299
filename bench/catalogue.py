"""The competition workload under the 2026 catalogue: the defaults before and after, per region.

    python -m bench.catalogue [--scale 0.5] [--only cn-after ...] [--limit N]

Each configuration (region cn or intl, the defaults ``before`` issue 23 or ``after`` it)
runs the whole task list (250 t2i, 250 tie, 250 vttie, 250 deepfake) in a process of its own
against the emulator in another, which enforces the 2026 quotas of that region
(``EmulatorConfig(region=...)``: routes, in-flight caps, call rates); every model's latency is
the emulator's own range times ``--scale``, its quota windows real. ``before``: the model
lists and the overall cap of 32 the runner had; ``after``: today's defaults, the cap left to
the quotas. Each result holds the makespan, the quota bound of the API rows (the fluid bound
of ``runner.cost.estimate`` over the models the run used, on the emulator's own latency
draws, each model on the route it took), and the dry run's cost estimate of the task list
in that region. ``python -m bench`` runs all four and writes them into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from runner.cost import Lane, estimate, estimate_for, price_book
from runner.emulator import EmulatorConfig
from runner.job import run_all
from runner.models import caps
from runner.progress import duration
from runner.settings import JudgeSettings, Settings

from .common import (
    BENCH_KEY,
    OUT,
    ROOT,
    EmulatorProcess,
    build_workload,
    cpu_s,
    drawn_latencies,
    eprint,
    faceswap_available,
    read_json,
    write_json,
)

SCALE = 0.5
CONFIGS = ("cn-before", "cn-after", "intl-before", "intl-after")
TITLE = "The competition workload under the 2026 catalogue (issue 23)"
# The defaults before issue 23 (runner/models.py and settings.py as they were), for the
# comparison: every model then listed, the overall cap of 32.
BEFORE: dict[str, dict[str, list[str]]] = {
    "cn": {
        "t2i": ["wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wan2.2-t2i-flash"],
        "tie": ["wanx2.1-imageedit", "qwen-image-edit"],
        "vttie": ["qwen-image-edit", "wanx2.1-imageedit"],
    },
    "intl": {
        "t2i": ["wan2.1-t2i-turbo", "wan2.1-t2i-plus"],
        "tie": ["qwen-image-edit", "qwen-image-edit-plus"],
        "vttie": ["qwen-image-edit", "qwen-image-edit-plus"],
    },
}
BEFORE_CONCURRENCY = 32
_NO_CAP = 10**6  # a sync route's in-flight "limit" in the bound: none


class Finishes:
    """Observer of ``run_all``: when each row ended, on the run's clock."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.at: dict[str, list[float]] = {}

    def started(self, tasks: Any, scheduler: Any, banner: list[str]) -> None:
        self.t0 = time.monotonic()

    def row(self, result: Any) -> None:
        self.at.setdefault(result.task_type, []).append(time.monotonic() - self.t0)

    def finished(self, summary: Any) -> None:
        pass


def settings_for(region: str, variant: str, base_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "api_key": BENCH_KEY,
        "base_url": base_url,
        "region": region,
        # the VIEScore judge is a quality add-on, not the generation pipeline measured
        "judge": JudgeSettings(enabled=False),
        **extra,
    }
    if variant == "before":
        values |= {"models": BEFORE[region], "concurrency": BEFORE_CONCURRENCY}
    return Settings(**values)


def quota_bound(
    stats: dict[str, Any], config: EmulatorConfig, settings: Settings, rows: dict[str, int]
) -> dict[str, Any]:
    """The shortest time any schedule could take the API rows on the models the run used:
    ``runner.cost.estimate``'s fluid bound, each model at min(call rate, in-flight cap on
    the route it took / its mean drawn latency), and no less than its longest task."""
    lanes: dict[str, Lane] = {}
    longest = 0.0
    used: dict[str, str] = {}
    for names in settings.models.values():
        for m in names:
            if m in lanes:
                continue
            spec = config.models[m]
            sync = stats["sync_calls"].get(m, 0) > 0
            tasks = stats["submits"].get(m, 0) + stats["sync_calls"].get(m, 0)
            drawn = drawn_latencies(config, m, max(tasks, 1))
            rate = spec.submits_per_s or (spec.submits_per_min or 0) / 60
            cap = spec.sync_in_flight if sync else spec.max_in_flight
            lanes[m] = Lane(rate, cap or _NO_CAP, max(sum(drawn) / len(drawn), 1e-3))
            if tasks:
                longest = max(longest, max(drawn))
                used[m] = "sync" if sync else "async"
    api = {t: n for t, n in rows.items() if t != "deepfake"}
    book = price_book(settings)
    est = estimate(api, settings.models, settings.candidate_counts(), lanes, book)
    return {
        "bound_s": round(max(est.duration_s, longest), 2),
        "pace_bound_s": round(est.duration_s, 2),
        "longest_task_s": round(longest, 2),
        "routes": used,
    }


def documented_bound(settings: Settings, rows: dict[str, int]) -> float:
    """The same fluid bound at the documented latencies instead of the emulator's (the
    midpoints of runner.models' ranges: t2i "1-3 minutes", edits "5-15 s"), each model
    on the route and quota the settings give it: what the quotas allow the real service."""
    lanes: dict[str, Lane] = {}
    for names in settings.models.values():
        for m in names:
            q, found = settings.quota(m), caps(m)
            cap = q.in_flight if q.in_flight is not None else _NO_CAP
            if settings.concurrency_given:
                cap = min(cap, settings.concurrency)
            lanes[m] = Lane(q.submits_per_second, cap, sum(found.latency_s) / 2)
    api = {t: n for t, n in rows.items() if t != "deepfake"}
    est = estimate(api, settings.models, settings.candidate_counts(), lanes, price_book(settings))
    return round(est.duration_s, 1)


def dry_run_cost(settings: Settings, rows: dict[str, int]) -> dict[str, Any]:
    """What ``--dry-run`` says the task list costs in the settings' region."""
    est = estimate_for(settings, rows, emulated=False)
    total, complete = est.cost
    return {
        "currency": est.currency,
        "cost": round(total, 2),
        "complete": complete,
        "images": round(sum(p.images for p in est.models)),
        "unpriced": sorted(p.model for p in est.models if p.cost is None),
        "by_model": {p.model: [round(p.images), p.cost] for p in est.models},
    }


async def bench_one(name: str, scale: float, limit: int) -> dict[str, Any]:
    region, variant = name.split("-")
    swap_ok, why = faceswap_available()
    workload = build_workload(deepfake=swap_ok)
    if limit:
        from .throughput import _limited

        workload = _limited(workload, limit)
    config = EmulatorConfig(
        time_scale=scale,
        seed=7,
        region=region,
        scale_windows=False,  # type: ignore[arg-type]
    )
    out_dir = OUT / f"catalogue-{name}"
    shutil.rmtree(out_dir, ignore_errors=True)
    with EmulatorProcess(config) as emu:
        settings = settings_for(region, variant, emu.base_url)
        emu.reset_stats()
        probe = Finishes()
        cpu0 = cpu_s()
        summary = await run_all(
            workload.tasks,
            images=workload.images,
            out=out_dir,
            settings=settings,
            observer=probe,
            configure_logging=True,
        )
        cpu = cpu_s() - cpu0
        stats = emu.stats()
    rows = summary.rows
    api_done = [t for k, ts in probe.at.items() if k != "deepfake" for t in ts]
    bound = quota_bound(stats, config, settings, workload.rows)
    api_makespan = max(api_done, default=0.0)
    cap = next((m for m in summary.models if "cap" in m), {})
    return {
        "name": name,
        "region": region,
        "variant": variant,
        "scale": scale,
        "models": settings.models,
        "concurrency": settings.concurrency,
        "concurrency_given": settings.concurrency_given,
        "rows": dict(Counter(r.task_type for r in rows)),
        "rows_done": sum(1 for r in rows if r.ok),
        "failed": Counter((r.reason or r.status)[:100] for r in rows if not r.ok).most_common(4),
        "makespan_s": round(summary.elapsed_s, 2),
        "api_makespan_s": round(api_makespan, 2),
        "bound": bound,
        "ratio": round(api_makespan / bound["bound_s"], 3) if bound["bound_s"] else None,
        "cap_held": cap.get("cap_held", 0),
        "cap_needed": cap.get("cap_needed"),
        "http_429": sum(stats["http_429"].values()),
        "submits": dict(stats["submits"]),
        "sync_calls": dict(stats["sync_calls"]),
        "max_in_flight": dict(stats["max_in_flight"]),
        "cpu_s": round(cpu, 1),
        "faceswap": summary.faceswap if swap_ok else f"unavailable: {why}",
        "dry_run": dry_run_cost(settings, workload.rows),
        "documented_bound_s": documented_bound(settings, workload.rows),
        "workload": {"source": workload.source, "rows": workload.rows},
    }


def run_all_configs(
    scale: float = SCALE, only: tuple[str, ...] = CONFIGS, limit: int = 0
) -> list[dict[str, Any]]:
    """Every configuration, each in a process of its own; the results in CONFIGS order."""
    res = OUT / "results"
    res.mkdir(parents=True, exist_ok=True)
    out: list[dict[str, Any]] = []
    for name in only:
        path = res / f"catalogue-{name}.json"
        path.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "bench.catalogue", "--one", name, "--scale", str(scale)]
        cmd += ["--limit", str(limit), "--json", str(path)]
        eprint("$ " + " ".join(cmd[1:]))
        subprocess.run(cmd, cwd=ROOT, check=False)
        if path.is_file():
            out.append(read_json(path))
    return out


def _money(d: dict[str, Any]) -> str:
    text = f"{d['cost']:,.2f} {d['currency']}"
    if d["unpriced"]:
        text = (
            f"{text} + unpriced {', '.join(d['unpriced'])}"
            if d["cost"]
            else f"unknown ({', '.join(d['unpriced'])}: no list price)"
        )
    return text


def section(results: list[dict[str, Any]]) -> list[str]:
    """The section's lines (its title excepted)."""
    if not results:
        return []
    first = results[0]
    lines = [
        f"The competition task list ({first['workload']['source']}: "
        + ", ".join(f"{n} {t}" for t, n in first["workload"]["rows"].items())
        + f") on the emulator with the 2026 quotas of each region; every latency the "
        f"emulator's own range x {first['scale']:g}, quota windows real; the judge off. "
        "`before`: the defaults before issue 23 (their model lists, `concurrency` 32); "
        "`after`: today's defaults (the cap left to the quotas). The bound is the quota-bound "
        "makespan of the API rows on the models the run used (each on the route it took, "
        "on the emulator's own latency draws); the deepfake rows run alongside, on this "
        "machine. The cost is the dry run's estimate of the whole task list in the region. "
        "The emulator's latencies (4-15 s) are far below the documented t2i '1-3 minutes': "
        "a sync lane's pace does not depend on latency, an async lane's does, so the last "
        "bound column is the same bound at the documents' latencies (the midpoints, 120 s a "
        "t2i task and 10 s an edit), each model on the route and quota the settings give it.",
        "",
        "| region | defaults | models (t2i; tie; vttie) | rows done | API makespan | quota "
        "bound | makespan / bound | all rows | cap held | 429s | bound at documented "
        "latencies | est. cost (dry run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        models = "; ".join(", ".join(r["models"][t]) for t in ("t2i", "tie", "vttie"))
        cap = f"{r['concurrency']}" if r["concurrency_given"] else f"auto ({r['concurrency']})"
        lines.append(
            f"| {r['region']} | {r['variant']} | {models} | {r['rows_done']} / "
            f"{sum(r['rows'].values())} | {r['api_makespan_s']:.0f} s | "
            f"{r['bound']['bound_s']:.0f} s | {r['ratio']:.2f} | {r['makespan_s']:.0f} s | "
            f"{r['cap_held']} (cap {cap}) | {r['http_429']} | "
            f"{duration(r['documented_bound_s'])} | {_money(r['dry_run'])} |"
        )
    lines.append("")
    by = {r["name"]: r for r in results}
    for region in ("cn", "intl"):
        before, after = by.get(f"{region}-before"), by.get(f"{region}-after")
        if before and after and after["api_makespan_s"]:
            speedup = before["api_makespan_s"] / after["api_makespan_s"]
            routes = ", ".join(f"{m} {r}" for m, r in after["bound"]["routes"].items())
            lines.append(
                f"- {region}: API makespan {before['api_makespan_s']:.0f} s -> "
                f"{after['api_makespan_s']:.0f} s ({speedup:.1f}x), the bound "
                f"{before['bound']['bound_s']:.0f} s -> {after['bound']['bound_s']:.0f} s; at "
                f"the documented latencies {duration(before['documented_bound_s'])} -> "
                f"{duration(after['documented_bound_s'])}; the task list's dry-run cost "
                f"{_money(before['dry_run'])} -> {_money(after['dry_run'])}; routes after: "
                f"{routes}."
            )
    lines.append(
        "- Singapore's defaults are the cheapest documented models with a Singapore price: "
        "its t2i is wan2.5-t2i-preview's 5 tasks in flight, its edits one sync lane. On "
        "the emulator's short latencies that is about the old pace at a lower cost; at the "
        "documented latencies its t2i bound is lower (5 tasks in flight against 2 + 2). A "
        "sync lane (qwen-image-plus, 2 calls a second) would lift it to the edits' pace: "
        "README, 'More models'."
    )
    return lines


def write_section(results: list[dict[str, Any]], path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace this benchmark's section of BENCHMARKS.md (or add it before the Targets)."""
    body = "\n".join([f"## {TITLE}", "", *section(results), ""])
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(TITLE)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text)
    elif "\n## Targets\n" in text:
        text = text.replace("\n## Targets\n", f"\n{body}\n## Targets\n", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.catalogue")
    p.add_argument("--scale", type=float, default=SCALE)
    p.add_argument("--only", nargs="*", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--one", choices=CONFIGS, help="run one configuration in this process")
    p.add_argument("--limit", type=int, default=0, help="first N rows of each type (smoke)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.one:
        result = asyncio.run(bench_one(args.one, args.scale, args.limit))
        write_json(args.json or OUT / "results" / f"catalogue-{args.one}.json", result)
        eprint({k: v for k, v in result.items() if k not in ("models", "dry_run")})
        return 0
    results = run_all_configs(args.scale, tuple(args.only), args.limit)
    if not args.limit:
        write_section(results)
    for line in section(results):
        eprint(line)
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
