"""The scheduler: every row to its backend under the quotas, every result to disk.

One coroutine per row. API rows wait in the ``LanePool`` for a slot of one of their
models, submit (paced per model), journal the task id, poll under the shared budget,
release the slot, then download and write. Deepfake rows go to the face-swap pool.
Errors are handled by type (see ``errors``): retried, rerouted, the row failed, or the
whole run stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog
from pydantic import BaseModel, Field

from .errors import (
    DiskFull,
    DownloadError,
    Fatal,
    ModelRefused,
    RateLimited,
    ResultExpired,
    Retryable,
    RowFailed,
    RunnerError,
    ServerError,
    classify,
)
from .images import ImageProblem, PreparedSource, prepare_source, result_to_jpeg
from .journal import Journal, JournalState, PendingTask, RowState
from .limits import LanePool, ModelLane, PollBudget, plan_poll_delay
from .prompts import shorten
from .retry import backoff_delay
from .settings import SYNC_MODELS, Settings
from .store import write_atomic
from .tasks import Task, TaskList

log = structlog.get_logger(__name__)

Status = Literal["done", "skipped", "failed", "bad", "stopped"]


class RowResult(BaseModel):
    index: str
    task_type: str
    status: Status
    reason: str | None = None
    model: str | None = None
    attempts: int = 0
    file: str | None = None
    emulated: bool = False
    identity_target: float | None = None
    identity_ori: float | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")


class RunSummary(BaseModel):
    rows: list[RowResult]
    elapsed_s: float
    emulated: bool
    backend: str  # "emulator" or the base URL
    retries: int = 0
    throttled: int = 0
    polls: int = 0
    submits: int = 0
    stopped_reason: str | None = None
    models: list[dict[str, Any]] = Field(default_factory=list)
    faceswap: str | None = None

    def by_type(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for r in self.rows:
            out.setdefault(r.task_type, Counter())[r.status] += 1
        return out

    @property
    def failed(self) -> list[RowResult]:
        return [r for r in self.rows if not r.ok]

    @property
    def exit_code(self) -> int:
        if self.stopped_reason:
            return 3
        return 0 if not self.failed else 1


class Swapper(Protocol):
    """What the scheduler needs of the face-swap pool (``runner.faceswap.FaceSwapPool``)."""

    async def swap(self, index: str, ori: Path, target: Path) -> Any: ...


class Client(Protocol):
    """What the scheduler needs of ``runner.dashscope.DashScopeClient``."""

    async def submit_text2image(self, model: str, prompt: str, **kw: Any) -> Any: ...
    async def submit_image_edit(self, model: str, prompt: str, image: str, **kw: Any) -> Any: ...
    async def fetch_task(self, task_id: str) -> Any: ...
    async def cancel_task(self, task_id: str) -> None: ...
    async def multimodal_edit(self, model: str, prompt: str, image: str, **kw: Any) -> Any: ...
    async def download(self, url: str) -> bytes: ...


class _RowStop(Exception):
    """Internal: the row ends here with this result."""

    def __init__(self, result: RowResult) -> None:
        self.result = result


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        *,
        out_dir: Path,
        journal: Journal,
        client: Client | None,
        swapper: Swapper | None = None,
        swapper_problem: str | None = None,
        emulated: bool,
        backend: str,
        on_row: Callable[[RowResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.out_dir = out_dir
        self.imgs_dir = out_dir / "imgs"
        self.journal = journal
        self.client = client
        self.swapper = swapper
        self.swapper_problem = swapper_problem
        self.emulated = emulated
        self.backend = backend
        self.on_row = on_row
        names = {m for models in settings.models.values() for m in models}
        self.lanes = {m: ModelLane(m, settings.quota(m)) for m in sorted(names)}
        self.pool = LanePool(self.lanes, total_cap=settings.concurrency)
        self.polls = PollBudget(settings.poll_qps)
        self.retries = 0
        self._stop_reason: str | None = None
        self._tasks: list[asyncio.Task[RowResult]] = []

    # --- the run -------------------------------------------------------------
    async def run(self, tasklist: TaskList, state: JournalState) -> RunSummary:
        started = time.monotonic()
        self.imgs_dir.mkdir(parents=True, exist_ok=True)
        results: list[RowResult] = []
        for bad in tasklist.bad:
            res = RowResult(
                index=bad.index, task_type=bad.task_type, status="bad", reason=bad.reason
            )
            await self.journal.write("failed", index=bad.index, reason=bad.reason, kind="input")
            results.append(self._emit(res))
        for task in tasklist.tasks:
            prior = state.rows.get(task.index) or RowState(index=task.index)
            self._tasks.append(
                asyncio.create_task(self._row(task, prior), name=f"row-{task.index}")
            )
        outcomes = await asyncio.gather(*self._tasks, return_exceptions=True)
        for task, outcome in zip(tasklist.tasks, outcomes, strict=True):
            if isinstance(outcome, RowResult):
                results.append(outcome)
            else:
                reason = self._stop_reason or f"not finished: {outcome!r}"
                results.append(
                    self._emit(
                        RowResult(
                            index=task.index,
                            task_type=task.task_type,
                            status="stopped",
                            reason=reason,
                        )
                    )
                )
        order = {idx: i for i, idx in enumerate(tasklist.order)}
        results.sort(key=lambda r: order.get(r.index, len(order)))
        return RunSummary(
            rows=results,
            elapsed_s=time.monotonic() - started,
            emulated=self.emulated,
            backend=self.backend,
            retries=self.retries,
            throttled=sum(lane.stats.throttled for lane in self.lanes.values()),
            polls=self.polls.polls,
            submits=sum(lane.stats.submits for lane in self.lanes.values()),
            stopped_reason=self._stop_reason,
            models=self.pool.views(),
        )

    def _emit(self, result: RowResult) -> RowResult:
        if self.on_row is not None:
            self.on_row(result)
        return result

    def _stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            log.error("run_stopped", reason=reason)
            current = asyncio.current_task()
            for t in self._tasks:
                if t is not current and not t.done():
                    t.cancel()

    async def _row(self, task: Task, prior: RowState) -> RowResult:
        t0 = time.monotonic()
        path = self.imgs_dir / f"{task.index}.jpg"
        if prior.done and path.is_file() and path.stat().st_size > 0:
            res = RowResult(
                index=task.index,
                task_type=task.task_type,
                status="skipped",
                model=prior.model,
                file=str(path.relative_to(self.out_dir)),
                emulated=prior.emulated,
                identity_target=prior.result.get("identity_target"),
                identity_ori=prior.result.get("identity_ori"),
            )
            return self._emit(res)
        try:
            if task.task_type == "deepfake":
                res = await self._swap_row(task)
            else:
                res = await self._api_row(task, prior)
        except _RowStop as stop:
            res = stop.result
            await self.journal.write("failed", index=task.index, reason=res.reason, kind="row")
            log.info("row_failed", index=task.index, type=task.task_type, reason=res.reason)
        except (Fatal, DiskFull) as exc:
            self._stop(f"{type(exc).__name__}: {exc}")
            res = RowResult(
                index=task.index, task_type=task.task_type, status="stopped", reason=str(exc)
            )
        res.seconds = round(time.monotonic() - t0, 3)
        return self._emit(res)

    def _fail(self, task: Task, reason: str, **kw: Any) -> _RowStop:
        return _RowStop(
            RowResult(
                index=task.index, task_type=task.task_type, status="failed", reason=reason, **kw
            )
        )

    # --- deepfake ------------------------------------------------------------
    async def _swap_row(self, task: Task) -> RowResult:
        if self.swapper is None:
            raise self._fail(task, self.swapper_problem or "no face-swap backend is available")
        assert task.ori_image is not None and task.target_image is not None
        try:
            out = await self.swapper.swap(task.index, task.ori_image, task.target_image)
        except (Fatal, DiskFull):
            raise
        except RunnerError as exc:
            raise self._fail(task, str(exc)) from None
        path = self.imgs_dir / f"{task.index}.jpg"
        await write_atomic(path, out.jpeg)
        fields = {
            "file": str(path.relative_to(self.out_dir)),
            "model": f"faceswap:{out.backend}",
            "emulated": False,
            "identity_target": out.identity_target,
            "identity_ori": out.identity_ori,
            "embedding": getattr(out, "embedding", None),
            "detail": getattr(out, "detail", {}),
        }
        await self.journal.write("done", index=task.index, **fields)
        return RowResult(
            index=task.index,
            task_type=task.task_type,
            status="done",
            model=fields["model"],
            file=fields["file"],
            identity_target=out.identity_target,
            identity_ori=out.identity_ori,
        )

    # --- DashScope rows ------------------------------------------------------
    async def _api_row(self, task: Task, prior: RowState) -> RowResult:
        if self.client is None:
            raise self._fail(task, "no DashScope client")
        attempts = 0
        for pending in prior.pending:
            done = await self._resume(task, pending)
            if done is not None:
                return done
        refused: dict[str, str] = {}
        throttled = 0
        source: PreparedSource | None = None
        prompt, cut = shorten(task.prompt)
        if cut:
            log.warning(
                "prompt_shortened", index=task.index, chars=len(task.prompt), sent=len(prompt)
            )
        while True:
            models = [m for m in self.settings.models[task.task_type] if m not in refused]
            if not models:
                why = "; ".join(f"{m}: {r}" for m, r in refused.items())
                raise self._fail(task, f"every model refused the row ({why})", attempts=attempts)
            lane = await self.pool.acquire(models)
            delay = 0.0
            held = True
            try:
                if task.task_type != "t2i" and source is None:
                    source = await self._prepare(task)
                await lane.submit_gate()
                urls, task_id = await self._generate(task, lane, prompt, source)
                self.pool.release(lane)
                held = False
                return await self._save(task, lane.name, urls, task_id, attempts + 1)
            except RateLimited as exc:
                lane.on_throttled()
                throttled += 1
                self.retries += 1
                if throttled > self.settings.max_throttled:
                    raise self._fail(task, f"throttled {throttled} times: {exc}") from None
                delay = backoff_delay(
                    min(throttled, 6), exc.retry_after, max_s=self.settings.backoff_max_s
                )
            except (Retryable, ResultExpired) as exc:
                attempts += 1
                self.retries += 1
                if attempts >= self.settings.max_attempts:
                    raise self._fail(
                        task, f"gave up after {attempts} attempts: {exc}", attempts=attempts
                    ) from None
                log.info("row_retry", index=task.index, model=lane.name, error=str(exc))
                retry_after = getattr(exc, "retry_after", None)
                delay = backoff_delay(attempts, retry_after, max_s=self.settings.backoff_max_s)
            except ModelRefused as exc:
                refused[lane.name] = str(exc)
                log.warning("model_refused", index=task.index, model=lane.name, error=str(exc))
            except (RowFailed, ImageProblem) as exc:
                raise self._fail(task, str(exc), model=lane.name, attempts=attempts + 1) from None
            finally:
                if held:
                    self.pool.release(lane)
            if delay:
                await asyncio.sleep(delay)

    async def _prepare(self, task: Task) -> PreparedSource:
        assert task.ori_image is not None
        url = None
        if self.settings.image_base_url:
            url = self.settings.image_base_url.rstrip("/") + "/" + task.ori_name.lstrip("/")
        try:
            src = await asyncio.to_thread(
                prepare_source, task.ori_image, url=url, quality=self.settings.jpeg_quality
            )
        except ImageProblem as exc:
            raise RowFailed(f"ori_image: {exc}") from None
        if src.note:
            log.info("source_resized", index=task.index, note=src.note)
        return src

    async def _generate(
        self, task: Task, lane: ModelLane, prompt: str, source: PreparedSource | None
    ) -> tuple[list[str], str | None]:
        """Submit on ``lane`` and wait for the result URLs (the slot is held throughout)."""
        assert self.client is not None
        s = self.settings
        model = lane.name
        started = time.monotonic()
        if model in SYNC_MODELS:
            assert source is not None
            res = await self.client.multimodal_edit(model, prompt, source.uri, n=1, seed=s.seed)
            lane.stats.observe(time.monotonic() - started)
            lane.stats.completed += 1
            if not res.urls:
                raise ServerError("the answer carried no image", model=model)
            return list(res.urls), None
        if task.task_type == "t2i":
            size = "1328*1328" if model == "qwen-image" else s.size
            sub = await self.client.submit_text2image(
                model, prompt, size=size, n=1, seed=s.seed, prompt_extend=s.prompt_extend
            )
        else:
            assert source is not None
            sub = await self.client.submit_image_edit(
                model,
                prompt,
                source.uri,
                function="description_edit",
                strength=s.edit_strength,
                n=1,
                seed=s.seed,
            )
        # durable before anything else happens to it: a crash from here on can resume it
        await self.journal.write(
            "submitted", index=task.index, model=model, task_id=sub.task_id, prompt_sent=prompt
        )
        state = await self._await_task(task.index, lane, sub.task_id, time.time())
        return list(state.urls), sub.task_id

    async def _await_task(
        self, index: str, lane: ModelLane, task_id: str, submitted_at: float
    ) -> Any:
        """Poll until the task ends; SUCCEEDED returns its state, anything else raises."""
        assert self.client is not None
        polls = 0
        while True:
            elapsed = time.time() - submitted_at
            if elapsed > self.settings.task_timeout_s:
                try:
                    await self.client.cancel_task(task_id)
                except RunnerError:
                    pass
                await self._close_task(index, task_id, "timed out")
                raise ServerError(f"task {task_id} still running after {elapsed:.0f} s")
            await self.polls.wait(plan_poll_delay(lane, elapsed, polls, self.settings.poll_first_s))
            polls += 1
            state = await self.client.fetch_task(task_id)
            if state.status == "SUCCEEDED":
                lane.stats.observe(max(0.0, time.time() - submitted_at))
                lane.stats.completed += 1
                if not state.urls:
                    await self._close_task(index, task_id, "succeeded without images")
                    raise ServerError("task succeeded but returned no image", model=lane.name)
                return state
            if state.status == "FAILED":
                lane.stats.failed += 1
                await self._close_task(index, task_id, f"FAILED {state.code}")
                raise classify(None, state.code, state.message or "", model=lane.name)
            if state.status in ("UNKNOWN", "CANCELED"):
                await self._close_task(index, task_id, state.status)
                raise ResultExpired(f"task {task_id} is {state.status}", model=lane.name)

    async def _close_task(self, index: str, task_id: str, why: str) -> None:
        """Journal that a task id can no longer give a result, so no rerun waits on it."""
        await self.journal.write("task_closed", index=index, task_id=task_id, why=why)

    async def _resume(self, task: Task, pending: PendingTask) -> RowResult | None:
        """Finish a task a previous run submitted, without paying for it again."""
        if pending.model not in self.lanes:
            self.lanes[pending.model] = ModelLane(pending.model, self.settings.quota(pending.model))
        lane = await self.pool.acquire([pending.model])
        try:
            log.info("task_resumed", index=task.index, task_id=pending.task_id)
            state = await self._await_task(task.index, lane, pending.task_id, pending.submitted_at)
        except (Fatal, DiskFull):
            raise
        except (RunnerError, ImageProblem) as exc:
            log.info("resume_failed", index=task.index, task_id=pending.task_id, error=str(exc))
            return None
        finally:
            self.pool.release(lane)
        try:
            return await self._save(task, pending.model, list(state.urls), pending.task_id, 1)
        except (Fatal, DiskFull):
            raise
        except (RunnerError, ImageProblem) as exc:
            log.info("resume_failed", index=task.index, task_id=pending.task_id, error=str(exc))
            return None

    async def _save(
        self, task: Task, model: str, urls: list[str], task_id: str | None, attempts: int
    ) -> RowResult:
        """Download the first good result, write it atomically, journal it."""
        assert self.client is not None
        last: Exception | None = None
        for url in urls:
            try:
                body = await self.client.download(url)
                jpeg, w, h = await asyncio.to_thread(
                    result_to_jpeg, body, self.settings.jpeg_quality
                )
            except ImageProblem as exc:
                last = DownloadError(str(exc), model=model)
                continue
            except (DownloadError, ResultExpired) as exc:
                last = exc
                continue
            path = self.imgs_dir / f"{task.index}.jpg"
            await write_atomic(path, jpeg)
            rel = str(path.relative_to(self.out_dir))
            await self.journal.write(
                "done",
                index=task.index,
                model=model,
                task_id=task_id,
                file=rel,
                emulated=self.emulated,
                width=w,
                height=h,
                bytes=len(jpeg),
            )
            return RowResult(
                index=task.index,
                task_type=task.task_type,
                status="done",
                model=model,
                attempts=attempts,
                file=rel,
                emulated=self.emulated,
            )
        if task_id:
            await self._close_task(task.index, task_id, f"results unusable: {last}")
        if isinstance(last, ResultExpired):
            raise last
        raise DownloadError(f"no usable result image ({last})", model=model)
