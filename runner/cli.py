"""The command line: the only part of runner that talks to the terminal.

    python -m runner --tasks T.csv [--images DIR] [--out DIR] [--concurrency 32]
    python -m runner submit --tasks T.csv --out DIR --team NAME [--strict] [--allow-emulated]
    python -m runner doctor | report | rejudge   (see --help)

Exit status: 0 every row done; 1 some rows failed; 2 bad input (task file, settings,
arguments); 3 the run was stopped (bad key, exhausted account, disk full); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import logs
from .errors import RunnerError, SettingsError, TaskFileError
from .scheduler import RowResult, RunSummary, Scheduler
from .tasks import TaskList

EXIT_OK, EXIT_FAILED_ROWS, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SUBCOMMANDS = ("run", "submit", "doctor", "report", "rejudge")


class ConsoleObserver:
    """Progress bar with per-model slots on a terminal; a line every few seconds elsewhere."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.scheduler: Scheduler | None = None
        self.live: Live | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.bar = self.progress.add_task("rows", total=1, status="")
        self._last_line = 0.0

    def started(self, tasks: TaskList, scheduler: Scheduler, banner: list[str]) -> None:
        self.scheduler = scheduler
        self.total = len(tasks.order)
        self.progress.update(self.bar, total=self.total)
        for line in banner:
            style = "bold yellow" if "EMULATOR" in line else ""
            self.console.print(line, style=style, highlight=False)
        if self.console.is_terminal and not self.quiet:
            self.live = Live(
                get_renderable=self._renderable,
                console=self.console,
                refresh_per_second=4,
                transient=True,
            )
            self.live.start()

    def _status(self) -> str:
        c = self.counts
        ok = c["done"] + c["skipped"]
        bad = c["failed"] + c["bad"] + c["stopped"]
        return f"[green]{ok} ok[/] [red]{bad} failed[/]" if bad else f"[green]{ok} ok[/]"

    def _models_table(self) -> Table:
        table = Table(box=None, padding=(0, 1), show_header=True, header_style="dim")
        for col in ("model", "slots", "done", "429", "p50 s", "p90 s"):
            table.add_column(col)
        if self.scheduler is not None:
            for v in self.scheduler.pool.views():
                if not (v["submits"] or v["in_flight"]):
                    continue
                learned = "~" if v["learned"] else ""
                table.add_row(
                    str(v["model"]),
                    f"{v['in_flight']}/{learned}{v['limit']}",
                    str(v["completed"]),
                    str(v["throttled"]),
                    str(v["p50_s"] or "-"),
                    str(v["p90_s"] or "-"),
                )
        return table

    def _renderable(self) -> Group:
        return Group(self.progress.get_renderable(), self._models_table())

    def row(self, result: RowResult) -> None:
        self.counts[result.status] += 1
        self.progress.update(self.bar, advance=1, status=self._status())
        if result.status in ("failed", "bad"):
            self.console.print(
                f"[red]row {result.index}[/] ({result.task_type}): {result.reason}", highlight=False
            )
        if self.live is None and not self.quiet:
            now = time.monotonic()
            done = sum(self.counts.values())
            if now - self._last_line > 5 or done == self.total:
                self._last_line = now
                self.console.print(f"progress: {done}/{self.total} rows", highlight=False)

    def finished(self, summary: RunSummary) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        print_summary(self.console, summary)


def print_summary(console: Console, summary: RunSummary, out_dir: Path | None = None) -> None:
    table = Table(title="Run summary", show_lines=False)
    for col in ("type", "done", "already done", "failed", "bad input", "stopped", "total"):
        table.add_column(col, justify="right" if col != "type" else "left")
    by_type = summary.by_type()
    for ttype in (
        "t2i",
        "tie",
        "vttie",
        "deepfake",
        *sorted(set(by_type) - {"t2i", "tie", "vttie", "deepfake"}),
    ):
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
        mt = Table(title="Models", show_lines=False)
        for col in ("model", "limit", "submits", "429", "done", "p50 s", "p90 s"):
            mt.add_column(col)
        for m in used:
            limit = f"{m['limit']} (learned)" if m.get("learned") else str(m["limit"])
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
        f"time {summary.elapsed_s:.1f} s, submits {summary.submits}, retries {summary.retries}, "
        f"429s {summary.throttled}, polls {summary.polls}, backend {summary.backend}",
        highlight=False,
    )
    if summary.emulated:
        console.print(
            "These images are the EMULATOR's placeholders (no DASHSCOPE_API_KEY was set); "
            "set the key to generate real ones.",
            style="bold yellow",
        )
    failed = summary.failed
    if summary.stopped_reason:
        console.print(
            f"[bold red]Run stopped:[/] {summary.stopped_reason}. Everything done so far is kept; "
            "fix the cause and run the same command again to go on.",
            highlight=False,
        )
    if failed:
        where = f" (all in {out_dir / 'failed.csv'})" if out_dir else ""
        console.print(f"[red]{len(failed)} row(s) not done{where}:[/]", highlight=False)
        for r in failed[:15]:
            console.print(
                f"  row {r.index} ({r.task_type}, {r.status}): {r.reason}", highlight=False
            )
        if len(failed) > 15:
            console.print(f"  ... and {len(failed) - 15} more", highlight=False)
        console.print(
            "Run the same command again to retry them (done rows are kept); "
            "`make submit` fills any gap with a fallback and names it."
        )
    elif not summary.stopped_reason:
        console.print("[green]Every row is done.[/]")


