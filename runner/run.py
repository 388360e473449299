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
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import SecretStr

from . import logs
from .dashscope import ClientConfig, DashScopeClient
from .journal import JOURNAL_NAME, Journal, JournalState, replay
from .scheduler import RowResult, RunSummary, Scheduler
from .settings import Settings, load_settings
from .store import sweep_temp, write_atomic_sync
from .tasks import TaskList, load_tasks

log = structlog.get_logger(__name__)

FAILED_NAME = "failed.csv"
SUMMARY_NAME = "summary.json"
LOG_NAME = "run.log"


class Observer(Protocol):
    """Progress sink (the CLI's progress bar; nothing in a notebook by default)."""

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
    from .emulator import Emulator, EmulatorConfig, FaultConfig

    cfg = EmulatorConfig(
        time_scale=settings.emulator.time_scale,
        seed=settings.emulator.seed,
        faults=FaultConfig(transient=settings.emulator.faults),
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
        from .faceswap import FaceSwapPool
    except ImportError as exc:  # the optional stack is missing or broken
        return None, f"face swap unavailable: {exc}"
    return FaceSwapPool(settings.faceswap, jpeg_quality=settings.jpeg_quality), None


def _open_job(
    tasks: Path, images: Path | None, out_dir: Path
) -> tuple[TaskList, int, JournalState]:
    """Blocking start-up work: read the task file, tidy the output folder, replay the journal."""
    tasklist = load_tasks(tasks, images)
    out_dir.mkdir(parents=True, exist_ok=True)
    swept = sweep_temp(out_dir / "imgs")
    return tasklist, swept, replay(out_dir / JOURNAL_NAME)


def _judge(settings: Settings, client: DashScopeClient, emulated: bool) -> Any:
    """The VIEScore judge, when scoring is on or a row has several candidates."""
    if not settings.judge.enabled and max(settings.candidates.values()) <= 1:
        return None
    from .judge import Judge

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
    **overrides: Any,
) -> RunSummary:
    """Run every row of ``tasks``; write ``out/imgs/<index>.jpg``; return the summary.

    In a notebook: ``summary = await run_all("task.csv", concurrency=32)``.
    Raises TaskFileError / SettingsError (one readable line) when nothing can start.
    """
    if settings is None:
        settings = load_settings(
            Path(settings_file) if settings_file else None, concurrency=concurrency, **overrides
        )
    elif concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    out_dir = Path(out)
    tasklist, swept, state = await asyncio.to_thread(
        _open_job, Path(tasks), Path(images) if images is not None else None, out_dir
    )
    key = settings.key()
    if configure_logging:
        logs.configure(out_dir / LOG_NAME, secrets=[key] if key else [], console=None)
    journal = Journal(out_dir)
    swapper, swap_problem = _faceswap(settings, tasklist)
    try:
        async with _backend(settings) as (base_url, api_key, emulated):
            backend = "emulator" if emulated else base_url
            banner = [
                f"{len(tasklist.order)} rows from {tasklist.path} "
                f"({len(tasklist.bad)} unusable), images from {tasklist.images_dir}",
                "backend: DashScope at " + base_url
                if not emulated
                else "backend: the embedded DashScope EMULATOR (no DASHSCOPE_API_KEY): "
                "images are placeholders, not real generations",
            ]
            if swapper is not None:
                banner.append("face swap: " + swapper.describe())
            elif swap_problem:
                banner.append("face swap: " + swap_problem)
            if swept:
                banner.append(f"removed {swept} temp file(s) left by an interrupted run")
            resumable = sum(1 for r in state.rows.values() if r.pending and not r.done)
            done_before = sum(1 for r in state.rows.values() if r.done)
            if state.runs:
                banner.append(
                    f"resuming: {done_before} rows done before, {resumable} with tasks to fetch"
                )
            await journal.write(
                "run_start",
                run=uuid.uuid4().hex[:12],
                emulated=emulated,
                backend=backend,
                tasks=str(tasklist.path),
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
                    emulated=emulated,
                    backend=backend,
                    on_row=observer.row if observer else None,
                )
                for line in banner:
                    log.info("run_banner", line=line)
                if observer:
                    observer.started(tasklist, scheduler, banner)
                summary = await scheduler.run(tasklist, state)
                summary.faceswap = swapper.describe() if swapper is not None else swap_problem
    finally:
        if swapper is not None:
            await swapper.close()
        journal.close()
    await journal_end(out_dir, summary)
    summary.report = await _report(
        out_dir, tasklist.path, tasklist.images_dir, json.loads(summary.model_dump_json())
    )
    if observer:
        observer.finished(summary)
    return summary


async def _report(
    out_dir: Path, tasks: Path, images: Path | None, summary: dict[str, Any] | None = None
) -> str | None:
    """report.html for a person to look at; a failure here never fails the run."""
    from .report import write_report

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
    from .judge import rejudge

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
    """Blocking wrapper of ``run_all`` for scripts (not for a running event loop)."""
    return asyncio.run(run_all(tasks, **kwargs))
