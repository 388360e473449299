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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import BaseModel

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
from .judge import pick
from .limits import (
    LEARNED_NAME,
    CpuPool,
    LanePool,
    ModelLane,
    PollBudget,
    apply_learned,
    load_learned,
    plan_poll_delay,
    poll_urgency,
    save_learned,
)
from .outcomes import RowResult, RunSummary
from .prompts import PromptPlan, build_prompt
from .retry import backoff_delay
from .settings import SINGLE_IMAGE_MODELS, SYNC_MODELS, Settings
from .store import write_atomic
from .tasks import Task, TaskList

__all__ = ["RowResult", "RunSummary", "Scheduler"]

log = structlog.get_logger(__name__)

MAX_N = 4  # images one wanx request may return


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


class Judge(Protocol):
    """What the scheduler needs of ``runner.judge.Judge``."""

    async def score(
        self,
        task_type: str,
        prompt: str,
        image: Path,
        *,
        source: Path | None = None,
        identity: float | None = None,
    ) -> Any: ...


class Candidate(BaseModel):
    """One generated image, checked and re-encoded, before it is chosen or not."""

    model: str
    jpeg: bytes
    width: int
    height: int
    task_id: str | None = None
    actual_prompt: str | None = None


class _Attempt:
    """A row's retry bookkeeping, shared by its requests."""

    def __init__(self) -> None:
        self.count = 0
        self.throttled = 0
        self.refused: dict[str, str] = {}
        self.on_slot: Callable[[], None] | None = None  # once, when a slot is first held

    def slot_taken(self) -> None:
        if self.on_slot is not None:
            self.on_slot, call = None, self.on_slot
            call()


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
        judge: Judge | None = None,
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
        self.judge = judge
        self._judge_off = False
        self.emulated = emulated
        self.backend = backend
        self.on_row = on_row
        names = {m for models in settings.models.values() for m in models}
        self.lanes = {m: ModelLane(m, settings.quota(m)) for m in sorted(names)}
        self.pool = LanePool(self.lanes, total_cap=settings.concurrency)
        self.polls = PollBudget(settings.poll_qps)
        # result decoding/encoding, below the loop's priority (a source to prepare is on the
        # way to a slot: it stays on the default executor, at normal priority)
        self.cpu = CpuPool()
        # Edit rows prepare their source before they wait for a slot (a slot never waits on
        # a decode); this bounds how many prepared sources wait for a slot, per task type,
        # so that memory stays flat and one type's queue never holds up another's.
        self._ahead = {
            kind: asyncio.Semaphore(2 * sum(self._max_slots(m) for m in models) + 2)
            for kind, models in settings.models.items()
            if kind != "t2i"
        }
        self.retries = 0
        self._stop_reason: str | None = None
        self._tasks: list[asyncio.Task[RowResult]] = []

    def _max_slots(self, model: str) -> int:
        quota = self.settings.quota(model)
        return quota.max_in_flight if quota.learn else quota.in_flight

    # --- the run -------------------------------------------------------------
    async def run(self, tasklist: TaskList, state: JournalState) -> RunSummary:
        started = time.monotonic()
        self.imgs_dir.mkdir(parents=True, exist_ok=True)
        learned_path = self.out_dir / LEARNED_NAME
        apply_learned(self.lanes, await asyncio.to_thread(load_learned, learned_path))
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
        self.cpu.close()
        try:
            await asyncio.to_thread(save_learned, self.lanes, learned_path)
        except OSError as exc:
            log.warning("learned_quotas_not_saved", error=str(exc))
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
            log.info("row_failed", index=task.index, type=task.task_type, reason=res.reason)
            try:
                await self.journal.write("failed", index=task.index, reason=res.reason, kind="row")
            except DiskFull as exc:
                self._stop(f"DiskFull: {exc}")
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
        scores = await self._judge_all(task, [path], identity=out.identity_target)
        if scores:
            fields["score"] = scores[0].overall
        await self.journal.write("done", index=task.index, **fields)
        return RowResult(
            index=task.index,
            task_type=task.task_type,
            status="done",
            model=fields["model"],
            file=fields["file"],
            identity_target=out.identity_target,
            identity_ori=out.identity_ori,
            score=fields.get("score"),
        )

    # --- DashScope rows ------------------------------------------------------
    async def _api_row(self, task: Task, prior: RowState) -> RowResult:
        """Collect the row's candidates (resumed tasks first), then pick and write one."""
        if self.client is None:
            raise self._fail(task, "no DashScope client")
        plan = build_prompt(task.task_type, task.prompt, templates=self.settings.prompt_templates)
        if plan.shortened:
            log.warning(
                "prompt_shortened", index=task.index, chars=len(task.prompt), sent=len(plan.sent)
            )
        want = self.settings.candidates.get(task.task_type, 1)
        got: list[Candidate] = []
        for pending in prior.pending:
            got.extend(await self._resume(task, pending))
        attempt = _Attempt()
        source: list[PreparedSource] = []  # prepared once, before the row waits for a slot
        ahead = self._ahead.get(task.task_type)
        if ahead is not None and len(got) < want:
            await ahead.acquire()
            attempt.on_slot = ahead.release  # called once the row holds a slot
        try:
            if task.task_type != "t2i" and len(got) < want:
                try:
                    source.append(await self._prepare(task))
                except RowFailed as exc:
                    raise self._fail(task, str(exc)) from None
            while len(got) < want:
                try:
                    got.extend(
                        await self._generate_once(task, plan, want - len(got), source, attempt)
                    )
                except _RowStop:
                    if not got:  # what was made so far still counts
                        raise
                    break
        finally:
            attempt.slot_taken()
        return await self._finish(task, plan, got[:want], attempt.count + 1)

    async def _generate_once(
        self,
        task: Task,
        plan: PromptPlan,
        wanted: int,
        source: list[PreparedSource],
        attempt: _Attempt,
    ) -> list[Candidate]:
        """One request that yields images, retried and rerouted until it does (or cannot)."""
        while True:
            models = [m for m in self.settings.models[task.task_type] if m not in attempt.refused]
            if not models:
                why = "; ".join(f"{m}: {r}" for m, r in attempt.refused.items())
                raise self._fail(
                    task, f"every model refused the row ({why})", attempts=attempt.count
                )
            lane = await self.pool.acquire(models)
            attempt.slot_taken()  # a prepared source no longer waits: let the next one in
            delay = 0.0
            held = True
            try:
                if task.task_type != "t2i" and not source:
                    source.append(await self._prepare(task))
                n = 1 if lane.name in SINGLE_IMAGE_MODELS else min(wanted, MAX_N)
                await lane.submit_gate()
                urls, task_id, actual = await self._generate(
                    task, lane, plan, source[0] if source else None, n
                )
                self.pool.release(lane)
                held = False
                return await self._download(task, lane.name, urls, task_id, actual)
            except RateLimited as exc:
                lane.on_throttled()
                attempt.throttled += 1
                self.retries += 1
                if attempt.throttled > self.settings.max_throttled:
                    raise self._fail(task, f"throttled {attempt.throttled} times: {exc}") from None
                delay = backoff_delay(
                    min(attempt.throttled, 6), exc.retry_after, max_s=self.settings.backoff_max_s
                )
            except (Retryable, ResultExpired) as exc:
                attempt.count += 1
                self.retries += 1
                if attempt.count >= self.settings.max_attempts:
                    raise self._fail(
                        task,
                        f"gave up after {attempt.count} attempts: {exc}",
                        attempts=attempt.count,
                    ) from None
                log.info("row_retry", index=task.index, model=lane.name, error=str(exc))
                retry_after = getattr(exc, "retry_after", None)
                delay = backoff_delay(attempt.count, retry_after, max_s=self.settings.backoff_max_s)
            except ModelRefused as exc:
                attempt.refused[lane.name] = str(exc)
                log.warning("model_refused", index=task.index, model=lane.name, error=str(exc))
            except (RowFailed, ImageProblem) as exc:
                raise self._fail(
                    task, str(exc), model=lane.name, attempts=attempt.count + 1
                ) from None
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
        self,
        task: Task,
        lane: ModelLane,
        plan: PromptPlan,
        source: PreparedSource | None,
        n: int,
    ) -> tuple[list[str], str | None, str | None]:
        """Submit on ``lane`` and wait for (result URLs, task id, actual prompt); the slot
        is held throughout."""
        assert self.client is not None
        s = self.settings
        model = lane.name
        started = time.monotonic()
        if model in SYNC_MODELS:
            assert source is not None
            res = await self.client.multimodal_edit(
                model, plan.sent, source.uri, n=1, seed=s.seed, negative_prompt=plan.negative
            )
            lane.stats.observe(time.monotonic() - started)
            lane.stats.completed += 1
            if not res.urls:
                raise ServerError("the answer carried no image", model=model)
            return list(res.urls), None, None
        if task.task_type == "t2i":
            size = "1328*1328" if model == "qwen-image" else s.size
            sub = await self.client.submit_text2image(
                model,
                plan.sent,
                negative_prompt=plan.negative,
                size=size,
                n=n,
                seed=s.seed,
                prompt_extend=s.prompt_extend,
            )
        else:
            assert source is not None
            sub = await self.client.submit_image_edit(
                model,
                plan.sent,
                source.uri,
                function="description_edit",
                strength=s.edit_strength,
                n=n,
                seed=s.seed,
            )
        # durable before anything else happens to it: a crash from here on can resume it
        await self.journal.write(
            "submitted",
            index=task.index,
            model=model,
            task_id=sub.task_id,
            n=n,
            prompt=task.prompt,
            prompt_sent=plan.sent,
        )
        state = await self._await_task(task.index, lane, sub.task_id, time.time())
        if getattr(state, "item_errors", None):
            log.info("partial_success", index=task.index, errors=state.item_errors[:4])
        actual = (getattr(state, "actual_prompts", None) or [None])[0]
        return list(state.urls), sub.task_id, actual

    async def _await_task(
        self, index: str, lane: ModelLane, task_id: str, submitted_at: float
    ) -> Any:
        """Poll until the task ends; SUCCEEDED returns its state, anything else raises."""
        assert self.client is not None
        polls = 0
        last = 0.0  # elapsed at the previous poll
        while True:
            elapsed = time.time() - submitted_at
            if elapsed > self.settings.task_timeout_s:
                try:
                    await self.client.cancel_task(task_id)
                except RunnerError:
                    pass
                await self._close_task(index, task_id, "timed out")
                raise ServerError(f"task {task_id} still running after {elapsed:.0f} s")
            await self.polls.wait(
                plan_poll_delay(lane, elapsed, polls, self.settings.poll_first_s),
                poll_urgency(lane, submitted_at, last),
            )
            polls += 1
            last = time.time() - submitted_at
            try:
                state = await self.client.fetch_task(task_id)
            except Retryable as exc:  # the task is still there: poll it again, never re-pay
                log.info("poll_failed", index=index, task_id=task_id, error=str(exc))
                continue
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

    async def _resume(self, task: Task, pending: PendingTask) -> list[Candidate]:
        """Fetch what a task submitted by an earlier run made, without paying for it again."""
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
            return []
        finally:
            self.pool.release(lane)
        try:
            actual = (getattr(state, "actual_prompts", None) or [None])[0]
            return await self._download(
                task, pending.model, list(state.urls), pending.task_id, actual
            )
        except (Fatal, DiskFull):
            raise
        except (RunnerError, ImageProblem) as exc:
            log.info("resume_failed", index=task.index, task_id=pending.task_id, error=str(exc))
            return []

    async def _download(
        self,
        task: Task,
        model: str,
        urls: list[str],
        task_id: str | None,
        actual: str | None,
    ) -> list[Candidate]:
        """Fetch and check every result image; at least one must be usable."""
        assert self.client is not None
        out: list[Candidate] = []
        last: Exception | None = None
        for url in urls:
            try:
                body = await self.client.download(url)
                jpeg, w, h = await self.cpu.run(result_to_jpeg, body, self.settings.jpeg_quality)
            except ImageProblem as exc:
                last = DownloadError(str(exc), model=model)
                continue
            except (DownloadError, ResultExpired) as exc:
                last = exc
                continue
            out.append(
                Candidate(
                    model=model, jpeg=jpeg, width=w, height=h, task_id=task_id, actual_prompt=actual
                )
            )
        if out:
            return out
        if task_id:
            await self._close_task(task.index, task_id, f"results unusable: {last}")
        if isinstance(last, ResultExpired):
            raise last
        raise DownloadError(f"no usable result image ({last})", model=model)

    # --- choosing and writing ------------------------------------------------
    async def _finish(
        self, task: Task, plan: PromptPlan, got: list[Candidate], attempts: int
    ) -> RowResult:
        """Score the candidates (when judging), write the best as imgs/<index>.jpg, journal."""
        path = self.imgs_dir / f"{task.index}.jpg"
        rel = str(path.relative_to(self.out_dir))
        files: list[tuple[Path, Candidate]] = []
        if len(got) > 1:
            folder = self.out_dir / "candidates" / task.index
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            for k, cand in enumerate(got):
                cpath = folder / f"{k}.jpg"
                await write_atomic(cpath, cand.jpeg)
                files.append((cpath, cand))
        else:
            await write_atomic(path, got[0].jpeg)
            files.append((path, got[0]))
        scores = await self._judge_all(task, [p for p, _ in files])
        chosen = pick(scores) if scores else None
        chosen = 0 if chosen is None else chosen
        best = files[chosen][1]
        if len(got) > 1:
            await write_atomic(path, best.jpeg)
        fields: dict[str, Any] = {
            "model": best.model,
            "task_id": best.task_id,
            "file": rel,
            "emulated": self.emulated,
            "width": best.width,
            "height": best.height,
            "bytes": len(best.jpeg),
            "prompt": task.prompt,
            "prompt_sent": plan.sent,
            "negative_prompt": plan.negative,
            "actual_prompt": best.actual_prompt,
        }
        if len(got) > 1:
            fields["candidates"] = [
                {
                    "file": str(p.relative_to(self.out_dir)),
                    "model": c.model,
                    "task_id": c.task_id,
                    "overall": scores[k].overall if scores else None,
                }
                for k, (p, c) in enumerate(files)
            ]
            fields["chosen"] = chosen
        if scores:
            fields["score"] = scores[chosen].overall
        await self.journal.write("done", index=task.index, **fields)
        return RowResult(
            index=task.index,
            task_type=task.task_type,
            status="done",
            model=best.model,
            attempts=attempts,
            file=rel,
            emulated=self.emulated,
            score=scores[chosen].overall if scores else None,
        )

    async def _judge_all(
        self, task: Task, paths: list[Path], identity: float | None = None
    ) -> list[Any]:
        """Judge scores for each file, journaled; [] when the judge is off or spent."""
        if self.judge is None or self._judge_off:
            return []
        if len(paths) == 1 and not self.settings.judge.enabled:
            return []
        scores: list[Any] = []
        for p in paths:
            try:
                sc = await self.judge.score(
                    task.task_type, task.prompt, p, source=task.ori_image, identity=identity
                )
            except (Fatal, DiskFull):
                raise
            except RunnerError as exc:  # budget spent and the like: stop judging, keep going
                self._judge_off = True
                log.warning("judge_off", reason=str(exc))
                return []
            scores.append(sc)
            await self.journal.write(
                "judged",
                index=task.index,
                file=str(p.relative_to(self.out_dir)),
                **sc.model_dump(mode="json"),
            )
        return scores
