"""The command line: the only part of runner that prints to the terminal.

    python -m runner --tasks T.csv [--images DIR] [--out DIR] [--concurrency 32]
                     [--dry-run] [--budget AMOUNT] [--repay-uncertain]
    python -m runner submit --out DIR --team NAME [--tasks T.csv] [--strict] [--allow-emulated]
    python -m runner doctor | report | rejudge   (see --help)

Exit status (run): 0 every row done; 1 some rows not done; 2 bad input (task file, settings,
arguments); 3 the run was stopped (bad key, exhausted account, disk full, service
unreachable, folder in use); 130 Ctrl-C; 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from runner import logs
from runner.commands import (
    EXIT_BAD_INPUT,
    EXIT_FAILED_ROWS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_TERMINATED,
    cmd_rejudge,
    cmd_report,
    cmd_run,
    cmd_submit,
    ray_address,
)
from runner.errors import RunnerError, SettingsError, TaskFileError
from runner.summary_view import print_summary, run_line

# The commands and the summary's printing live in runner.commands and runner.summary_view;
# these names stay importable from here, where callers have always found them.
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
    "ray_address",
    "run_line",
]
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
