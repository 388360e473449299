"""``python -m bench`` (``make bench``): the benchmarks, then BENCHMARKS.md and the plot.

Each configuration runs in a process of its own (its CPU time and peak memory are its own)
against an emulator in another process:

1. the latency profiles (``bench.profiles``): uniform 2-3 s, uniform 5-15 s, lognormal
   (median 8 s, p99 60 s), t2i at 60-180 s, each with and without the service's
   timestamps, on a t2i-bound and an edit-bound workload (216-360 rows), the runner at
   its default settings; the emulator's latencies are time-scaled, and at scale 0.5 the
   account's query budget with them (``PROFILES``); about 40 minutes;
2. this runner on the real 1000-row workload, known then learned quotas (face swap in the
   same run), latencies at 1/5;
3. the competition workload under the 2026 catalogue (``bench.catalogue``): each region's
   defaults before issue 23 and after, against each region's 2026 quotas, with the dry run's
   cost of the task list; about 25 minutes;
4. with ``--all``: the three baselines on the API rows, side by side, and the overhead
   benchmark (zero latency, no quotas); without it BENCHMARKS.md keeps their last tables;
5. the slots plot, BENCHMARKS.md; then ``python -m bench.faceswap`` when it exists, whose
   ``bench/faceswap_results.md`` goes into BENCHMARKS.md.

Options: ``--scale``, ``--baseline-scale``, ``--skip`` parts, ``--all``, ``--seq-cap-s``,
``--overhead-rows``, ``--profile-rows`` (every profile on N rows: a quick look).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from . import catalogue
from .common import (
    BASELINE_SCALE,
    OUT,
    ROOT,
    SCALE,
    build_workload,
    eprint,
    faceswap_available,
    read_json,
)
from .plot import plot_slots
from .report import write

PARTS = ("profiles", "runner", "catalogue", "baselines", "overhead", "faceswap")

# Latency profiles (real seconds), the time scale each runs at and the rows of each workload.
# Only the emulator's latencies are scaled (bench.common.emulator_config); its submit windows
# and the runner's settings are not, except the account's query budget at scale 0.5, which
# scales with the latencies so that each task gets the looks it would get in real time (at
# 0.05 it stays real: 20 x scarcer than in the world it stands for, a harder test). Rows:
# enough that the quotas' pace, not the last task's tail, sets the makespan (the bound is at
# least 10 x the profile's longest likely task, a p99 for the heavy tail).
PROFILES: tuple[tuple[str, float, dict[str, int]], ...] = (
    ("uniform:2:3", 1.0, {"t2i": 216, "edit": 216}),
    ("uniform:5:15", 0.5, {"t2i": 216, "edit": 360}),
    ("lognormal:8:60", 0.5, {"t2i": 360, "edit": 360}),
    ("uniform:60:180", 0.05, {"t2i": 72}),  # t2i as documented: 1-3 minutes
)
LEARNED_PROFILES = ("uniform:5:15", "lognormal:8:60")  # t2i, hidden flash quota learned
POLLS_SCALED_FROM = 0.5  # at this scale and above, the query budget scales too


def profile_runs(rows: int | None = None) -> list[tuple[str, list[str]]]:
    """(result name, arguments of ``bench.profiles``) of every profile configuration;
    ``rows`` instead of each profile's own (a quick look, not the benchmark)."""
    runs: list[tuple[str, list[str]]] = []
    for profile, scale, kinds in PROFILES:
        polls = ["--polls-scaled"] if POLLS_SCALED_FROM <= scale < 1 else []
        for kind, own_rows in kinds.items():
            n = str(rows or own_rows)
            base = ["--profile", profile, "--workload", kind, "--rows", n, "--scale", str(scale)]
            for stamps in (True, False):
                name = f"{profile}-{kind}-{'ts' if stamps else 'nots'}-known"
                runs.append((name, [*base, *polls] + ([] if stamps else ["--no-timestamps"])))
            if kind == "t2i" and profile in LEARNED_PROFILES:
                runs.append((f"{profile}-t2i-ts-learned", [*base, *polls, "--mode", "learned"]))
    return runs


