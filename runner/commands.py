"""The commands behind ``python -m runner``: run (and its dry run), submit, report, rejudge.

Each is ``handler(args, console) -> exit status``; ``runner.cli`` parses the arguments, picks
the handler and turns the errors it raises into exit statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from runner import logs
from runner.errors import SettingsError, TaskFileError
from runner.progress import ProgressObserver
from runner.summary_view import print_summary

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


def ray_address(given: str | None) -> str | None:
    """``--ray``'s cluster: the address given, else RAY_ADDRESS (Ray's own variable), else
    "auto" (a cluster running on this machine); None without ``--ray``."""
    if given is None:
        return None
    return given.strip() or os.environ.get("RAY_ADDRESS", "").strip() or "auto"


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
        from runner.dry_run import dry_run

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
