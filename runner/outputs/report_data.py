"""The report as data: a row per task (status, inputs, output, candidates, the chosen file
and its score), per-type statistics, and the facts of the folder's runs and costs.

Rendering is runner.outputs.report_html's; nothing here writes HTML.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.backends.judge.usage import describe
from runner.backends.judge.wins import standings
from runner.outcomes import runs_view
from runner.outputs.candidates import result_candidates
from runner.outputs.thumbs import Thumb, Thumbs
from runner.store.journal import JournalState, RowState
from runner.tasks import TASK_TYPES, BadRow, Task, TaskList

__all__ = [
    "STATUSES",
    "Overview",
    "Row",
    "billed",
    "build_rows",
    "duration",
    "fmt",
    "money",
    "overview",
    "present_types",
    "run_note",
    "run_started",
    "scored",
    "type_stats",
]

STATUSES = ("done", "failed", "bad input", "not run")
# a candidate as shown: file, thumbnail, judge record, model
Candidate = tuple[str, Thumb, dict[str, Any] | None, str | None]


@dataclass
class Row:
    index: str
    task_type: str
    prompt: str
    status: str  # one of STATUSES
    reason: str | None = None
    inputs: list[tuple[str, Thumb | None, str]] = field(default_factory=list)  # label, thumb, name
    output: Thumb | None = None
    chosen_file: str | None = None
    chosen_score: dict[str, Any] | None = None
    candidates: list[Candidate] = field(default_factory=list)
    model: str | None = None
    emulated: bool = False
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Sources:
    """What every row is built from."""

    out_dir: Path
    tasklist: TaskList
    state: JournalState
    thumbs: Thumbs
    tasks: dict[str, Task]
    bad: dict[str, BadRow]
    last_run: dict[str, dict[str, Any]]  # the last run's summary row of each index


def scored(rec: dict[str, Any] | None) -> bool:
    """A judge record with a usable overall score."""
    return bool(rec) and rec.get("error") is None and isinstance(rec.get("overall"), int | float)


def build_rows(
    out_dir: Path,
    tasklist: TaskList,
    state: JournalState,
    summary: dict[str, Any],
    thumbs: Thumbs,
) -> list[Row]:
    """A row per task in task-list order; every picture shown is registered with ``thumbs``."""
    src = _Sources(
        out_dir=out_dir,
        tasklist=tasklist,
        state=state,
        thumbs=thumbs,
        tasks={t.index: t for t in tasklist.tasks},
        bad={b.index: b for b in tasklist.bad},
        last_run={
            str(r.get("index")): r for r in summary.get("rows") or [] if isinstance(r, dict)
        },
    )
    return [_build_row(src, index) for index in tasklist.order]


def _build_row(src: _Sources, index: str) -> Row:
    task = src.tasks.get(index)
    state_row = src.state.rows.get(index) or RowState(index=index)
    row = Row(
        index=index,
        task_type=src.tasklist.types.get(index, "?"),
        prompt=task.prompt if task else "",
        status="not run",
        model=state_row.model,
        emulated=state_row.emulated,
        result=state_row.result,
    )
    row.inputs = _inputs(src, index, task)  # shown for every row, failed ones included
    out_rel = f"imgs/{index}.jpg"
    has_output = (src.out_dir / out_rel).is_file()
    row.status, row.reason = _status(
        src.bad.get(index), state_row, src.last_run.get(index, {}), has_output
    )
    if has_output:
        row.output = src.thumbs.output(out_rel)
    judged = state_row.judged
    for c in result_candidates(src.out_dir, index, state_row):
        row.candidates.append(
            (c["file"], src.thumbs.output(c["file"]), judged.get(c["file"]), c.get("model"))
        )
    row.chosen_file = _chosen(state_row, row.candidates, out_rel if has_output else None)
    if row.chosen_file is not None:
        row.chosen_score = judged.get(row.chosen_file) or (
            judged.get(out_rel) if has_output else None
        )
    return row


def _inputs(src: _Sources, index: str, task: Task | None) -> list[tuple[str, Thumb | None, str]]:
    if task is not None:
        return [
            (label, src.thumbs.input(path), name)
            for label, path, name in (
                ("ori", task.ori_image, task.ori_name),
                ("target", task.target_image, task.target_name),
            )
            if path is not None
        ]
    bad = src.bad.get(index)
    if bad is None or not bad.ori_name:
        return []
    path = (src.tasklist.images_dir / bad.ori_name).resolve()
    # a bad row's name may point anywhere: only a file under the images folder is shown
    inside = path.is_relative_to(src.thumbs.images_dir)
    return [("ori", src.thumbs.input(path) if inside and path.is_file() else None, bad.ori_name)]


def _status(
    bad: BadRow | None, state_row: RowState, prior: dict[str, Any], has_output: bool
) -> tuple[str, str | None]:
    """(status, reason): the journal first, then what the last run's summary said."""
    if bad is not None:  # the row's own input: one status everywhere ("bad input")
        return "bad input", bad.reason
    if state_row.done and has_output:
        return "done", None
    if state_row.failed_reason:
        return "failed", state_row.failed_reason
    if prior.get("status") == "bad":
        return "bad input", prior.get("reason") or "bad input"
    if prior.get("status") in ("failed", "stopped"):
        return "failed", prior.get("reason") or prior.get("status")
    return ("done" if has_output else "not run"), None


