"""The live progress display (rich: a terminal, or a Jupyter cell) and the run's notices.

The CLI and the Python API share it: the CLI prints notices on its console; the API sends
them through logging (the ``runner.notice`` logger), which ``runner.logs`` writes to stderr
as plain lines: a script's terminal, or the notebook's cell. Rows that are not done, the
emulator banner, a stop and the closing line are notices, shown with or without the display;
the bar, per-model slots and the ETA are the display (``quiet``: none). In Jupyter the live
display needs ipywidgets (the ``notebook`` extra); without it a progress line every few
seconds stands in.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from runner.cost import LOCAL_TYPES, estimate_for
from runner.logs import NOTICES
from runner.outcomes import STATUS_LABEL, RowResult, RunSummary
from runner.policy import REPAY_FLAG
from runner.scheduling.lanes import cap_note

if TYPE_CHECKING:
    from runner.scheduling.scheduler import Scheduler
    from runner.tasks import TaskList

Notice = Callable[[str, str], None]  # (level "info" | "warning", one line)

_MIN_ROWS_FOR_RATE = 5  # below this the observed rate says little; use the quota bound


def limit_text(limit: int | None) -> str:
    """A model's in-flight limit as shown: "none" for a model without one (sync calls)."""
    return "none" if limit is None else str(limit)


