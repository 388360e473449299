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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import SecretStr

from runner import logs
from runner.backends.dashscope.client import ClientConfig, DashScopeClient
from runner.cost import Budget, billed_images, billed_rows, check_budget, price_book
from runner.errors import DiskFull, SettingsError
from runner.guard import check_script_guard
from runner.interrupts import Interrupts
from runner.outcomes import runs_view
from runner.scheduling.scheduler import RowResult, RunSummary, Scheduler
from runner.settings import Settings, load_settings
from runner.store.files import OutLock, sweep_temp, write_atomic_sync
from runner.store.fingerprint import fingerprints, tasklist_fingerprint
from runner.store.journal import JOURNAL_NAME, Journal, JournalState, replay
from runner.tasks import TaskList, load_tasks

log = structlog.get_logger(__name__)

FAILED_NAME = "failed.csv"
SUMMARY_NAME = "summary.json"
LOG_NAME = "run.log"


class Observer(Protocol):
    """Progress sink (runner.progress: the CLI's display, and the API's by default)."""

    def started(self, tasks: TaskList, scheduler: Scheduler, banner: list[str]) -> None: ...
    def row(self, result: RowResult) -> None: ...
    def finished(self, summary: RunSummary) -> None: ...


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
    )
    async with Emulator(cfg) as emu:
        yield emu.base_url, "emulator-key", True


def _client_config(settings: Settings, base_url: str, api_key: str) -> ClientConfig:
    return ClientConfig(
        base_url=base_url,
        api_key=SecretStr(api_key),
        timeout_s=settings.request_timeout_s,
        sync_timeout_s=settings.sync_timeout_s,
        backoff_max_s=settings.backoff_max_s,
        retry_after_cap_s=settings.retry_after_cap_s,
        download_max_bytes=settings.download_max_bytes,
    )


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
            settings.faceswap, settings.ray, jpeg_quality=settings.jpeg_quality
        ), None
    return FaceSwapPool(settings.faceswap, jpeg_quality=settings.jpeg_quality), None


class _Opened:
    """What start-up found: the rows, their fingerprints, the journal's state."""

    def __init__(
        self, tasklist: TaskList, fps: dict[str, str], swept: int, state: JournalState
    ) -> None:
        self.tasklist = tasklist
        self.fps = fps
        self.tasks_fp = tasklist_fingerprint(tasklist, fps)
        self.swept = swept
        self.state = state
        # absolute: submit and rejudge find them from any working folder
        self.tasks_path = str(Path(tasklist.path).resolve())
        self.images_path = str(Path(tasklist.images_dir).resolve())


def _open_job(tasks: Path, images: Path | None, out_dir: Path) -> _Opened:
    """Blocking start-up work (under the folder lock): read the task file, fingerprint its
    rows, tidy the output folder, replay the journal."""
    tasklist = load_tasks(tasks, images)
    fps = fingerprints(tasklist)
    swept = sweep_temp(out_dir)
    return _Opened(tasklist, fps, swept, replay(out_dir / JOURNAL_NAME))


def _local(settings: Settings, task_types: set[str]) -> Any:
    """The local diffusion workers, when a task type of this run lists a ``local:`` model
    (its workers start on first use; torch is imported only there)."""
    if not any(m.startswith("local:") for t in task_types for m in settings.models.get(t, [])):
        return None
    if settings.ray:  # only then is ray imported
        from runner.backends.local.ray_pool import RayPool

        return RayPool(settings, settings.ray)
    from runner.backends.local import LocalPool

    return LocalPool(settings)