def _chosen(state_row: RowState, candidates: list[Candidate], output: str | None) -> str | None:
    """The file shown as chosen: rejudge's pick, the scheduler's, the best scored candidate,
    else the output itself."""
    chosen = state_row.chosen or _scheduler_pick(state_row.result)
    if chosen is None and candidates:
        best = max(
            (c for c in candidates if scored(c[2])),
            key=lambda c: float(c[2]["overall"]) if c[2] else -1.0,
            default=None,
        )
        chosen = best[0] if best else None
    return output if chosen is None else chosen


def _scheduler_pick(result: dict[str, Any]) -> str | None:
    """The scheduler journals its pick as a position in "candidates" (a file name of old)."""
    picked = result.get("chosen")
    listed = result.get("candidates")
    if isinstance(picked, str):
        return picked
    if (
        isinstance(picked, int)
        and isinstance(listed, list)
        and 0 <= picked < len(listed)
        and isinstance(listed[picked], dict)
    ):
        return listed[picked].get("file")
    return None


# --------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "–"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def money(amount: Any, currency: str) -> str:
    if not isinstance(amount, int | float):
        return "price unknown"
    return f"{amount:,.2f} {currency}".strip()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------- statistics


def present_types(rows: list[Row]) -> list[str]:
    """The task types of the rows: the known ones in their order, then any other by name."""
    order = [t for t in TASK_TYPES if any(r.task_type == t for r in rows)]
    return order + sorted({r.task_type for r in rows} - set(order))


def _row_overall(r: Row) -> float:
    """The row's part of the estimate: its chosen score when done and scored, else 0."""
    if r.status == "done" and r.chosen_score and scored(r.chosen_score):
        return float(r.chosen_score["overall"])
    return 0.0


def _type_stat(ttype: str, mine: list[Row]) -> dict[str, Any]:
    counts = Counter(r.status for r in mine)
    scores = [r.chosen_score for r in mine if r.status == "done" and scored(r.chosen_score)]
    stat: dict[str, Any] = {"type": ttype, "rows": len(mine)}
    stat.update({status: counts[status] for status in STATUSES})
    stat.update(
        scored=len(scores),
        sc=_mean([min(s["sc"]) for s in scores if s and s.get("sc")]),
        pq=_mean([min(s["pq"]) for s in scores if s and s.get("pq")]),
        identity=_mean(
            [float(s["identity"]) for s in scores if s and s.get("identity") is not None]
        ),
        overall=_mean([float(s["overall"]) for s in scores if s]),
        estimate=_mean([_row_overall(r) for r in mine]),
    )
    return stat