def duration(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


class ProgressObserver:
    """Progress bar with per-model slots and an ETA when it can redraw (a terminal, Jupyter);
    a line every few seconds elsewhere; ``notice`` gets every line a person must read."""

    def __init__(self, console: Console, notice: Notice, *, quiet: bool = False) -> None:
        self.console = console
        self.notice = notice
        self.quiet = quiet
        self.counts: Counter[str] = Counter()
        self.left_by_type: Counter[str] = Counter()
        self.total = 0
        self.scheduler: Scheduler | None = None
        self.live: Live | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[spend]}"),
            console=console,
        )
        self.bar = self.progress.add_task("rows", total=1, status="", eta="", spend="")
        self._last_line = 0.0
        self._started = time.monotonic()
        self._first_new: float | None = None  # when the first row was done by this run
        self._new_done = 0
        self._stopping = False

    # --- the observer protocol ----------------------------------------------------
    def started(self, tasks: TaskList, scheduler: Scheduler, banner: list[str]) -> None:
        self.scheduler = scheduler
        self.total = len(tasks.order)
        self.left_by_type = Counter(t.task_type for t in tasks.tasks)
        self._started = time.monotonic()
        # the clock starts with the rows, not with the start-up (emulator, face-swap workers)
        self.progress.reset(self.bar, total=self.total, status="", eta=self._eta_text())
        for line in banner:  # what the run is about to do: shown whatever the log level
            self.notice("warning", line)
        if not self.quiet and self._can_redraw():
            self.live = Live(
                get_renderable=self._renderable,
                console=self.console,
                refresh_per_second=4,
                transient=not self.console.is_jupyter,
            )
            self.live.start()

    def row(self, result: RowResult) -> None:
        self.counts[result.status] += 1
        if self.left_by_type[result.task_type] > 0:
            self.left_by_type[result.task_type] -= 1
        if result.status == "done":
            self._new_done += 1
            if self._first_new is None:
                self._first_new = time.monotonic()
        self.progress.update(
            self.bar,
            advance=1,
            status=self._status(),
            eta=self._eta_text(),
            spend=self._spend_text(),
        )
        if result.status in ("failed", "bad"):
            self.notice(
                "warning",
                f"row {result.index} ({result.task_type}, {STATUS_LABEL[result.status]}): "
                f"{result.reason}",
            )
        if self.live is None and not self.quiet:
            now = time.monotonic()
            done = sum(self.counts.values())
            if now - self._last_line > 5 or done == self.total:
                self._last_line = now
                extra = [t for t in (self._eta_text(), self._spend_text()) if t]
                self.notice(
                    "info", f"progress: {done}/{self.total} rows" + "".join(f", {t}" for t in extra)
                )

    def finished(self, summary: RunSummary) -> None:
        self.close()

    def stopping(self, line: str) -> None:
        """A stop under way (Ctrl-C, SIGTERM): what it waits for, instead of an ETA."""
        self._stopping = True
        self.progress.update(self.bar, eta=self._eta_text())
        self.notice("warning", line)

    def warn(self, line: str) -> None:
        """A fault that ends no row but a person must read (a closing file not written)."""
        self.notice("warning", line)

    def _can_redraw(self) -> bool:
        """A terminal, or Jupyter with ipywidgets (rich's live display needs them there)."""
        if self.console.is_terminal:
            return True
        return self.console.is_jupyter and importlib.util.find_spec("ipywidgets") is not None

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # --- what it shows --------------------------------------------------------------
    def _status(self) -> str:
        c = self.counts
        parts = [f"[green]{c['done'] + c['skipped']} ok[/]"]
        if c["failed"]:
            parts.append(f"[red]{c['failed']} failed[/]")
        if c["bad"]:
            parts.append(f"[red]{c['bad']} bad input[/]")
        if c["stopped"]:
            parts.append(f"[yellow]{c['stopped']} stopped[/]")
        return " ".join(parts)

    def eta_s(self) -> float | None:
        """Seconds left: the observed rate once a few rows are done, never under the quota
        bound of the API rows left (no schedule can beat it)."""
        left_api = {t: n for t, n in self.left_by_type.items() if n and t not in LOCAL_TYPES}
        left = sum(self.left_by_type.values())
        if not left:
            return 0.0
        bound = self._bound_s(left_api) if left_api else 0.0
        observed = None
        if self._first_new is not None and self._new_done >= _MIN_ROWS_FOR_RATE:
            spent = time.monotonic() - self._started
            if spent > 0:
                observed = left / (self._new_done / spent)
        if observed is None:
            return bound if left_api else None
        return max(observed, bound)

    def _bound_s(self, left_api: dict[str, int]) -> float:
        sched = self.scheduler
        if sched is None:
            return 0.0
        latency: dict[str, float] = {}
        limits: dict[str, int] = {}
        for v in sched.model_views():
            if v.get("p50_s"):
                latency[str(v["model"])] = float(v["p50_s"])
            if v.get("limit"):
                limits[str(v["model"])] = int(v["limit"])
        est = estimate_for(
            sched.settings, left_api, emulated=sched.emulated, latency_s=latency, in_flight=limits
        )
        return est.duration_s

    def _spend_text(self) -> str:
        """The folder's estimated spend so far (the run's ledger at list prices), against
        the budget when there is one; "" when nothing is priced or spent."""
        budget = getattr(self.scheduler, "budget", None)
        ledger = getattr(self.scheduler, "ledger", None)
        if budget is None or ledger is None:
            return ""
        try:
            spent = budget.cost(ledger.spent())
        except Exception:  # an estimate must never break the run it describes
            return ""
        if budget.limit is not None:
            return f"spent {budget.prices.money(spent)} of {budget.prices.money(budget.limit)}"
        return f"spent {budget.prices.money(spent)}" if spent else ""

    def _eta_text(self) -> str:
        if self._stopping:
            return "stopping"
        try:
            eta = self.eta_s()
        except Exception:  # an estimate must never break the run it describes
            return ""
        return "" if eta is None else f"ETA {duration(eta)}"

    def _models_table(self) -> Table:
        table = Table(box=None, padding=(0, 1), show_header=True, header_style="dim")
        for col in ("model", "slots", "done", "429", "p50 s", "p90 s"):
            table.add_column(col)
        if self.scheduler is not None:
            for v in self.scheduler.model_views():
                if not (v["submits"] or v["in_flight"]):
                    continue
                learned = "~" if v["learned"] else ""
                table.add_row(
                    str(v["model"]),
                    f"{v['in_flight']}/{learned}{limit_text(v['limit'])}",
                    str(v["completed"]),
                    str(v["throttled"]),
                    str(v["p50_s"] or "-"),
                    str(v["p90_s"] or "-"),
                )
            judge = getattr(getattr(self.scheduler, "finisher", None), "judge", None)
            if judge is not None and judge.calls:  # its calls in "done", its 429s, its cost
                cost = judge.usage.cost
                label = f"judge {judge.model}" + ("" if cost is None else f" (est. {cost:.3f})")
                table.add_row(label, "-", str(judge.calls), str(judge.throttled), "-", "-")
            table.caption = cap_note(self.scheduler.model_views())
        return table

    def _renderable(self) -> Any:
        # called at each redraw: the ETA and the spend move between rows too
        self.progress.update(self.bar, eta=self._eta_text(), spend=self._spend_text())
        return Group(self.progress.get_renderable(), self._models_table())


