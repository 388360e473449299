"""What a job sets up before its first request: the rows read under the folder lock, the
local workers, the client's configuration, the budget over the folder's runs, the banner.

``runner.job`` wires these together; the emulator stays there (the one module that may
start it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from runner.backends.dashscope import ClientConfig, DashScopeClient
from runner.cost import Budget
from runner.policy import RetryPolicy
from runner.settings import Settings
from runner.store.files import sweep_temp
from runner.store.fingerprint import fingerprints, tasklist_fingerprint
from runner.store.journal import JOURNAL_NAME, JournalState, replay
from runner.tasks import TaskList, load_tasks


class Opened:
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


def open_job(tasks: Path, images: Path | None, out_dir: Path) -> Opened:
    """Blocking start-up work (under the folder lock): read the task file, fingerprint its
    rows, tidy the output folder, replay the journal."""
    tasklist = load_tasks(tasks, images)
    fps = fingerprints(tasklist)
    swept = sweep_temp(out_dir)
    return Opened(tasklist, fps, swept, replay(out_dir / JOURNAL_NAME))


def client_config(settings: Settings, base_url: str, api_key: str) -> ClientConfig:
    return ClientConfig(
        base_url=base_url,
        api_key=SecretStr(api_key),
        timeout_s=settings.request_timeout_s,
        sync_timeout_s=settings.sync_timeout_s,
        backoff_max_s=settings.backoff_max_s,
        retry_after_cap_s=settings.retry_after_cap_s,
        download_max_bytes=settings.download_max_bytes,
    )


def local_pool(settings: Settings, task_types: set[str]) -> Any:
    """The local diffusion workers, when a task type of this run lists a ``local:`` model
    (its workers start on first use; torch is imported only there)."""
    if not any(m.startswith("local:") for t in task_types for m in settings.models.get(t, [])):
        return None
    if settings.ray:  # only then is ray imported
        from runner.backends.local.ray_pool import RayPool

        return RayPool(settings, settings.ray)
    from runner.backends.local import LocalPool

    return LocalPool(settings)


def judge_for(
    settings: Settings,
    client: DashScopeClient,
    emulated: bool,
    policy: RetryPolicy,
    budget: Budget | None = None,
) -> Any:
    """The VIEScore judge, when scoring is on or a row has several candidates; it decides its
    retries with the rows' policy object, and asks ``budget`` before each call and tells it
    what each cost."""
    if not settings.judge.enabled and max(settings.candidate_counts().values()) <= 1:
        return None
    from runner.backends.judge.scorer import Judge

    return Judge(
        client,
        settings.judge,
        emulated=emulated,
        policy=policy,
        region=settings.region,
        spend=budget,
    )


@dataclass
class Workers:
    """The run's own workers (face swap, local generation) and which API rows it has."""

    api_types: set[str]
    swapper: Any
    swap_problem: str | None
    local: Any
    # rows made only by local models are real images, even when the API side is emulated
    api_models: bool

    @classmethod
    def for_run(
        cls, settings: Settings, api_types: set[str], swap: tuple[Any, str | None]
    ) -> Workers:
        """``swap``: the face-swap pool and why there is none (runner.job._faceswap)."""
        api_models = any(
            not m.startswith("local:") for t in api_types for m in settings.models.get(t, [])
        )
        return cls(api_types, swap[0], swap[1], local_pool(settings, api_types), api_models)

    async def close(self, *, grace_s: float | None = None) -> None:
        """Stop the workers; ``grace_s``: how long idle ones get to leave (None: the pools'
        default, 0: stopped at once)."""
        # local first: with --ray the swapper started (and so shuts down) the Ray cluster
        if self.local is not None:
            await self.local.close(grace_s=grace_s)
        if self.swapper is not None:
            await self.swapper.close(grace_s=grace_s)


def banner(
    opened: Opened, settings: Settings, workers: Workers, base_url: str, emulated: bool
) -> list[str]:
    """The lines a run starts with: its rows, its backend, its workers, what it resumes."""
    tasklist, state = opened.tasklist, opened.state
    lines = [
        f"{len(tasklist.order)} rows from {tasklist.path} "
        f"({len(tasklist.bad)} unusable), images from {tasklist.images_dir}",
        _backend_line(settings, workers, base_url, emulated),
    ]
    if workers.swapper is not None:
        lines.append("face swap: " + workers.swapper.describe())
    elif workers.swap_problem:
        lines.append("face swap: " + workers.swap_problem)
    if workers.local is not None:
        lines.append("local generation: " + workers.local.describe())
    if opened.swept:
        lines.append(f"removed {opened.swept} temp file(s) left by an interrupted run")
    if state.runs:
        # an emulator's tasks end with it: only real requests are fetched again
        resumable = sum(
            1
            for r in state.rows.values()
            if not r.done and not emulated and any(not p.emulated for p in r.pending)
        )
        done_before = sum(1 for r in state.rows.values() if r.done)
        lines.append(f"resuming: {done_before} rows done before, {resumable} with tasks to fetch")
    return lines


def _backend_line(settings: Settings, workers: Workers, base_url: str, emulated: bool) -> str:
    if not workers.api_types:
        return "backend: none needed (face swap only, on this machine)"
    if not workers.api_models:
        return "backend: none needed (local models only, on this machine)"
    if not emulated:
        return (
            f"backend: DashScope at {base_url} (set by {settings.base_url_from}, "
            f"region {settings.region})"
        )
    return (
        "backend: the embedded DashScope EMULATOR (no DASHSCOPE_API_KEY): "
        "images are placeholders, not real generations"
    )
