"""The command line: the only part of runner that prints to the terminal.

    python -m runner --tasks T.csv [--images DIR] [--out DIR] [--concurrency 32]
                     [--dry-run] [--budget AMOUNT] [--repay-uncertain]
    python -m runner submit --out DIR --team NAME [--tasks T.csv] [--strict] [--allow-emulated]
    python -m runner doctor | report | rejudge   (see --help)

Exit status (run): 0 every row done; 1 some rows not done; 2 bad input (task file, settings,
arguments); 3 the run was stopped (bad key, exhausted account, disk full, service
unreachable, folder in use); 130 Ctrl-C; 143 SIGTERM.

In this file, in order: the commands (``cmd_run`` with its dry run, ``cmd_submit``,
``cmd_report``, ``cmd_rejudge``: each ``handler(args, console) -> exit status``); the dry
run (``dry_run``: the task file and inputs checked, what the run would bill and how long it
would take at best; no request is made); a finished run's summary as the terminal shows it
(``print_summary``: rows by type, models, cost, the folder's runs, what to do about the rows
not done); the arguments and ``main``, which picks the handler and turns the errors it
raises into exit statuses (``doctor`` is ``runner.doctor``'s).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runner import logs
from runner.backends.raycluster import ray_address
from runner.cost import Estimate, PriceBook, check_budget, estimate_for, price_book
from runner.errors import RunnerError, SettingsError, TaskFileError
from runner.images import image_size
from runner.outcomes import STATUS_LABEL, RowResult, RunSummary
from runner.policy import REPAY_FLAG
from runner.progress import ProgressObserver, duration, limit_text, not_done
from runner.scheduling.lanes import cap_note
from runner.tasks import TaskList, load_tasks

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED_ROWS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_TERMINATED",
    "SUBCOMMANDS",
    "build_parser",
    "main",
    "print_summary",
    "run_line",
]


EXIT_OK, EXIT_FAILED_ROWS, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143


def _tasks_path(args: argparse.Namespace, console: Console) -> tuple[Path, Path | None]:
    """The task list (and images) a command works on: given, the sample, or for the commands
    that work on a finished run (report, rejudge), the one its journal remembers."""
    if args.command in ("report", "rejudge") and args.tasks is None:
        run = _last_run(args.out)
        if run is None or not run.get("tasks"):
            raise TaskFileError(f"{args.out} holds no run that names its task list: give --tasks")
        images = args.images or (Path(run["images"]) if run.get("images") else None)
        return Path(run["tasks"]), images
    if getattr(args, "sample", False):
        from runner.sample import write_sample

        folder = args.out / "sample"
        path = write_sample(folder)
        console.print(f"sample task list: {path}", highlight=False)
        return path, folder / "imgs"
    if args.tasks is None:
        raise TaskFileError("give --tasks FILE (or --sample for the bundled demo)")
    return args.tasks, args.images


def _last_run(out: Path) -> dict[str, Any] | None:
    from runner.store.journal import JOURNAL_NAME, replay

    return replay(out / JOURNAL_NAME).last_run


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from runner.job import check_out_dir, run_all
    from runner.settings import load_settings

    if args.concurrency is not None and args.concurrency < 1:
        raise SettingsError("--concurrency must be at least 1")
    overrides: dict[str, object] = {"repay_uncertain": True} if args.repay_uncertain else {}
    settings = load_settings(
        args.settings,
        concurrency=args.concurrency,
        budget=args.budget,
        ray=ray_address(args.ray),
        learned=True if args.learned else None,
        **overrides,
    )
    tasks, images = _tasks_path(args, console)
    if args.dry_run:
        if settings.learned:  # the candidates the run would make, from the folder's verdicts
            from runner.backends.judge.wins import learn
            from runner.store.journal import JOURNAL_NAME, replay

            settings, notes = learn(settings, replay(args.out / JOURNAL_NAME))
            for line in notes:
                console.print(line, highlight=False)
        return EXIT_OK if dry_run(console, settings, tasks, images) else EXIT_FAILED_ROWS
    check_out_dir(args.out)  # before run.log is opened in it
    key = settings.key()
    logs.configure(
        args.out / "run.log",
        secrets=[key] if key else [],
        console=sys.stderr,
        console_level=logging.INFO if args.verbose else logging.WARNING,
    )

    def notice(level: str, line: str) -> None:
        style = "bold yellow" if "EMULATOR" in line else ("red" if line.startswith("row ") else "")
        console.print(line, style=style, highlight=False, markup=False)

    observer = ProgressObserver(console, notice, quiet=args.quiet)
    try:
        summary = asyncio.run(
            run_all(
                tasks,
                images=images,
                out=args.out,
                settings=settings,
                observer=observer,
                configure_logging=False,
            )
        )
    finally:
        observer.close()
    print_summary(console, summary, args.out)
    console.print(f"outputs in {args.out}/imgs; log {args.out}/run.log", highlight=False)
    return summary.exit_code


def cmd_submit(args: argparse.Namespace, console: Console) -> int:
    from runner.outputs.submit import pack

    report = pack(
        args.out,
        args.team,
        tasks=args.tasks,
        images=args.images,
        strict=args.strict,
        allow_emulated=args.allow_emulated,
    )
    for index, what in report.fallbacks.items():
        console.print(f"row {index}: {what}", highlight=False)
    console.print(
        f"wrote {report.zip_path}: {report.rows} rows of {report.tasks}, {report.generated} "
        f"generated, {len(report.fallbacks)} fallback(s)"
        + (f", {len(report.emulated)} emulator placeholder(s)" if report.emulated else ""),
        highlight=False,
    )
    return EXIT_OK


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from runner.outputs.report import write_report

    tasks, images = _tasks_path(args, console)
    logs.configure(args.out / "run.log", console=None)  # the command prints one line: its own
    path = write_report(args.out, tasks, images)
    console.print(f"wrote {path}", highlight=False)
    return EXIT_OK


def cmd_rejudge(args: argparse.Namespace, console: Console) -> int:
    from runner.backends.judge.usage import describe
    from runner.job import rejudge_all
    from runner.settings import load_settings

    settings = load_settings(args.settings)
    tasks, images = _tasks_path(args, console)
    shown = [0.0]

    def progress(so_far: Any) -> None:  # a line every few seconds, and the last row's
        if time.monotonic() - shown[0] >= 5 or so_far.rows == so_far.total:
            shown[0] = time.monotonic()
            console.print(
                f"rejudge: {so_far.rows}/{so_far.total} rows, "
                + describe(so_far.usage, so_far.currency),
                highlight=False,
            )

    result = asyncio.run(
        rejudge_all(tasks, images=images, out=args.out, settings=settings, on_row=progress)
    )
    console.print(
        f"rejudged {result.rows} rows: {result.scored} file(s) scored, {result.unscored} "
        f"unscored, {result.changed} choice(s) changed; "
        + describe(result.usage, result.currency)
        + ("; the judge budget ran out" if result.budget_exhausted else ""),
        highlight=False,
    )
    return EXIT_OK


def dry_run(console: Console, settings: Any, tasks: Path, images: Path | None) -> bool:
    """Print the dry run's report; True when every row is usable. Raises what the run would
    (the budget refused, a bad task file)."""
    tasklist = load_tasks(tasks, images)
    unreadable = _unreadable(tasklist)
    emulated = settings.key() is None
    unusable = {index for index, _, _ in unreadable}
    counts: dict[str, int] = {}
    for t in tasklist.tasks:
        if t.index not in unusable:  # a row that would fail before any request bills nothing
            counts[t.task_type] = counts.get(t.task_type, 0) + 1
    est = estimate_for(settings, counts, emulated=emulated)
    book = price_book(settings)
    console.print(
        f"dry run: {len(tasklist.order)} rows from {tasklist.path} "
        f"({len(tasklist.bad) + len(unreadable)} unusable), images from {tasklist.images_dir}; "
        "no request made",
        highlight=False,
    )
    for b in tasklist.bad:
        console.print(f"  row {b.index} ({b.task_type}, bad input): {b.reason}", highlight=False)
    for index, task_type, why in unreadable:
        console.print(f"  row {index} ({task_type}, bad input): {why}", highlight=False)
    console.print(_estimate_table(est, book))
    if est.local_rows:
        console.print(f"face swap (local): {est.local_rows} rows, nothing billed", highlight=False)
    _print_totals(console, settings, est, book, emulated)
    _print_judge(console, settings, counts, book)
    check_budget(settings, counts)  # the run would refuse: say so now
    return not tasklist.bad and not unreadable


def _unreadable(tasklist: TaskList) -> list[tuple[str, str, str]]:
    """(row, task type, why) for each row naming a source image that cannot be read, in the
    words the run would use (the face swap's or the API rows'); each file opened once."""
    unreadable: list[tuple[str, str, str]] = []
    seen: dict[Path, bool] = {}
    for t in tasklist.tasks:
        for column, path in (("ori_image", t.ori_image), ("target_image", t.target_image)):
            if path is None:
                continue
            if path not in seen:
                seen[path] = image_size(path) is not None
            if seen[path]:
                continue
            why = f"{path.name}: not an image file"
            if t.task_type == "deepfake":
                why = f"{column} is not a readable image: {why}"
            else:
                why = f"{column}: {why}"
            unreadable.append((t.index, str(t.task_type), why))
            break  # the run stops at the row's first bad source
    return unreadable


def _estimate_table(est: Estimate, book: PriceBook) -> Table:
    table = Table(title=f"Estimate ({book.region} list prices)")
    for col in ("model", "rows", "images billed", "price / image", "est. cost"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for p in est.models:
        price = book.price(p.model)
        table.add_row(
            p.model,
            f"{p.rows:.0f}",
            f"{p.images:.0f}",
            "–" if price is None else f"{price:g}",
            book.money(p.cost),
        )
    return table


def _print_totals(
    console: Console, settings: Any, est: Estimate, book: PriceBook, emulated: bool
) -> None:
    """Images and cost in all, the quota-bound duration, and whether the budget would stop it."""
    total, _complete = est.cost
    images = sum(p.images for p in est.models)
    missing = sorted(p.model for p in est.models if p.cost is None)
    priced = len(missing) < len(est.models)
    line = f"total: {images:.0f} images billed, estimated cost " + (
        book.money(total) if priced else "unknown"
    )
    if missing:
        line += (
            f" ({'+ ' if priced else ''}{', '.join(missing)}: no price in [prices.{book.region}])"
        )
    console.print(line, highlight=False)
    latency = settings.expected_task_s * (settings.emulator.time_scale if emulated else 1.0)
    console.print(
        f"expected duration: at least {duration(est.duration_s)} for the API rows (quota bound: "
        f"the quotas in settings, {latency:g} s a task"
        + (", on the emulator" if emulated else "")
        + ")",
        highlight=False,
    )
    if settings.budget is not None and not missing and total > settings.budget:
        console.print(
            f"the budget {book.money(settings.budget)} would stop the run before every row is done",
            highlight=False,
        )


def _print_judge(console: Console, settings: Any, counts: dict[str, int], book: PriceBook) -> None:
    """The judge's calls, tokens, cost and pace for these rows (runner.backends.judge)."""
    from runner.backends.judge.usage import estimate

    j = estimate(settings, counts)
    if not j.enabled:
        console.print("judge: off (one candidate a row, [judge] enabled = false)", highlight=False)
        return
    cost = (
        f"est. cost at most {book.money(j.cost)}"
        if j.cost is not None
        else "price unknown (set [judge] input_price and output_price)"
    )
    console.print(
        f"judge {j.model}: about {j.calls} calls (SC and PQ per candidate, PQ per face swap), "
        f"about {j.input_size:,} input tokens and at most {j.output_size:,} answer "
        f"tokens, {cost}; at least {duration(j.minutes * 60)} at its pace",
        highlight=False,
    )
    console.print(f"judge texts and parser: {j.reference}", highlight=False)


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
    short = [r.index for r in summary.rows if r.held_back]
    if short:
        named = ", ".join(short[:15]) + (f" and {len(short) - 15} more" if len(short) > 15 else "")
        console.print(
            f"{len(short)} row(s) made fewer candidates than asked: budget reached (rows "
            f"{named}); they are kept as done with what they have: a rerun does not make the "
            "rest.",
            style="yellow",
            highlight=False,
        )
    if not failed:
        if not summary.stopped_reason and not summary.interrupted and not short:
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
    held, retry, maybe_paid, bad = not_done(summary)
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
    if maybe_paid:
        console.print(
            f"{len(maybe_paid)} row(s) may already be paid (the answer was lost after the "
            "request was sent): a plain run only looks for them again, at no cost; "
            f"{REPAY_FLAG} pays for them again.",
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


SUBCOMMANDS = ("run", "submit", "doctor", "report", "rejudge")


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a run's own handler (start-up, submit, report): like Ctrl-C."""


# --------------------------------------------------------------------------- arguments


def _common(p: argparse.ArgumentParser, *, sample: bool = True) -> None:
    p.add_argument(
        "--tasks", type=Path, help="task CSV (index,task_type,prompt,ori_image,target_image)"
    )
    p.add_argument(
        "--images", type=Path, help="input images folder (default: the task file's folder/imgs)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("outputs"), help="output folder (default: outputs)"
    )
    p.add_argument("--settings", type=Path, help="a settings TOML file over ./settings.toml")
    if sample:
        p.add_argument("--sample", action="store_true", help="use the bundled sample task list")


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the budget must be a positive amount, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runner",
        description="Generate, edit or face-swap every image of a task list "
        "within DashScope's quotas.",
    )
    sub = parser.add_subparsers(dest="command")
    run_p = sub.add_parser("run", help="run the task list (the default command)")
    _common(run_p)
    run_p.add_argument(
        "--concurrency",
        type=int,
        help="most API requests in flight at once (default: what the models' quotas need)",
    )
    run_p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the task file and inputs, print images billed, cost and duration; no request",
    )
    run_p.add_argument(
        "--budget",
        type=_amount,
        metavar="AMOUNT",
        help="stop submitting once the estimated spend (list prices) would pass AMOUNT",
    )
    run_p.add_argument(
        "--repay-uncertain",
        action="store_true",
        help="pay again for requests whose answer was lost (they may have been billed once "
        "already); without it such rows fail and are listed",
    )
    run_p.add_argument(
        "--learned",
        action="store_true",
        help="make each type's prompt variants as the judge ranked them in this folder's "
        "earlier runs: the winners first, only the winner where it wins clearly",
    )
    run_p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the local models' and the face swap's workers as Ray actors on the cluster "
        "at ADDRESS (without one: RAY_ADDRESS, else a cluster running here; 'local' starts one)",
    )
    run_p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    run_p.add_argument("-v", "--verbose", action="store_true", help="log info lines on the console")
    sub_p = sub.add_parser("submit", help="pack the competition zip")
    _common(sub_p, sample=False)
    sub_p.add_argument("--team", required=True, help="team name for <team>_图片生成_result.zip")
    sub_p.add_argument("--strict", action="store_true", help="refuse when a row has no result")
    sub_p.add_argument(
        "--allow-emulated", action="store_true", help="pack emulator placeholders too"
    )
    rep_p = sub.add_parser("report", help="write report.html for an output folder")
    _common(rep_p, sample=False)
    rej_p = sub.add_parser("rejudge", help="score outputs and candidates again, re-pick the best")
    _common(rej_p, sample=False)
    from runner.doctor import add_arguments as doctor_arguments

    doctor_arguments(sub.add_parser("doctor", help="check key, service, settings, models, disk"))
    return parser