def _py(module: str, *args: str, wait: bool = True, timeout: float | None = None) -> Any:
    cmd = [sys.executable, "-m", module, *args]
    eprint("$ " + " ".join(cmd[1:]))
    env = dict(os.environ)
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, check=False)
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--scale", type=float, default=SCALE, help=f"time scale (default {SCALE:g})")
    p.add_argument(
        "--baseline-scale",
        type=float,
        default=BASELINE_SCALE,
        help=f"time scale of the baselines (default {BASELINE_SCALE:g})",
    )
    p.add_argument("--skip", action="append", default=[], choices=PARTS)
    p.add_argument(
        "--all",
        action="store_true",
        help="also the baselines and the overhead benchmark (about 10 minutes more); "
        "without it BENCHMARKS.md keeps their previous tables",
    )
    p.add_argument("--seq-cap-s", type=float, default=0.0, help="sequential baseline cap")
    p.add_argument("--overhead-rows", type=int, default=3000)
    p.add_argument(
        "--profile-rows",
        type=int,
        default=None,
        help="rows of every profile run instead of each profile's own (a quick look)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write BENCHMARKS.md from the results of the last runs (bench/out/results)",
    )
    args = p.parse_args(argv)
    if args.report_only:
        return _report_only(args)
    if not args.all:
        args.skip += ["baselines", "overhead"]
    started = time.time()
    scale = args.scale
    res = OUT / "results"
    res.mkdir(parents=True, exist_ok=True)
    swap_ok, why = faceswap_available()
    workload = build_workload(deepfake=swap_ok)
    if not swap_ok:
        eprint(f"face swap unavailable ({why}): this runner runs the API rows only")
    results: dict[str, Any] = {
        "scale": scale,
        "baseline_scale": args.baseline_scale,
        "started": started,
        "workload": {"source": workload.source, "rows": workload.rows, "notes": workload.notes},
    }
    s = str(scale)

    if "profiles" not in args.skip:
        results["profiles"] = []
        for name, extra in profile_runs(args.profile_rows):
            path = res / f"profile-{name.replace(':', '-')}.json"
            path.unlink(missing_ok=True)
            _py("bench.profiles", *extra, "--json", str(path))
            if path.is_file():
                results["profiles"].append(read_json(path))

    if "runner" not in args.skip:
        for mode in ("known", "learned"):
            path = res / f"runner-{mode}.json"
            flags = [] if swap_ok else ["--no-faceswap"]
            _py("bench.throughput", "--mode", mode, "--scale", s, "--json", str(path), *flags)
            if path.is_file():
                results[mode] = read_json(path)

    if "catalogue" not in args.skip:
        results["catalogue"] = catalogue.run_all_configs()

    if "baselines" not in args.skip:
        # side by side: each waits on its quota, so they barely share the CPU. The sequential
        # loop would take as long as all its rows' latencies together (about 2.3 h real): it
        # stops at a cap and its makespan is projected from the steady pace it keeps.
        bs = str(args.baseline_scale)
        cap = args.seq_cap_s or 3000 * args.baseline_scale
        procs = []
        for kind in ("naive", "sdk", "sequential"):
            extra = ["--cap-s", str(cap)] if kind == "sequential" else []
            out = str(res / f"baseline-{kind}.json")
            procs.append(
                _py(
                    "bench.baselines",
                    "--kind",
                    kind,
                    "--scale",
                    bs,
                    "--json",
                    out,
                    *extra,
                    wait=False,
                )
            )
            time.sleep(2)  # start-ups apart
        for proc in procs:
            proc.wait()
        results["baselines"] = [
            read_json(res / f"baseline-{k}.json")
            for k in ("sequential", "sdk", "naive")
            if (res / f"baseline-{k}.json").is_file()
        ]

    if "overhead" not in args.skip:
        results["overhead"] = []
        for out, images in (("disk", "tiny"), ("tmpfs", "tiny"), ("tmpfs", "512")):
            path = res / f"overhead-{out}-{images}.json"
            _py(
                "bench.overhead",
                "--out",
                out,
                "--images",
                images,
                "--rows",
                str(args.overhead_rows),
                "--json",
                str(path),
            )
            if path.is_file():
                results["overhead"].append(read_json(path))

    runs = [results[k] for k in ("known",) if k in results]
    naive = next((b for b in results.get("baselines", []) if b["kind"] == "naive"), None)
    if naive:
        runs.append(naive)
    if runs:
        plot_slots(runs, ROOT / "bench" / "slots.png")

    if "faceswap" not in args.skip and (ROOT / "bench" / "faceswap.py").is_file():
        _py("bench.faceswap")
    results["bench_minutes"] = (time.time() - started) / 60
    path = write(results)
    eprint(f"wrote {path} ({results['bench_minutes']:.1f} min)")
    return 0


def _report_only(args: argparse.Namespace) -> int:
    """BENCHMARKS.md from the JSON files the last runs left (a run re-done on its own)."""
    res = OUT / "results"
    workload = build_workload(deepfake=faceswap_available()[0])
    results: dict[str, Any] = {
        "scale": args.scale,
        "baseline_scale": args.baseline_scale,
        "started": min((p.stat().st_mtime for p in res.glob("*.json")), default=time.time()),
        "workload": {"source": workload.source, "rows": workload.rows, "notes": workload.notes},
    }
    results["profiles"] = [
        read_json(path)
        for name, _ in profile_runs(args.profile_rows)
        if (path := res / f"profile-{name.replace(':', '-')}.json").is_file()
    ]
    for mode in ("known", "learned"):
        if (res / f"runner-{mode}.json").is_file():
            results[mode] = read_json(res / f"runner-{mode}.json")
    found = [res / f"catalogue-{name}.json" for name in catalogue.CONFIGS]
    if any(path.is_file() for path in found):
        results["catalogue"] = [read_json(path) for path in found if path.is_file()]
    if "known" in results:
        plot_slots([results["known"]], ROOT / "bench" / "slots.png")
    stamps = [p.stat().st_mtime for p in res.glob("*.json")]
    results["bench_minutes"] = (max(stamps) - min(stamps)) / 60 if stamps else 0.0
    path = write(results)
    eprint(f"wrote {path} from {res}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
