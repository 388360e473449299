"""One job, start to end: ``run_all`` (a coroutine, for notebooks) and ``run`` (for scripts).

It wires the layers together: task file -> scheduler -> backends (DashScope client or the
embedded emulator, the face-swap pool) -> store + journal; then writes the run's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from runner import logs
from runner.backends.dashscope import DashScopeClient
from runner.backends.judge.usage import JudgeUsage, journal_usage
from runner.cost import Budget, billed_rows, check_budget
from runner.errors import DiskFull, SettingsError
from runner.interrupts import Interrupts, Left
from runner.outcomes import INTERRUPTED, STATUS_LABEL, runs_view
from runner.outputs.report import REPORT_NAME, SUMMARY_NAME
from runner.policy import RetryPolicy
from runner.scheduling.scheduler import RowResult, RunSummary, Scheduler
from runner.script_guard import check_script_guard
from runner.settings import Settings, load_settings
from runner.startup import (
    Opened,
    Workers,
    banner,
    client_config,
    judge_for,
    open_job,
)
from runner.store.files import write_atomic_sync
from runner.store.journal import (
    JOURNAL_NAME,
    Journal,
    JournalError,
    JournalLost,
    check_journal_file,
)
from runner.store.ledger import Ledger
from runner.store.lock import OutLock
from runner.tasks import TaskList

log = structlog.get_logger(__name__)

FAILED_NAME = "failed.csv"
LOG_NAME = "run.log"


class Observer(Protocol):
    """Progress sink (runner.progress: the CLI's display, and the API's by default). An
    observer with a ``stopping(line)`` method is told what a stop waits for; one with a
    ``warn(line)`` method hears which closing file could not be written."""

    def started(self, tasks: TaskList, scheduler: Scheduler, banner: list[str]) -> None: ...
    def row(self, result: RowResult) -> None: ...
    def finished(self, summary: RunSummary) -> None: ...


class _Rows:
    """The rows as they end, passed on to the observer; a run left at once (a second
    Ctrl-C) is summed up from them. Once the last deepfake row has ended the face-swap
    workers are released: their cores (a Ray cluster's CPUs) go to the rows left."""

    def __init__(self, observer: Observer | None, tasklist: TaskList, swapper: Any) -> None:
        self.observer = observer
        self.ended: dict[str, RowResult] = {}
        self.swaps_left = {t.index for t in tasklist.tasks if t.task_type == "deepfake"}
        self.swapper = swapper
        self.released: asyncio.Task[None] | None = None

    def row(self, result: RowResult) -> None:
        self.ended[result.index] = result
        if self.observer is not None:
            self.observer.row(result)
        if result.index in self.swaps_left:
            self.swaps_left.discard(result.index)
            if not self.swaps_left and self.swapper is not None and self.released is None:
                self.released = asyncio.get_running_loop().create_task(self.swapper.release())

    def left_summary(
        self, scheduler: Scheduler, tasklist: TaskList, elapsed_s: float
    ) -> RunSummary:
        """The summary of a run left at once: the rows that ended, the others stopped."""
        rows = [
            self.ended.get(index)
            or RowResult(
                index=index,
                task_type=tasklist.types.get(index, ""),
                status="stopped",
                reason=f"{INTERRUPTED}: left at once",
            )
            for index in tasklist.order
        ]
        return RunSummary(
            rows=rows,
            elapsed_s=elapsed_s,
            emulated=scheduler.emulated,
            backend=scheduler.backend,
            throttled=sum(lane.stats.throttled for lane in scheduler.lanes.values()),
            polls=scheduler.polls.polls,
            submits=scheduler.ledger.taken(),
            stopped_reason=INTERRUPTED,
            models=scheduler.model_views(),
            left_early=True,
        )


@contextlib.asynccontextmanager
async def _backend(settings: Settings) -> AsyncIterator[tuple[str, str, bool]]:
    """Yield (base_url, key, emulated): the real service with a key, else the emulator."""
    key = settings.key()
    if key is not None:
        yield settings.base_url, key, False
        return
    from runner.emulator import Emulator, EmulatorConfig, FaultConfig

    cfg = EmulatorConfig(
        time_scale=settings.emulator.time_scale,
        seed=settings.emulator.seed,
        faults=FaultConfig(transient=settings.emulator.faults),
        region=settings.region,  # an intl rehearsal is served intl's model names
        judge_answers=settings.emulator.judge_answers,
    )
    async with Emulator(cfg) as emu:
        yield emu.base_url, "emulator-key", True


def _local_actor_cpus(settings: Settings, tasks: TaskList) -> int:
    """The CPUs the run's local models take as Ray actors (one per device entry)."""
    from runner.devices import device_list

    types = {t.task_type for t in tasks.tasks}
    names = {
        m.removeprefix("local:")
        for t in types
        for m in settings.models.get(t, [])
        if m.startswith("local:")
    }
    return sum(len(device_list(settings.local[n].devices)) for n in names if n in settings.local)


def _faceswap(settings: Settings, tasks: TaskList) -> tuple[Any, str | None]:
    if not any(t.task_type == "deepfake" for t in tasks.tasks):
        return None, None
    try:
        from runner.backends.faceswap import FaceSwapPool
    except ImportError as exc:  # the optional stack is missing or broken
        return None, f"face swap unavailable: {exc}"
    if settings.ray:  # the workers become Ray actors; only then is ray imported
        from runner.backends.faceswap.ray_pool import RayFaceSwapPool

        return RayFaceSwapPool(
            settings.faceswap,
            settings.ray,
            jpeg_quality=settings.jpeg_quality,
            reserve_cpus=_local_actor_cpus(settings, tasks),
        ), None
    return FaceSwapPool(settings.faceswap, jpeg_quality=settings.jpeg_quality), None


async def run_all(
    tasks: str | os.PathLike[str] = "task.csv",
    *,
    images: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "outputs",
    concurrency: int | None = None,
    settings_file: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
    observer: Observer | None = None,
    configure_logging: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> RunSummary:
    """Run every row of ``tasks``; write ``out/imgs/<index>.jpg``; return the summary.

    In a notebook: ``summary = await run_all("task.csv", concurrency=32)``.
    Raises TaskFileError / SettingsError (one readable line) when nothing can start.
    Without an ``observer`` it shows a progress display (a terminal or a notebook) unless
    ``progress=False``; its notices (the banner, rows not done, a stop, the closing line) go
    through logging either way, as plain lines on stderr.
    """
    check_script_guard()  # before anything starts: a worker would re-run an unguarded script
    if observer is None:  # the notices always; the live display unless progress=False
        from runner.progress import api_observer

        observer = api_observer(progress=progress, out_dir=Path(out))
    if settings is None:
        settings = load_settings(
            Path(settings_file) if settings_file else None, concurrency=concurrency, **overrides
        )
    elif concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    out_dir = Path(out)
    check_out_dir(out_dir)
    lock = OutLock(out_dir, "run")
    lock.acquire()  # FolderBusy: another process is using this folder; nothing touched
    try:
        return await _run_locked(
            settings, Path(tasks), images, out_dir, observer, configure_logging
        )
    finally:
        lock.release()


def check_out_dir(out_dir: Path) -> None:
    """``--out`` and the run's folders in it are folders, and the closing files in it files,
    or not there yet: one line else, before anything is paid."""
    for path in (out_dir, out_dir / "imgs", out_dir / "candidates"):
        if path.exists() and not path.is_dir():
            raise SettingsError(
                f"{path} is a file, not a folder: move it away or give another --out"
            )
    try:
        check_journal_file(out_dir / JOURNAL_NAME)
    except JournalError as exc:
        raise SettingsError(str(exc)) from None
    for name in (FAILED_NAME, SUMMARY_NAME, REPORT_NAME):
        if (out_dir / name).is_dir():
            raise SettingsError(
                f"{out_dir / name} is a folder, not a file: move it away or give another --out"
            )


def _folder_identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of ``folder``: another value later means it was deleted or replaced."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _warn(observer: Observer | None, line: str) -> None:
    """A closing file not written: the observer's notice (else the console's log), and
    run.log."""
    log.info("not_written", line=line)
    warn = getattr(observer, "warn", None)
    if callable(warn):
        warn(line)
    else:
        log.error("not_written", line=line)


async def _run_locked(
    settings: Settings,
    tasks: Path,
    images: str | os.PathLike[str] | None,
    out_dir: Path,
    observer: Observer | None,
    configure_logging: bool,
) -> RunSummary:
    # Ctrl-C / SIGTERM from here on: the run stops (start-up included) and still writes its
    # closing files; a second one leaves at once with what can be written
    with Interrupts(_stop_notice(observer)) as interrupts:
        opened = await asyncio.to_thread(
            open_job, tasks, Path(images) if images is not None else None, out_dir
        )
        tasklist = opened.tasklist
        folder_id = _folder_identity(out_dir)
        key = settings.key()
        if configure_logging:
            # stderr: a script's terminal, or the notebook's cell (the notices, the warnings)
            logs.configure(out_dir / LOG_NAME, secrets=[key] if key else [], console=sys.stderr)
        api_types = {t.task_type for t in tasklist.tasks} - {"deepfake"}
        check_budget(settings, api_types)
        journal = Journal(out_dir)
        workers = Workers.for_run(settings, api_types, _faceswap(settings, tasklist))
        try:
            async with _backend(settings) as (base_url, api_key, emulated):
                summary = await _run_with(
                    settings, opened, out_dir, journal, workers, observer,
                    base_url, api_key, emulated, interrupts,
                )
        finally:
            # never waits for a running job; a run left at once does not wait at all
            await workers.close(grace_s=0.0 if interrupts.left else None)
            journal.close()
        summary.left_early = summary.left_early or interrupts.left
        if _folder_identity(out_dir) != folder_id:  # nothing to add them to: the journal went
            _warn(
                observer,
                f"the output folder {out_dir} was deleted or replaced during the run, its "
                f"journal with it: {FAILED_NAME}, {SUMMARY_NAME} and {REPORT_NAME} were not "
                "written",
            )
        else:
            # a full disk, or a closing file that cannot be written: one line each; the
            # summary on the console still says what to do
            for line in await journal_end(out_dir, summary):
                _warn(observer, line)
            if not interrupts.left:  # the page can wait for the next run, or `runner report`
                try:
                    summary.report = await interrupts.until_left(
                        _report(
                            out_dir, tasklist.path, tasklist.images_dir,
                            json.loads(summary.model_dump_json()),
                            on_error=lambda line: _warn(observer, line),
                        )
                    )
                except Left:
                    summary.left_early = True
    if observer:
        observer.finished(summary)
    return summary


def _stop_notice(observer: Observer | None) -> Callable[[str], None] | None:
    """Where a stop says what it waits for: the observer's notices, else the log."""
    stopping = getattr(observer, "stopping", None)
    return stopping if callable(stopping) else None


async def _run_with(
    settings: Settings,
    opened: Opened,
    out_dir: Path,
    journal: Journal,
    workers: Workers,
    observer: Observer | None,
    base_url: str,
    api_key: str,
    emulated: bool,
    interrupts: Interrupts,
) -> RunSummary:
    """The run itself, on a backend: journal its start, schedule every row, journal its end."""
    run_id = uuid.uuid4().hex[:12]
    # where the run's paid requests go: a rerun fetches only what the same backend took (an
    # emulator's tasks live and die with that emulator)
    backend = f"emulator:{run_id}" if emulated else base_url
    lines = banner(opened, settings, workers, base_url, emulated)
    if settings.learned:  # --learned: the candidates that won in this folder's earlier runs
        from runner.backends.judge.wins import learn

        settings, learned_lines = learn(settings, opened.state)
        lines += learned_lines
    earlier = runs_view(opened.state.runs_info)
    budget = Budget.for_settings(settings)
    # the folder's judge spend before this run (its "judged" records), of this run's kind
    judged_before = journal_usage(opened.state, settings.judge.model, emulated=emulated)
    budget.follow(lambda: opened.state.book.billed(emulated=emulated), judged_before.cost or 0.0)
    started = time.time()
    await journal.write(
        "run_start",
        run=run_id,
        emulated=emulated,
        backend=backend,
        tasks=opened.tasks_path,
        tasks_fp=opened.tasks_fp,
        images=opened.images_path,
        rows=len(opened.tasklist.order),
    )
    swapper = workers.swapper
    policy = RetryPolicy.from_settings(settings)  # one object decides for the rows and the judge
    rows = _Rows(observer, opened.tasklist, swapper)
    async with DashScopeClient(client_config(settings, base_url, api_key)) as client:
        if swapper is not None:  # the workers load their models; a Ctrl-C stops the wait
            await interrupts.until_stopped(swapper.start())
        scheduler = Scheduler(
            settings,
            out_dir=out_dir,
            journal=journal,
            client=client,
            swapper=swapper,
            swapper_problem=workers.swap_problem,
            judge=judge_for(settings, client, emulated, policy, budget),
            policy=policy,
            emulated=emulated and workers.api_models,
            backend=backend,
            on_row=rows.row,
            budget=budget,
            local=workers.local,
        )
        for line in lines:
            log.info("run_banner", line=line)
        if observer:
            observer.started(opened.tasklist, scheduler, lines)
        # Ctrl-C / SIGTERM: the scheduler stops, the closing files are still written; a
        # second one leaves the rows under way (and the paid calls' drain) at once
        interrupts.when_stopped(scheduler.interrupt)
        t0 = time.monotonic()
        try:
            summary = await interrupts.until_left(
                scheduler.run(opened.tasklist, opened.state, opened.fps)
            )
        except Left:
            summary = rows.left_summary(scheduler, opened.tasklist, time.monotonic() - t0)
        if summary.stopped_reason:  # what the stop abandoned says nothing on the console
            interrupts.quiet()
        summary.faceswap = swapper.describe() if swapper is not None else workers.swap_problem
        summary.judge = scheduler.finisher.judge_usage()
        summary.interrupted = interrupts.name
        try:
            await _close_run(
                journal, run_id, started, summary, scheduler.ledger, budget, earlier
            )
        except JournalLost as exc:  # every later write says so too: the stop's line has
            log.info("run_end_not_journaled", error=str(exc))
        except DiskFull as exc:  # the rows' records are on disk; say why, go on
            _warn(observer, f"the run's end was not journaled: {exc}")
        if summary.judge is not None:  # run_end holds this run's; the summary every run's
            summary.judge = judged_before.plus(JudgeUsage(**summary.judge)).model_dump()
    return summary


async def _close_run(
    journal: Journal,
    run_id: str,
    started: float,
    summary: RunSummary,
    ledger: Ledger,
    budget: Budget,
    earlier: list[dict[str, Any]],
) -> None:
    """The run_end record, and the summary's view of every run in the folder."""
    emulated = ledger.emulated
    billed = dict(ledger.this_run())
    end = {
        "elapsed_s": round(time.time() - started, 3),
        "submits": summary.submits,
        "throttled": summary.throttled,
        "retries": summary.retries,
        "polls": summary.polls,
        "done": sum(1 for r in summary.rows if r.status == "done"),
        "failed": len(summary.failed),
        "billed": billed,
        "emulated": emulated,
        "interrupted": summary.interrupted,
        "stopped": summary.stopped_reason,
        "judge": summary.judge,  # its calls, 429s, estimated tokens and cost
    }
    summary.runs = [*earlier, {"run": run_id, "t": started, "ended": True, **end}]
    # billed over the folder's runs of this kind, from the ledger (a crashed run's requests
    # included; emulator rehearsals are not real spend)
    summary.billed = billed_rows(budget.prices, ledger.spent())
    summary.budget = budget.limit
    await journal.write("run_end", run=run_id, **end)  # last: the summary holds it either way


async def _report(
    out_dir: Path,
    tasks: Path,
    images: Path | None,
    summary: dict[str, Any] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> str | None:
    """report.html for a person to look at; a failure here never fails the run: it is one
    line to ``on_error`` (else the log)."""
    from runner.outputs.report import write_report

    try:
        path = await asyncio.to_thread(write_report, out_dir, tasks, images, summary)
    except Exception as exc:  # the images are safe; say why the page is missing
        line = _not_written(out_dir / REPORT_NAME, exc)
        if on_error is None:
            log.error("report_failed", error=line)
        else:
            on_error(line)
        return None
    return str(path)


def _not_written(path: Path, exc: BaseException) -> str:
    """One line: which closing file was not written, and why."""
    if path.is_dir():
        why = "it is a folder: move it away"
    elif isinstance(exc, OSError):
        why = exc.strerror or type(exc).__name__
    else:
        why = str(exc) or type(exc).__name__
    return f"{path} was not written: {why}"


async def journal_end(out_dir: Path, summary: RunSummary) -> list[str]:
    """Write the run's closing files: failed rows and the summary. Returns a line for each
    one that could not be written (the other is written all the same)."""
    return await asyncio.to_thread(write_run_files, out_dir, summary)


def write_run_files(out_dir: Path, summary: RunSummary) -> list[str]:
    s = io.StringIO()
    w = csv.writer(s, lineterminator="\n")
    w.writerow(["index", "task_type", "status", "reason", "request_id"])
    w.writerows(
        [r.index, r.task_type, STATUS_LABEL[r.status], r.reason or "", r.request_id or ""]
        for r in summary.failed
    )
    data = summary.model_dump(mode="json")
    data["by_type"] = {k: dict(v) for k, v in summary.by_type().items()}
    files = {
        FAILED_NAME: s.getvalue().encode("utf-8-sig"),
        SUMMARY_NAME: json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8"),
    }
    problems = []
    for name, content in files.items():
        try:
            write_atomic_sync(out_dir / name, content)
        except (DiskFull, OSError) as exc:
            problems.append(_not_written(out_dir / name, exc))
    return problems


async def rejudge_all(
    tasks: str | os.PathLike[str],
    *,
    images: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "outputs",
    settings: Settings | None = None,
    on_row: Callable[[Any], None] | None = None,
) -> Any:
    """Score every output and candidate in ``out`` again and re-pick; nothing is generated.
    ``on_row`` hears the rejudge's summary so far after each row (progress and cost)."""
    from runner.outputs.rejudge import rejudge

    settings = settings or load_settings()
    key = settings.key()
    out_dir = Path(out)
    logs.configure(out_dir / LOG_NAME, secrets=[key] if key else [], console=None)
    async with _backend(settings) as (base_url, api_key, _emulated):
        async with DashScopeClient(client_config(settings, base_url, api_key)) as client:
            result = await rejudge(
                out_dir,
                Path(tasks),
                Path(images) if images else None,
                settings,
                client,
                on_row=on_row,
            )
    await _report(out_dir, Path(tasks), Path(images) if images else None)
    return result


def run(tasks: str | os.PathLike[str] = "task.csv", **kwargs: Any) -> RunSummary:
    """Blocking wrapper of ``run_all`` for scripts (not for a running event loop).

    Call it under ``if __name__ == "__main__":``: face-swap workers re-import the script.
    """
    check_script_guard()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_all(tasks, **kwargs))
    raise SettingsError(  # asyncio.run cannot nest: say what works instead
        "runner.run() was called inside a running event loop (a notebook): "
        "use `summary = await runner.run_all(...)` there"
    )