def _judge(settings: Settings, client: DashScopeClient, emulated: bool) -> Any:
    """The VIEScore judge, when scoring is on or a row has several candidates."""
    if not settings.judge.enabled and max(settings.candidates.values()) <= 1:
        return None
    from runner.backends.judge.scorer import Judge

    return Judge(client, settings.judge, emulated=emulated)


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
    ``progress=False``, and its notices go through logging.
    """
    check_script_guard()  # before anything starts: a worker would re-run an unguarded script
    if observer is None and progress:
        from runner.progress import api_observer

        observer = api_observer()
    if settings is None:
        settings = load_settings(
            Path(settings_file) if settings_file else None, concurrency=concurrency, **overrides
        )
    elif concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    out_dir = Path(out)
    lock = OutLock(out_dir, "run")
    lock.acquire()  # FolderBusy: another process is using this folder; nothing touched
    try:
        return await _run_locked(
            settings, Path(tasks), images, out_dir, observer, configure_logging
        )
    finally:
        lock.release()


async def _run_locked(
    settings: Settings,
    tasks: Path,
    images: str | os.PathLike[str] | None,
    out_dir: Path,
    observer: Observer | None,
    configure_logging: bool,
) -> RunSummary:
    opened = await asyncio.to_thread(
        _open_job, tasks, Path(images) if images is not None else None, out_dir
    )
    tasklist, swept, state = opened.tasklist, opened.swept, opened.state
    key = settings.key()
    if configure_logging:
        # stderr: a script's terminal, or the notebook's cell (the notices, the warnings)
        logs.configure(out_dir / LOG_NAME, secrets=[key] if key else [], console=sys.stderr)
    api_types = {t.task_type for t in tasklist.tasks} - {"deepfake"}
    check_budget(settings, api_types)
    journal = Journal(out_dir)
    swapper, swap_problem = _faceswap(settings, tasklist)
    local = _local(settings, api_types)
    # rows made only by local models are real images, even when the API side is emulated
    api_models = any(
        not m.startswith("local:") for t in api_types for m in settings.models.get(t, [])
    )
    try:
        async with _backend(settings) as (base_url, api_key, emulated):
            backend = "emulator" if emulated else base_url
            banner = [
                f"{len(tasklist.order)} rows from {tasklist.path} "
                f"({len(tasklist.bad)} unusable), images from {tasklist.images_dir}",
            ]
            if not api_types:
                banner.append("backend: none needed (face swap only, on this machine)")
            elif not api_models:
                banner.append("backend: none needed (local models only, on this machine)")
            elif not emulated:
                banner.append(
                    f"backend: DashScope at {base_url} (set by {settings.base_url_from}, "
                    f"region {settings.region})"
                )
            else:
                banner.append(
                    "backend: the embedded DashScope EMULATOR (no DASHSCOPE_API_KEY): "
                    "images are placeholders, not real generations"
                )
            if swapper is not None:
                banner.append("face swap: " + swapper.describe())
            elif swap_problem:
                banner.append("face swap: " + swap_problem)
            if local is not None:
                banner.append("local generation: " + local.describe())
            if swept:
                banner.append(f"removed {swept} temp file(s) left by an interrupted run")
            resumable = sum(1 for r in state.rows.values() if r.pending and not r.done)
            done_before = sum(1 for r in state.rows.values() if r.done)
            if state.runs:
                banner.append(
                    f"resuming: {done_before} rows done before, {resumable} with tasks to fetch"
                )
            run_id = uuid.uuid4().hex[:12]
            earlier = runs_view(state.runs_info)
            # the budget covers the folder: earlier runs of the same kind count against it
            book = price_book(settings)
            spent_before = sum(
                book.cost(m, n) or 0.0
                for m, n in billed_images(earlier, emulated=emulated).items()
            )
            budget = Budget(book, settings.budget, spent_before=spent_before)
            started = time.time()
            await journal.write(
                "run_start",
                run=run_id,
                emulated=emulated,
                backend=backend,
                tasks=opened.tasks_path,
                tasks_fp=opened.tasks_fp,
                images=opened.images_path,
                rows=len(tasklist.order),
            )
            async with DashScopeClient(_client_config(settings, base_url, api_key)) as client:
                if swapper is not None:
                    await swapper.start()
                scheduler = Scheduler(
                    settings,
                    out_dir=out_dir,
                    journal=journal,
                    client=client,
                    swapper=swapper,
                    swapper_problem=swap_problem,
                    judge=_judge(settings, client, emulated),
                    emulated=emulated and api_models,
                    backend=backend,
                    on_row=observer.row if observer else None,
                    budget=budget,
                    local=local,
                )
                for line in banner:
                    log.info("run_banner", line=line)
                if observer:
                    observer.started(tasklist, scheduler, banner)
                # Ctrl-C / SIGTERM: the scheduler stops, the closing files are still written
                with Interrupts(scheduler.interrupt) as interrupts:
                    summary = await scheduler.run(tasklist, state, opened.fps)
                summary.faceswap = swapper.describe() if swapper is not None else swap_problem
                summary.interrupted = interrupts.name
                try:
                    await _close_run(
                        journal, run_id, started, summary, budget, earlier, emulated
                    )
                except DiskFull as exc:  # the rows' records are on disk; say why, go on
                    log.error("run_end_not_journaled", error=str(exc))
    finally:
        # local first: with --ray the swapper started (and so shuts down) the Ray cluster
        if local is not None:
            await local.close()
        if swapper is not None:
            await swapper.close()
        journal.close()
    try:
        await journal_end(out_dir, summary)
    except DiskFull as exc:  # a full disk: the summary on the console still says what to do
        log.error("closing_files_not_written", error=str(exc))
    summary.report = await _report(
        out_dir, tasklist.path, tasklist.images_dir, json.loads(summary.model_dump_json())
    )
    if observer:
        observer.finished(summary)
    return summary


async def _close_run(
    journal: Journal,
    run_id: str,
    started: float,
    summary: RunSummary,
    budget: Budget,
    earlier: list[dict[str, Any]],
    emulated: bool,
) -> None:
    """The run_end record, and the summary's view of every run in the folder."""
    billed = dict(budget.images)
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
    }
    summary.runs = [*earlier, {"run": run_id, "t": started, "ended": True, **end}]
    # billed over the folder's runs of this kind (emulator rehearsals are not real spend)
    summary.billed = billed_rows(budget.prices, billed_images(summary.runs, emulated=emulated))
    summary.budget = budget.limit
    await journal.write("run_end", run=run_id, **end)  # last: the summary holds it either way


