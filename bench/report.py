"""BENCHMARKS.md from the JSON results of one ``python -m bench`` run."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from . import catalogue
from .common import HIDDEN_QUOTAS, LATENCY_S, ROOT

TARGET_KNOWN = 1.10
TARGET_LEARNED = 1.20
TARGET_429_SHARE = 0.01
TARGET_DETECTION_SHARE = 0.05
TARGET_PEAK_MB = 600.0


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _real(seconds: float | None, scale: float) -> str:
    """Scaled seconds and what they stand for in real time."""
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s ({seconds / scale / 60:.1f} min real)"


def _met(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def _learned_limits(run: dict[str, Any]) -> str:
    parts = []
    for m in run.get("models", []):
        if m.get("learned") and m.get("submits"):
            true = (run.get("slots") or {}).get(m["model"], HIDDEN_QUOTAS.get(m["model"]))
            parts.append(
                f"{m['model']}: {m.get('setting', '?')} -> {m['limit']} (true {true}, "
                f"{m['throttled']} x 429)"
            )
    return "; ".join(parts) or "-"


def _refused(run: dict[str, Any]) -> int:
    """Submits the emulator's quotas refused (429) in a run."""
    value = run.get("quota_refusals") or 0
    return int(sum(value.values())) if isinstance(value, dict) else int(value)