def log_notice(level: str, line: str) -> None:
    """The Python API's notices: through logging, which a notebook shows under the cell."""
    NOTICES.log(logging.WARNING if level == "warning" else logging.INFO, line)


class ApiObserver(ProgressObserver):
    """The Python API's observer: the CLI prints its own closing summary; a script or a
    notebook gets one closing notice instead."""

    def __init__(self, console: Console, notice: Notice, *, quiet: bool = False,
                 out_dir: Path | None = None) -> None:
        super().__init__(console, notice, quiet=quiet)
        self.out_dir = out_dir

    def finished(self, summary: RunSummary) -> None:
        self.close()
        not_done = len(summary.failed)
        line = f"{summary!r}"
        if not_done:
            failed_csv = self.out_dir / "failed.csv" if self.out_dir else "failed.csv"
            line += f"; {not_done} row(s) not done (listed in {failed_csv})"
        if summary.left_early:
            line += "; left at once: report.html not updated"
        line += "; " + next_step(summary)
        self.notice("warning" if not_done or summary.stopped_reason else "info", line)


class NotDone(NamedTuple):
    """The rows not done, by what would do them: a larger budget (``held``), running again
    (``retry``), running again with ``--repay-uncertain`` (``maybe_paid``: the answer was
    lost, the service may have billed them), or fixing the input (``bad``)."""

    held: list[RowResult]
    retry: list[RowResult]
    maybe_paid: list[RowResult]
    bad: list[RowResult]


def not_done(summary: RunSummary) -> NotDone:
    """The rows not done, grouped by what would do them (the closing words say each)."""
    failed = summary.failed
    held = [r for r in failed if summary.budget is not None and "budget" in (r.reason or "")]
    again = [r for r in failed if r.status in ("failed", "stopped") and r not in held]
    maybe_paid = [r for r in again if REPAY_FLAG in (r.reason or "")]
    retry = [r for r in again if r not in maybe_paid]
    return NotDone(held, retry, maybe_paid, [r for r in failed if r.status == "bad"])


def next_step(summary: RunSummary) -> str:
    """What to do now, in the words that fit how the run ended."""
    if summary.stopped_by_user:
        return "everything done so far is kept; run the same call again to go on"
    if summary.stopped_reason:
        return "everything done so far is kept; fix the cause and run the same call again"
    held, retry, maybe_paid, _ = not_done(summary)
    if maybe_paid and not retry:
        return (
            f"{len(maybe_paid)} row(s) may already be paid (answer lost): running again only "
            f"looks for them; {REPAY_FLAG} pays for them again"
        )
    if retry:
        return f"run the same call again to retry the {len(retry)} failed row(s)"
    if held:
        return f"{len(held)} row(s) wait for a larger budget"
    if summary.failed:
        return "fix the rows with bad input (task file or images), then run again"
    return "every row is done"


def api_observer(*, progress: bool = True, out_dir: Path | None = None) -> ProgressObserver:
    """The observer ``run_all`` uses when the caller gives none (a script, a notebook):
    notices always, the live display unless ``progress`` is False."""
    return ApiObserver(Console(stderr=True), log_notice, quiet=not progress, out_dir=out_dir)
