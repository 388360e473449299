"""A finished run's summary as the terminal shows it: rows by type, models, cost, the runs of
the folder, and what to do about the rows not done.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.outcomes import STATUS_LABEL, RowResult, RunSummary
from runner.progress import duration, limit_text
from runner.scheduling.lanes import cap_note

TYPE_ORDER = ("t2i", "tie", "vttie", "deepfake")


def _row_line(r: RowResult) -> str:
    return f"  row {r.index} ({r.task_type}, {STATUS_LABEL[r.status]}): {r.reason}"


def _money(amount: float | None, currency: str) -> str:
    return "price unknown" if amount is None else f"{amount:,.2f} {currency}".strip()


def _print_cost(console: Console, summary: RunSummary) -> None:
    billed = [b for b in summary.billed if b.get("images")]
    if not billed:
        return
    ct = Table(title="Images billed (all runs in this folder, at list prices)")
    for col in ("model", "images", "price / image", "est. cost"):
        ct.add_column(col, justify="left" if col == "model" else "right")
    currency = ""
    for b in billed:
        currency = b.get("currency") or currency
        price = b.get("price")
        ct.add_row(
            str(b["model"]),
            str(b["images"]),
            "–" if price is None else f"{price:g}",
            _money(b.get("cost"), b.get("currency", "")),
        )
    console.print(ct)
    known = [b["cost"] for b in billed if b.get("cost") is not None]
    unknown = [str(b["model"]) for b in billed if b.get("cost") is None]
    line = f"estimated cost {_money(sum(known), currency)}" if known else "estimated cost unknown"
    if unknown and known:
        line += f" (+ {', '.join(unknown)}: no price in settings)"
    if summary.emulated:
        line += "; the emulator bills nothing: this is what the real run would cost"
    console.print(line, highlight=False)


def _print_runs(console: Console, summary: RunSummary) -> None:
    if len(summary.runs) < 2:
        return
    console.print(f"{len(summary.runs)} runs in this folder:", highlight=False)
    for i, run in enumerate(summary.runs, 1):
        console.print(f"  {i}. {run_line(run)}", highlight=False)


def run_line(run: dict[str, Any]) -> str:
    """One run of the folder: when, how long, submits, 429s (from its journal records)."""
    when = run.get("t")
    stamp = (
        dt.datetime.fromtimestamp(float(when), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if isinstance(when, int | float)
        else "?"
    )
    if not run.get("ended"):
        return f"{stamp}, ended without closing (killed?)"
    parts = [
        stamp,
        duration(float(run.get("elapsed_s") or 0.0)),
        f"{run.get('submits', 0)} submits",
        f"{run.get('throttled', 0)} × 429",
        f"{run.get('done', 0)} done",
    ]
    if run.get("failed"):
        parts.append(f"{run['failed']} not done")
    if run.get("emulated"):
        parts.append("emulator")
    if run.get("interrupted"):
        parts.append(f"interrupted ({run['interrupted']})")
    return ", ".join(parts)


def print_summary(console: Console, summary: RunSummary, out_dir: Path | None = None) -> None:
    if summary.left_early:  # asked to leave at once: the closing lines only
        done = sum(1 for r in summary.rows if r.ok)
        console.print(f"{done} of {len(summary.rows)} rows done.", highlight=False)
        _print_closing(console, summary, out_dir)
        return
    table = Table(title="Run summary", show_lines=False)
    for col in ("type", "done", "already done", "failed", "bad input", "stopped", "total"):
        table.add_column(col, justify="right" if col != "type" else "left")
    by_type = summary.by_type()
    for ttype in (*TYPE_ORDER, *sorted(set(by_type) - set(TYPE_ORDER))):
        c = by_type.get(ttype)
        if not c:
            continue
        table.add_row(
            ttype,
            str(c["done"]),
            str(c["skipped"]),
            str(c["failed"]),
            str(c["bad"]),
            str(c["stopped"]),
            str(sum(c.values())),
        )
    console.print(table)
    used = [m for m in summary.models if m.get("submits")]
    if used:
        mt = Table(title="Models (this run)", show_lines=False)
        for col in ("model", "limit", "submits", "429", "done", "p50 s", "p90 s"):
            mt.add_column(col)
        for m in used:
            limit = limit_text(m.get("limit")) + (" (learned)" if m.get("learned") else "")
            mt.add_row(
                str(m["model"]),
                limit,
                str(m["submits"]),
                str(m["throttled"]),
                str(m["completed"]),
                str(m["p50_s"] or "-"),
                str(m["p90_s"] or "-"),
            )
        console.print(mt)
    note = cap_note(summary.models)
    if note:
        console.print(note, style="yellow", highlight=False)
    _print_cost(console, summary)
    if summary.judge:
        from runner.backends.judge.usage import describe

        currency = next((str(b["currency"]) for b in summary.billed if b.get("currency")), "")
        console.print(describe(summary.judge, currency), highlight=False)
    ids = [r.identity_target for r in summary.rows if r.identity_target is not None]
    if ids:
        ori = [r.identity_ori for r in summary.rows if r.identity_ori is not None]
        console.print(
            f"face swap identity: mean cosine to target {sum(ids) / len(ids):.3f}"
            + (f", to ori {sum(ori) / len(ori):.3f}" if ori else "")
            + f" over {len(ids)} rows",
            highlight=False,
        )
    console.print(
        f"this run: {summary.elapsed_s:.1f} s, submits {summary.submits}, retries "
        f"{summary.retries}, 429s {summary.throttled}, polls {summary.polls}, "
        f"backend {summary.backend}",
        highlight=False,
    )
    _print_runs(console, summary)
    if any(r.emulated for r in summary.rows if r.ok):
        console.print(
            "These images are the EMULATOR's placeholders (no DASHSCOPE_API_KEY was set); "
            "set the key to generate real ones.",
            style="bold yellow",
        )
    _print_closing(console, summary, out_dir)


def _print_closing(console: Console, summary: RunSummary, out_dir: Path | None) -> None:
    failed = summary.failed
    if summary.stopped_reason and not summary.stopped_by_user:
        # the service's messages end with a period of their own ("Invalid API-key provided.")
        reason = summary.stopped_reason.rstrip(". ")
        console.print(
            f"Run stopped: {reason}. Everything done so far is kept; "
            "fix the cause and run the same command again to go on.",
            style="bold red",
            highlight=False,
            markup=False,
        )
    if summary.interrupted:
        how = " and left at once (report.html not updated)" if summary.left_early else ""
        console.print(
            f"Interrupted ({summary.interrupted}){how}: everything done so far is kept; "
            "run the same command again to go on.",
            style="bold yellow",
            highlight=False,
        )
    if not failed:
        if not summary.stopped_reason and not summary.interrupted:
            console.print("Every row is done.", style="green")
        return
    # rows the stop or the interrupt cut short say what the line above says: count them
    cut = bool(summary.stopped_reason or summary.interrupted)
    listed = [r for r in failed if not (cut and r.status == "stopped")]
    where = f"all in {out_dir / 'failed.csv'}" if out_dir else "all in failed.csv"
    console.print(f"{len(failed)} row(s) not done ({where}):", style="red", highlight=False)
    for r in listed[:15]:
        console.print(_row_line(r), highlight=False)
    if len(listed) > 15:
        console.print(f"  ... and {len(listed) - 15} more", highlight=False)
    if len(listed) < len(failed):
        console.print(f"  {len(failed) - len(listed)} row(s) not finished", highlight=False)
    held = [r for r in failed if summary.budget is not None and "budget" in (r.reason or "")]
    held_ids = {r.index for r in held}
    retry = [r for r in failed if r.status in ("failed", "stopped") and r.index not in held_ids]
    bad = [r for r in failed if r.status == "bad"]
    if held:
        console.print(
            f"{len(held)} row(s) were not submitted: the budget {summary.budget:g} was reached; "
            "run again with a larger --budget to do them (the spend so far counts).",
            highlight=False,
        )
    if retry:
        console.print(
            f"Run the same command again to retry the {len(retry)} failed or unfinished row(s) "
            "(done rows are kept, journaled tasks are fetched, not paid again).",
            highlight=False,
        )
    if bad:
        console.print(
            f"{len(bad)} row(s) have bad input (a missing or unreadable file, no face found, "
            "content the service refused, a bad field): "
            "running again will not help; fix the task file or the images, then run again.",
            highlight=False,
        )
    console.print(
        "`python -m runner submit` fills any gap with a fallback and names it.", highlight=False
    )
