"""``python -m bench`` (``make bench``): every benchmark, then BENCHMARKS.md and the plot.

Each configuration runs in a process of its own (its CPU time and peak memory are its own)
against an emulator in another process:

1. this runner, known quotas, then learned quotas (all rows, face swap in the same run);
2. the three baselines on the API rows, side by side (they are light on CPU: they wait);
   the sequential loop stops at a time cap and its makespan is projected;
3. the overhead benchmark (zero latency, no quotas), output on disk and on tmpfs;
4. the slots plot, BENCHMARKS.md; then ``python -m bench.faceswap`` when it exists, whose
   ``bench/faceswap_results.md`` goes into BENCHMARKS.md.

The runner runs at 1/5 of real time: its CPU work per row (image decoding and encoding,
face swap) does not scale, and faster it would measure the CPU. The baselines run at 1/20:
they do little work per row and wait most of the time, and at 1/5 they would take half an
hour; the comparison is in real-time equivalents (makespan / scale).

Options: ``--scale``, ``--baseline-scale``, ``--skip`` parts, ``--seq-cap-s``,
``--overhead-rows``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

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

PARTS = ("runner", "baselines", "overhead", "faceswap")


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
    p.add_argument("--seq-cap-s", type=float, default=0.0, help="sequential baseline cap")
    p.add_argument("--overhead-rows", type=int, default=3000)
    args = p.parse_args(argv)
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

    if "runner" not in args.skip:
        for mode in ("known", "learned"):
            path = res / f"runner-{mode}.json"
            flags = [] if swap_ok else ["--no-faceswap"]
            _py("bench.throughput", "--mode", mode, "--scale", s, "--json", str(path), *flags)
            if path.is_file():
                results[mode] = read_json(path)

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


if __name__ == "__main__":
    raise SystemExit(main())