async def _report(
    out_dir: Path, tasks: Path, images: Path | None, summary: dict[str, Any] | None = None
) -> str | None:
    """report.html for a person to look at; a failure here never fails the run."""
    from runner.outputs.report import write_report

    try:
        path = await asyncio.to_thread(write_report, out_dir, tasks, images, summary)
    except Exception as exc:  # the images are safe; say why the page is missing
        log.error("report_failed", error=str(exc))
        return None
    return str(path)


async def journal_end(out_dir: Path, summary: RunSummary) -> None:
    """Write the run's closing files: failed rows and the summary."""
    await asyncio.to_thread(write_run_files, out_dir, summary)


def write_run_files(out_dir: Path, summary: RunSummary) -> None:
    s = io.StringIO()
    w = csv.writer(s, lineterminator="\n")
    w.writerow(["index", "task_type", "status", "reason"])
    w.writerows([r.index, r.task_type, r.status, r.reason or ""] for r in summary.failed)
    write_atomic_sync(out_dir / FAILED_NAME, s.getvalue().encode("utf-8-sig"))
    data = summary.model_dump(mode="json")
    data["by_type"] = {k: dict(v) for k, v in summary.by_type().items()}
    write_atomic_sync(
        out_dir / SUMMARY_NAME, json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")
    )


async def rejudge_all(
    tasks: str | os.PathLike[str],
    *,
    images: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "outputs",
    settings: Settings | None = None,
) -> Any:
    """Score every output and candidate in ``out`` again and re-pick; nothing is generated."""
    from runner.outputs.rejudge import rejudge

    settings = settings or load_settings()
    key = settings.key()
    out_dir = Path(out)
    logs.configure(out_dir / LOG_NAME, secrets=[key] if key else [], console=None)
    async with _backend(settings) as (base_url, api_key, _emulated):
        async with DashScopeClient(_client_config(settings, base_url, api_key)) as client:
            result = await rejudge(
                out_dir, Path(tasks), Path(images) if images else None, settings, client
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