def type_stats(rows: list[Row]) -> tuple[list[dict[str, Any]], float | None, int]:
    """Per-type table rows, the estimated overall score (unscored rows count 0), scored rows."""
    types = present_types(rows)
    table = [_type_stat(ttype, [r for r in rows if r.task_type == ttype]) for ttype in types]
    # summed in the table's order, as the per-type figures are
    by_type = [r for ttype in types for r in rows if r.task_type == ttype]
    return table, _mean([_row_overall(r) for r in by_type]), sum(t["scored"] for t in table)


# --------------------------------------------------------------------------- runs and costs


@dataclass
class Overview:
    """The page's summary: facts as (name, value) pairs and the tables under them."""

    facts: list[tuple[str, str]]
    emulated: bool | None  # the service was the emulator (None: not known)
    types: list[dict[str, Any]]
    billed: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    # per task type, "variant" and "model": each one's decided rows, wins, win rate, mean score
    wins: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)


def billed(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's per-model billing entries that billed any image."""
    return [b for b in summary.get("billed") or [] if isinstance(b, dict) and b.get("images")]


def _total(runs: list[dict[str, Any]], key: str, fallback: Any) -> Any:
    """A figure summed over the folder's closed runs (the last summary's when none closed)."""
    values = [r[key] for r in runs if r.get("ended") and isinstance(r.get(key), int | float)]
    return sum(values) if values else fallback


def _cost_fact(summary: dict[str, Any]) -> str:
    entries = billed(summary)
    if not entries:
        return "–"
    currency = next((str(b.get("currency")) for b in entries if b.get("currency")), "")
    known = [b["cost"] for b in entries if isinstance(b.get("cost"), int | float)]
    images = sum(int(b["images"]) for b in entries)
    text = f"{images} images billed, " + (money(sum(known), currency) if known else "price unknown")
    missing = [str(b["model"]) for b in entries if not isinstance(b.get("cost"), int | float)]
    if missing and known:
        text += f" (+ {', '.join(missing)}: no price in settings)"
    if summary.get("emulated"):
        text += "; at list prices: the emulator bills nothing"
    return text


def run_started(run: dict[str, Any]) -> str:
    t = run.get("t")
    if not isinstance(t, int | float):
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(t)))


def run_note(run: dict[str, Any]) -> str:
    if not run.get("ended"):
        return "ended without closing (killed?)"
    if run.get("interrupted"):
        return f"interrupted ({run['interrupted']})"
    return f"stopped: {run['stopped']}" if run.get("stopped") else ""


def _service(rows: list[Row], summary: dict[str, Any]) -> tuple[str, bool | None]:
    """What served the images, and whether it was the emulator (None: not known)."""
    emulated = summary.get("emulated")
    if emulated is None:
        emulated = any(r.emulated for r in rows) if any(r.status == "done" for r in rows) else None
    backend = summary.get("backend")
    if emulated is True:
        return "EMULATOR (local stand-in, not DashScope: images are placeholders)", emulated
    if emulated is False:
        return (f"DashScope ({backend})" if backend else "DashScope"), emulated
    return "unknown (no summary.json)", emulated


def _models_used(rows: list[Row], summary: dict[str, Any]) -> str:
    used: list[str] = []
    for m in summary.get("models") or []:
        if isinstance(m, dict) and m.get("submits"):
            used.append(
                f"{m.get('model')}: {m.get('submits')} submits, {m.get('throttled', 0)} × 429"
                + (f", p50 {m['p50_s']} s" if m.get("p50_s") else "")
            )
    if not used:  # no summary: what the journal says made each row
        seen_models = Counter(r.model for r in rows if r.model)
        used = [f"{name}: {n} rows" for name, n in sorted(seen_models.items())]
    return "; ".join(used) or "–"