def _previous(title: str, path: Path) -> list[str]:
    """A section of the BENCHMARKS.md being replaced (when this run did not measure it)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return m.group(1).strip().splitlines() if m else []


def _ideal(run: dict[str, Any]) -> float | None:
    """What an ideal scheduler would take on the same draws (``bench.ideal``), seconds."""
    from .common import EDIT_MODELS, T2I_MODELS, drawn_latencies, emulator_config
    from .ideal import SimModel, ideal_makespan

    config = emulator_config(run["scale"], profile=run["profile"], timestamps=run["timestamps"])
    # the model lists the profile runs use (bench.common.runner_settings), not the defaults
    lists = {"t2i": list(T2I_MODELS), "tie": list(EDIT_MODELS), "vttie": list(EDIT_MODELS[::-1])}
    n = int(run["rows"])
    if run["workload"] == "t2i":
        rows = [lists["t2i"]] * n
    else:  # bench.profiles.build_rows: odd rows tie, even rows vttie
        rows = [lists["tie"] if i % 2 else lists["vttie"] for i in range(1, n + 1)]
    models = {}
    for name in {m for row in rows for m in row}:
        spec = config.models[name]
        rate = spec.submits_per_s or 1000.0
        count = max(1, round(rate))
        models[name] = SimModel(
            spec.max_in_flight, count, count / rate, drawn_latencies(config, name, n + 1)
        )
    return ideal_makespan(rows, models)


def _profile_name(p: str) -> str:
    kind, a, b = p.split(":")
    if kind == "uniform":
        return f"uniform {a}-{b} s"
    return f"lognormal, median {a} s, p99 {b} s"


def _profiles(results: dict[str, Any], add: Any) -> list[str]:
    """The profile tables; returns the target lines they support."""
    runs: list[dict[str, Any]] = results.get("profiles") or []
    if not runs:
        return []
    add("## Throughput at the quota bound on any latency")
    add("")
    add(
        "The runner with its **default settings** (nothing tuned for the benchmark: "
        "`poll_qps` 15, `poll_first_s` 0.5 s, submits at the quota's rate) against the "
        "emulator with a latency profile for every model that is not the planner's "
        "assumption, with and without the service's own timestamps in the poll answers "
        "(`EmulatorConfig(latency=..., timestamps=...)`). The emulator's latencies are "
        "time-scaled (column `scale`); its submit windows are real (2 submits in any second "
        "per model) and so are the runner's. At scale 0.5 the account's query budget scales "
        "with the latencies on both sides (column `queries/s`: the emulator allows 40 a "
        "second, the runner takes its default share, 3/4 of it), so that each task gets the "
        "looks it would get in real time; at 0.05 it stays real (20 a second, the runner 15): "
        "a world of shorter tasks where the budget is scarcer than in reality. Nothing else "
        "is changed from the defaults."
    )
    add("")
    add(
        "Rows (column `rows`, `bench/__main__.py` `PROFILES`): enough that the quotas' "
        "pace, not the last tasks' tail, sets the makespan (the bound at least about 10 x "
        "the profile's longest likely task, its p99 for the heavy tail)."
    )
    add("")
    add(
        "Workloads: **t2i** (every row t2i: wanx2.1-t2i-turbo and -plus, 2 slots each, "
        f"wan2.2-t2i-flash {HIDDEN_QUOTAS.get('wan2.2-t2i-flash', 2)}) and **edit** (half tie, "
        "half vttie: wanx2.1-imageedit, 2 slots, and the sync qwen-image-edit, 2 calls a "
        "second with no in-flight limit). `known`: the runner is told every quota; "
        "`learned`: wan2.2-t2i-flash's is hidden and learned from 429s (from 2)."
    )
    add("")
    add(
        "Bound: the group's tasks over its best steady pace (per model min(submit rate, "
        "slots / mean task time), the latencies the emulator drew for the tasks it ran), and "
        "no run ends before its longest task; ramp-up and tail are not in it, so 1.00 is "
        "out of reach (more so on short runs). Detection delay: from a task's real end to "
        "the first poll answer saying SUCCEEDED, as the emulator saw it, mean over the "
        "polled tasks; `runner` is what the runner measured itself from the service's "
        "timestamps. 429s: submits refused by the quotas (share of submits)."
    )
    add("")
    add(
        "`ideal`: the same rows and the same draws replayed by an ideal scheduler "
        "(`bench/ideal.py`: every end seen at once, every submit the instant slot and window "
        "allow, no CPU, rows in order to the most preferred free model): the best a "
        "scheduler without foresight reaches on these draws, so makespan / ideal is the "
        "runner's own cost, while the gap to the bound also holds the tail that a short or "
        "heavy-tailed run cannot avoid."
    )
    add("")
    add(
        "| profile (real) | scale | queries/s | workload | timestamps | quotas | rows "
        "| makespan / bound "
        "| makespan / ideal | detection mean (runner) | median task | delay / median "
        "| polls/s | 429s | overruns | CPU per row | peak memory |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        try:
            ideal = _ideal(r)
        except Exception:  # an older result without what the replay needs
            ideal = None
        r["ideal_ratio"] = round(r["makespan_s"] / ideal, 3) if ideal else None
        ts = "yes" if r["timestamps"] else "no"
        det = r.get("detection_mean_s")
        own = r.get("runner_detection_mean_s")
        det_txt = "-" if det is None else f"{1000 * det:.0f} ms"
        if own is not None:
            det_txt += f" ({1000 * own:.0f} ms)"
        share = r.get("detection_share")
        refused = r.get("refused_share") or 0.0
        qps = r.get("poll_qps_account") or 20.0
        add(
            f"| {_profile_name(r['profile'])} | {r['scale']:g} | {qps:g} | {r['workload']} "
            f"| {ts} | "
            f"{r['mode']} | {r['rows_done']}/{r['rows']} | **{_f(r['ratio'], 3)}** | "
            f"{_f(r['ideal_ratio'], 3)} | {det_txt} | {_f(r.get('median_task_s'), 2)} s | "
            f"{'-' if share is None else f'{100 * share:.1f} %'} | {_f(r.get('polls_per_s'))} "
            f"| {r['quota_refusals']} ({100 * refused:.1f} %) | {r['quota_overruns']} | "
            f"{r['cpu_per_row_ms']:.0f} ms | {r['peak_rss_mb']:.0f} MB |"
        )
    add("")
    others = [r["others_busy_cores"] for r in runs if r.get("others_busy_cores") is not None]
    if others:
        add(
            f"Other processes on the 2 cores during these runs: {min(others):.1f} to "
            f"{max(others):.1f} cores (mean {sum(others) / len(others):.1f}): a busy box "
            "makes polls and submits late, so these are figures under load."
        )
        add("")
    targets = []
    known = [r for r in runs if r["mode"] == "known"]
    learned = [r for r in runs if r["mode"] == "learned"]
    if known:
        worst = max(known, key=lambda r: r["ratio"] or 0)
        targets.append(
            f"- Makespan at most {TARGET_KNOWN} x the bound in every profile with known "
            f"quotas: worst {worst['ratio']:.3f} ({_profile_name(worst['profile'])}, "
            f"{worst['workload']}) -> "
            f"{_met(all((r['ratio'] or 9) <= TARGET_KNOWN for r in known))}."
        )
    if learned:
        worst = max(learned, key=lambda r: r["ratio"] or 0)
        targets.append(
            f"- At most {TARGET_LEARNED} x with learned quotas: worst {worst['ratio']:.3f} -> "
            f"{_met(all((r['ratio'] or 9) <= TARGET_LEARNED for r in learned))}."
        )
    shares = [r for r in runs if r.get("detection_share") is not None]
    if shares:
        worst = max(shares, key=lambda r: r["detection_share"])
        targets.append(
            "- Mean detection delay under 5 % of the median task time: worst "
            f"{100 * worst['detection_share']:.1f} % ({_profile_name(worst['profile'])}, "
            f"{worst['workload']}, timestamps {'on' if worst['timestamps'] else 'off'}) -> "
            f"{_met(all(r['detection_share'] < TARGET_DETECTION_SHARE for r in shares))}."
        )
    ideal = sorted(r["ideal_ratio"] for r in runs if r.get("ideal_ratio"))
    if ideal:
        targets.append(
            f"- (Not a target of the issue) the runner's own cost, makespan / ideal replay: "
            f"median {ideal[len(ideal) // 2]:.3f}, worst {ideal[-1]:.3f}."
        )
    overruns = sum(r["quota_overruns"] for r in runs)
    targets.append(f"- No quota overrun: {overruns} in all -> {_met(overruns == 0)}.")
    worst = max(runs, key=lambda r: r.get("refused_share") or 0)
    ok = all((r.get("refused_share") or 0) < TARGET_429_SHARE for r in runs)
    targets.append(
        "- Under 1 % of submits answered 429: worst "
        f"{100 * (worst.get('refused_share') or 0):.1f} % ({worst['quota_refusals']} of "
        f"{worst['submits']}) -> {_met(ok)}."
    )
    return targets


def render(results: dict[str, Any], previous: Path = ROOT / "BENCHMARKS.md") -> str:
    known: dict[str, Any] | None = results.get("known")
    learned: dict[str, Any] | None = results.get("learned")
    baselines: list[dict[str, Any]] = results.get("baselines", [])
    overhead: list[dict[str, Any]] = results.get("overhead", [])
    scale = float(results.get("scale", 0.2))
    inv = round(1 / scale)
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks")
    add("")
    add(
        "Throughput at the quota limit on the DashScope emulator (`runner.emulator`): this "
        "runner on latency profiles it does not assume, on the real 1000-row workload, and "
        "against the baselines. The tables come from one `python -m bench` run (what "
        "`make bench` runs) unless a section says otherwise; the notes at the end say which "
        "code it ran."
    )
    add("")
    add(
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(results.get('started', 0)))}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{results.get('bench_minutes', 0):.1f} min in all. The machine is shared with "
        "other work."
    )
    add("")
    targets = _profiles(results, add)
    # ---- the real workload
    add("## The real 1000-row workload")
    add("")
    lo, hi = LATENCY_S
    add(
        f"Every model's latency uniform in {lo:.0f}-{hi:.0f} s, scaled to 1/{inv} on the "
        "emulator (its quota windows real, as above; the runner at its default settings: "
        "a world of 1-3 s tasks). The emulator serves one cached placeholder PNG per size "
        "(its own rendering would take the runner's CPU here). "
    )
    wl = (known or learned or {}).get("workload") or results.get("workload", {})
    add("")
    add(
        f"Workload: {wl.get('source', '?')}, rows {wl.get('rows', {})}. "
        + " ".join(f"{n}." for n in wl.get("notes", []))
        + " The VIEScore judge (a quality add-on) is off: the pipeline measured is submit, "
        "poll, download, write."
    )
    add("")
    runs = [r for r in (known, learned) if r]
    if runs:
        add("| | " + " | ".join(r["name"] for r in runs) + " |")
        add("|---|" + "---|" * len(runs))

        def row(label: str, fn: Any) -> None:
            add(f"| {label} | " + " | ".join(fn(r) for r in runs) + " |")

        row("rows done", lambda r: f"{r['rows_done']} / {r['rows_total']}")
        row("makespan", lambda r: f"{r['makespan_s']:.1f} s")
        row("quota-bound lower bound", lambda r: f"{r['lower_bound']['bound_s']:.1f} s")
        row("makespan / lower bound", lambda r: f"**{r['ratio']:.3f}**")
        row(
            "429s on submits (share of submits)",
            lambda r: f"{_refused(r)} ({100 * _refused(r) / max(1, r['submits']):.2f} %)",
        )
        row("quota overruns (emulator)", lambda r: str(r["quota_overruns"]))
        row(
            "polls sent (per API row)",
            lambda r: f"{r['polls']} ({r['polls'] / max(1, r['rows_api']):.1f})",
        )
        row("learned limits", _learned_limits)
        row("runner CPU (per row)", lambda r: f"{r['cpu_s']:.1f} s ({r['cpu_per_task_ms']:.0f} ms)")
        row("face-swap workers' CPU", lambda r: f"{r['children_cpu_s']:.1f} s")
        row("emulator CPU", lambda r: f"{r['emulator_cpu_s']:.1f} s")
        row("peak memory (runner process)", lambda r: f"{r['peak_rss_mb']:.0f} MB")
        row(
            "event-loop lag p50 / p99 / max",
            lambda r: "{p50} / {p99} / {max} ms".format(
                **(r.get("loop_lag_ms") or {"p50": "-", "p99": "-", "max": "-"})
            ),
        )
        add("")
        if (ROOT / "bench" / "slots.png").is_file():
            add("![slots in use per model](bench/slots.png)")
            add("")
            add(
                "Slots in use per model over time in the known-quotas run, as the emulator "
                "counts them, stacked (qwen-image-edit has no in-flight limit: its calls in "
                "flight)."
            )
            add("")
        peak = max(r["peak_rss_mb"] for r in runs)
        targets.append(
            f"- Peak memory at most {TARGET_PEAK_MB:.0f} MB on the 1000-row workload: "
            f"{peak:.0f} MB -> {_met(peak <= TARGET_PEAK_MB)}."
        )
        if known:
            targets.append(
                f"- 1000-row workload, known quotas: {known['ratio']:.3f} x the bound -> "
                f"{_met(known['ratio'] <= TARGET_KNOWN)}."
            )
        if learned:
            targets.append(
                f"- 1000-row workload, learned quotas: {learned['ratio']:.3f} x the bound -> "
                f"{_met(learned['ratio'] <= TARGET_LEARNED)}."
            )
        every = all(r["rows_done"] == r["rows_total"] for r in runs)
        targets.append(f"- All rows done in every configuration of this runner: {_met(every)}.")
    else:
        add("Not measured in this run.")
        add("")
    # ---- comparison
    add("## Side by side (same emulator, same API rows)")
    add("")
    if baselines:
        add(
            "| configuration | rows done | 429s | polls | makespan | real-time equivalent "
            "| vs this runner |"
        )
        add("|---|---|---|---|---|---|---|")
        ref = known["api_done_at_s"] / known["scale"] if known else None
        for r in [*baselines, *runs]:
            api = r.get("rows_api", r["rows_total"])
            done = r.get("rows_api_done", r["rows_done"])
            span = r.get("api_done_at_s", r["makespan_s"])
            note = ""
            if r.get("projected_makespan_s"):
                span = r["projected_makespan_s"]
                note = " (projected: stopped at the time cap)"
            add(
                f"| {r['name']} | {done} / {api} | {r['http_429']} | {r['polls']} | "
                f"{span:.1f} s{note} | {span / r['scale'] / 60:.0f} min | "
                f"{'x %.2f' % (span / r['scale'] / ref) if ref else '-'} |"
            )
        add("")
    else:
        old = _previous("Side by side (same emulator, same API rows)", previous)
        if old:
            if not old[0].startswith("Not re-run"):
                add(
                    "Not re-run this time: the table of the previous `make bench` (2026-11-22, "
                    "everything scaled 1/5 for the runner and 1/20 for the baselines, quota "
                    "windows included), kept as it was."
                )
                add("")
            lines.extend(old)
            add("")
    # ---- overhead
    if overhead:
        add("## Overhead: zero latency, no quotas")
        add("")
        add("| output folder | results | rows | tasks/s | runner CPU per task | emulator CPU |")
        add("|---|---|---|---|---|---|")
        for r in overhead:
            size = "64x64" if r["images"] == "tiny" else "512x512"
            where = "tmpfs (/dev/shm)" if "shm" in r["out"] else "disk (bench/out)"
            add(
                f"| {where} | {size} | {r['rows_done']} | {r['tasks_per_s']:.0f} | "
                f"{r['cpu_per_task_ms']:.2f} ms | {r['emulator_cpu_s']:.1f} s |"
            )
        add("")
    else:
        old = _previous("Overhead: zero latency, no quotas", previous)
        if old:
            add("## Overhead: zero latency, no quotas")
            add("")
            if not old[0].startswith("Not re-run"):
                add("Not re-run this time (`python -m bench --all`): the previous table.")
                add("")
            lines.extend(old)
            add("")
    # ---- the 2026 catalogue (bench.catalogue): this run's, else the previous section
    cat = results.get("catalogue")
    cat_lines = catalogue.section(cat) if cat else _previous(catalogue.TITLE, previous)
    if cat_lines:
        add(f"## {catalogue.TITLE}")
        add("")
        lines.extend(cat_lines)
        add("")
    # ---- targets
    add("## Targets")
    add("")
    lines.extend(targets)
    add(
        "- (Retired: 300 tasks/s of pipeline overhead. What a run costs is reported as runner "
        "CPU per row and peak memory above.)"
    )
    add("")
    notes = ROOT / "bench" / "NOTES.md"
    if notes.is_file():
        add(notes.read_text(encoding="utf-8").strip())
        add("")
    swap = ROOT / "bench" / "faceswap_results.md"
    if swap.is_file():
        add(swap.read_text(encoding="utf-8").strip())
        add("")
    # `make gpu-check` owns its section (figures from a GPU machine): carried over as it is
    gpu = _previous("Local generation (`make gpu-check`)", previous)
    if gpu:
        add("## Local generation (`make gpu-check`)")
        add("")
        lines.extend(gpu)
        add("")
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], path: Path = ROOT / "BENCHMARKS.md") -> Path:
    text = render(results, previous=path)
    path.write_text(text, encoding="utf-8")
    return path