def _common(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--sample", action="store_true", help="use the bundled sample task list")


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
        "--concurrency", type=int, help="most API tasks in flight at once (default 32)"
    )
    run_p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    run_p.add_argument("-v", "--verbose", action="store_true", help="log info lines on the console")
    sub_p = sub.add_parser("submit", help="pack the competition zip")
    _common(sub_p)
    sub_p.add_argument("--team", required=True, help="team name for <team>_图片生成_result.zip")
    sub_p.add_argument("--strict", action="store_true", help="refuse when a row has no result")
    sub_p.add_argument(
        "--allow-emulated", action="store_true", help="pack emulator placeholders too"
    )
    rep_p = sub.add_parser("report", help="write report.html for an output folder")
    _common(rep_p)
    rej_p = sub.add_parser("rejudge", help="score outputs and candidates again, re-pick the best")
    _common(rej_p)
    from .doctor import add_arguments as doctor_arguments

    doctor_arguments(sub.add_parser("doctor", help="check key, service, settings, models, disk"))
    return parser


def _tasks_path(args: argparse.Namespace, console: Console) -> tuple[Path, Path | None]:
    if getattr(args, "command", None) in ("report", "rejudge") and args.tasks is None:
        from .journal import last_tasks_path

        found = last_tasks_path(args.out)
        if found is not None:
            return found, args.images
    if args.sample:
        from .sample import write_sample

        folder = args.out / "sample"
        path = write_sample(folder)
        console.print(f"sample task list: {path}", highlight=False)
        return path, folder / "imgs"
    if args.tasks is None:
        raise TaskFileError("give --tasks FILE (or --sample for the bundled demo)")
    return args.tasks, args.images


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from .run import run_all
    from .settings import load_settings

    if args.concurrency is not None and args.concurrency < 1:
        raise SettingsError("--concurrency must be at least 1")
    settings = load_settings(args.settings, concurrency=args.concurrency)
    tasks, images = _tasks_path(args, console)
    key = settings.key()
    logs.configure(
        args.out / "run.log",
        secrets=[key] if key else [],
        console=sys.stderr,
        console_level=logging.INFO if args.verbose else logging.WARNING,
    )
    observer = ConsoleObserver(console, quiet=args.quiet)
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
    console.print(f"outputs in {args.out}/imgs; log {args.out}/run.log", highlight=False)
    return summary.exit_code


def _cmd_submit(args: argparse.Namespace, console: Console) -> int:
    from .submit import pack

    tasks, images = _tasks_path(args, console)
    report = pack(
        tasks,
        args.out,
        args.team,
        images=images,
        strict=args.strict,
        allow_emulated=args.allow_emulated,
    )
    for index, what in report.fallbacks.items():
        console.print(f"row {index}: {what}", highlight=False)
    console.print(
        f"wrote {report.zip_path}: {report.rows} rows, {report.generated} generated, "
        f"{len(report.fallbacks)} fallback(s)"
        + (f", {len(report.emulated)} emulator placeholder(s)" if report.emulated else ""),
        highlight=False,
    )
    return EXIT_OK


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from .report import write_report

    tasks, images = _tasks_path(args, console)
    path = write_report(args.out, tasks, images)
    console.print(f"wrote {path}", highlight=False)
    return EXIT_OK


def _cmd_rejudge(args: argparse.Namespace, console: Console) -> int:
    from .run import rejudge_all
    from .settings import load_settings

    settings = load_settings(args.settings)
    tasks, images = _tasks_path(args, console)
    result = asyncio.run(rejudge_all(tasks, images=images, out=args.out, settings=settings))
    console.print(str(result), highlight=False)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["run", *argv]
    console = Console(stderr=False, highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_BAD_INPUT if exc.code not in (0, None) else EXIT_OK
    handlers: dict[str, Any] = {
        "run": _cmd_run,
        "submit": _cmd_submit,
        "report": _cmd_report,
        "rejudge": _cmd_rejudge,
    }
    extra = _extra_commands()
    handlers.update(extra)
    if args.command not in handlers:
        err.print(f"error: '{args.command}' is not available in this build")
        return EXIT_BAD_INPUT
    try:
        return int(handlers[args.command](args, console))
    except (TaskFileError, SettingsError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.print("interrupted: everything done so far is kept; run the same command to go on")
        return EXIT_INTERRUPTED
    except RunnerError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        return EXIT_STOPPED
    finally:
        logs.close()


def _extra_commands() -> dict[str, Any]:
    """Commands that live in their own modules."""
    from .doctor import command as doctor

    return {"doctor": doctor}