# --------------------------------------------------------------------------- main


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["run", *argv]
    # no markup: reasons and file names are shown as they are ("[x]" is not a style here)
    console = Console(stderr=False, highlight=False, soft_wrap=True, markup=False)
    err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_BAD_INPUT if exc.code not in (0, None) else EXIT_OK
    handlers: dict[str, Any] = {
        "run": cmd_run,
        "submit": cmd_submit,
        "report": cmd_report,
        "rejudge": cmd_rejudge,
    }
    handlers.update(_extra_commands())
    if args.command not in handlers:
        err.print(f"error: '{args.command}' is not available in this build")
        return EXIT_BAD_INPUT
    # A run installs its own handler (stop, then write the closing files); before and after
    # it, and in the other commands, SIGTERM is an interrupt like Ctrl-C, not a silent kill.
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(handlers[args.command](args, console))
    except (TaskFileError, SettingsError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        err.print("interrupted: everything done so far is kept; run the same command to go on")
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except RunnerError as exc:
        from runner.outputs.submit import SubmitRefused

        err.print(f"error: {exc}", highlight=False, markup=False)
        return EXIT_BAD_INPUT if isinstance(exc, SubmitRefused) else EXIT_STOPPED
    finally:
        signal.signal(signal.SIGTERM, previous)
        logs.close()


def _extra_commands() -> dict[str, Any]:
    """Commands that live in their own modules."""
    from runner.doctor import command as doctor

    return {"doctor": doctor}