def _judges(state: JournalState) -> str:
    records = [rec for st in state.rows.values() for rec in st.judged.values()]
    judges = sorted({str(rec.get("judge_model")) for rec in records if rec.get("judge_model")})
    if not judges:
        return "–"
    emulated = any(rec.get("emulated") for rec in records)
    return ", ".join(judges) + (" (emulated)" if emulated else "")


def _judge_spend(runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The judge's calls, tokens and estimated cost over the folder's closed runs."""
    usages = [r["judge"] for r in runs if r.get("ended") and isinstance(r.get("judge"), dict)]
    if not usages and isinstance(summary.get("judge"), dict):
        usages = [summary["judge"]]
    if not usages:
        return "–"
    costs = [u.get("cost") for u in usages]
    total = {
        "model": ", ".join(sorted({str(u.get("model")) for u in usages})),
        "calls": sum(int(u.get("calls") or 0) for u in usages),
        "throttled": sum(int(u.get("throttled") or 0) for u in usages),
        "input_size": sum(int(u.get("input_size") or 0) for u in usages),
        "output_size": sum(int(u.get("output_size") or 0) for u in usages),
        "cost": None if any(c is None for c in costs) else sum(costs),
    }
    currency = next((str(b.get("currency")) for b in billed(summary) if b.get("currency")), "")
    refs = sorted({str(u.get("reference")) for u in usages if u.get("reference")})
    return describe(total, currency) + (f"; texts and parser: {refs[-1]}" if refs else "")


def _wins(rows: list[Row], state: JournalState) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per task type (in the rows' order), variants and models as the judge ranked them."""
    table = standings(state, {r.index: r.task_type for r in rows})
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for ttype in present_types(rows):
        kinds = table.get(ttype)
        if not kinds:
            continue
        out[ttype] = {
            kind: [
                s.view()
                for s in sorted(
                    kinds[kind].values(), key=lambda s: (-(s.win_rate or 0.0), -(s.mean or 0.0))
                )
            ]
            for kind in ("variant", "model")
        }
    return out


def overview(rows: list[Row], summary: dict[str, Any], state: JournalState) -> Overview:
    table, estimate, scored_rows = type_stats(rows)
    runs = runs_view(state.runs_info)
    counts = Counter(r.status for r in rows)
    service, emulated = _service(rows, summary)
    facts = [
        ("Rows", f"{len(rows)}"),
        ("Done", f"{counts['done']}"),
        ("Failed", f"{counts['failed']}"),
        ("Bad input", f"{counts['bad input']}"),
        ("Not run", f"{counts['not run']}"),
        (
            "Estimated overall score",
            f"{fmt(estimate)} ({scored_rows} of {len(rows)} rows scored; "
            "mean of per-row VIEScore overall, unscored rows count as 0)",
        ),
        ("Runs", f"{len(runs)} in this folder (listed below)" if runs else "–"),
        ("Run time (all runs)", duration(_total(runs, "elapsed_s", summary.get("elapsed_s")))),
        ("Retries (all runs)", fmt(_total(runs, "retries", summary.get("retries")))),
        ("429s (all runs)", fmt(_total(runs, "throttled", summary.get("throttled")))),
        ("Estimated cost", _cost_fact(summary)),
        ("Service", service),
        ("Models used", _models_used(rows, summary)),
        ("Judge", _judges(state)),
        ("Judge calls (all runs)", _judge_spend(runs, summary)),
    ]
    if summary.get("faceswap"):
        facts.append(("Face swap", str(summary["faceswap"])))
    if summary.get("stopped_reason"):
        facts.append(("Stopped", str(summary["stopped_reason"])))
    if state.damaged_lines:
        facts.append(("Journal", f"{state.damaged_lines} damaged line(s) skipped"))
    return Overview(facts, emulated, table, billed(summary), runs, _wins(rows, state))
