"""The scheduler: every row to its backend under the quotas, every result to disk.

One coroutine per row. A row whose result is on disk, whole, and made from the same inputs
(``fingerprint``) is kept; anything else is made again. API rows first take what tasks an
earlier run paid for (``lifecycle``), then wait in the ``LanePool`` for a slot of one of
their models, submit, poll, give the slot back, download and write. Deepfake rows go to the
face-swap pool. Errors are handled by type (see ``errors``): retried, rerouted, the row
failed, or the whole run stopped.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from runner.backends.judge.scorer import pick
from runner.errors import (
    DashScopeError,
    DiskFull,
    Fatal,
    ModelNotServed,
    ModelRefused,
    RateLimited,
    ResultExpired,
    Retryable,
    RowFailed,
    RunnerError,
    SubmitUncertain,
)
from runner.images import ImageProblem, PreparedSource, prepare_source, result_to_jpeg
from runner.models import caps, source_url
from runner.outcomes import RowResult, RunSummary
from runner.prompts import PromptPlan, build_prompt
from runner.retry import backoff_delay
from runner.scheduling.cpu import CpuPool
from runner.scheduling.lanes import LanePool, ModelLane
from runner.scheduling.learned import LEARNED_NAME, apply_learned, load_learned, save_learned
from runner.scheduling.lifecycle import Candidate, Lifecycle, Request, Resubmit, ResultUnreachable
from runner.scheduling.polling import PollBudget, TaskWatcher
from runner.settings import Settings
from runner.store.files import write_atomic
from runner.store.journal import TASK_ID_TTL_S, Journal, JournalState, PendingTask, RowState
from runner.tasks import Task, TaskList

__all__ = ["RowResult", "RunSummary", "Scheduler"]

log = structlog.get_logger(__name__)


class Swapper(Protocol):
    """What the scheduler needs of the face-swap pool (``backends.faceswap.FaceSwapPool``)."""

    async def swap(self, index: str, ori: Path, target: Path) -> Any: ...


class Judge(Protocol):
    """What the scheduler needs of ``runner.backends.judge.scorer.Judge``."""

    async def score(
        self,
        task_type: str,
        prompt: str,
        image: Path,
        *,
        source: Path | None = None,
        identity: float | None = None,
    ) -> Any: ...


class LocalBackend(Protocol):
    """What the scheduler needs of the local diffusion workers (``local:<name>`` models):
    image bytes (PNG or JPEG) for each seed. Raises ``ServerError`` for a crashed worker
    (retried like any server fault) and ``ModelNotServed`` when the model cannot load."""

    async def generate(
        self,
        model: str,
        *,
        task_type: str,
        prompt: str,
        negative: str | None,
        source: Path | None,
        n: int,
        seeds: list[int],
    ) -> list[bytes]: ...


class Budget(Protocol):
    """What the scheduler needs of ``runner.cost.Budget``."""

    def reserve(self, model: str, images: int) -> bool: ...
    def refund(self, model: str, images: int) -> None: ...


class _Attempt:
    """A row's retry bookkeeping, shared by its requests."""

    def __init__(self) -> None:
        self.count = 0
        self.throttled = 0
        self.refused: dict[str, str] = {}


class _RowStop(Exception):
    """Internal: the row ends here with this result."""

    def __init__(self, result: RowResult) -> None:
        self.result = result


def jpeg_whole(path: Path) -> bool:
    """A cheap check that an output JPEG is whole: it starts with SOI and ends with EOI."""
    try:
        size = path.stat().st_size
        if size < 4:
            return False
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(size - 2)
            tail = f.read(2)
    except OSError:
        return False
    return head == b"\xff\xd8" and tail == b"\xff\xd9"


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        *,
        out_dir: Path,
        journal: Journal,
        client: Any,
        swapper: Swapper | None = None,
        swapper_problem: str | None = None,
        judge: Judge | None = None,
        emulated: bool,
        backend: str,
        on_row: Callable[[RowResult], None] | None = None,
        budget: Budget | None = None,
        local: LocalBackend | None = None,
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
        self.budget = budget
        self.local = local
        names = {m for models in settings.models.values() for m in models}
        self.lanes = {m: ModelLane(m, settings.quota(m)) for m in sorted(names)}
        self.pool = LanePool(self.lanes, total_cap=settings.concurrency)
        self.polls = PollBudget(settings.poll_qps)
        # result decoding/encoding, below the loop's priority (a source to prepare is on the
        # way to a slot: it stays on the default executor, at normal priority)
        self.cpu = CpuPool()
        self.life = (
            Lifecycle(
                client,
                journal,
                TaskWatcher(
                    client,
                    self.polls,
                    timeout_s=settings.task_timeout_s,
                    first_s=settings.poll_first_s,
                ),
                cpu=self.cpu.run,
                jpeg_quality=settings.jpeg_quality,
                backoff_max_s=settings.backoff_max_s,
            )
            if client is not None
            else None
        )
        # Rows between the service and the disk (download, decode, judge, write): bounded so
        # that finished rows never pile up in memory in front of a slow judge.
        self._finishing = asyncio.Semaphore(max(8, settings.concurrency))
        self.refused_models: dict[str, str] = {}  # set aside for the whole run
        self.redone: Counter[str] = Counter()  # why done rows were made again
        self.retries = 0
        self._stop_reason: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _max_slots(self, model: str) -> int:
        quota = self.settings.quota(model)
        limit = quota.max_in_flight if quota.learn else quota.in_flight
        return min(limit or self.settings.concurrency, self.settings.concurrency)

    # --- the run -------------------------------------------------------------
    async def run(
        self,
        tasklist: TaskList,
        state: JournalState,
        fps: dict[str, str] | None = None,
    ) -> RunSummary:
        started = time.monotonic()
        fps = fps or {}
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
        plans = await asyncio.to_thread(self._plan_rows, tasklist, state, fps)
        if self.redone:
            log.warning(
                "rows_made_again",
                count=sum(self.redone.values()),
                why=", ".join(f"{n} {why}" for why, n in self.redone.most_common()),
            )
        # Rows are fed per task type through a window of workers, not all started at once:
        # memory stays flat on any number of rows, and every type keeps enough rows waiting
        # for its models' slots (the lanes stay work-conserving across types).
        queues: dict[str, deque[tuple[Task, RowState, list[PendingTask]]]] = {}
        for task, (prior, keep) in zip(tasklist.tasks, plans, strict=True):
            queues.setdefault(task.task_type, deque()).append((task, prior, keep))
        finished: dict[str, RowResult] = {}
        for kind, queue in queues.items():
            for k in range(min(self._window(kind), len(queue))):
                self._tasks.append(
                    asyncio.create_task(self._feed(queue, fps, finished), name=f"rows-{kind}-{k}")
                )
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.life is not None:
            await self.life.drain()  # paid ids of cancelled rows reach the journal first
        for task in tasklist.tasks:
            if task.index in finished:
                results.append(finished[task.index])
            else:
                reason = self._stop_reason or "not finished"
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
            retries=self.retries + (self.life.retries if self.life is not None else 0),
            throttled=sum(lane.stats.throttled for lane in self.lanes.values()),
            polls=self.polls.polls,
            submits=sum(lane.stats.submits for lane in self.lanes.values()),
            stopped_reason=self._stop_reason,
            models=self.pool.views(),
        )

    def _window(self, kind: str) -> int:
        """How many rows of a type are under way at once: twice its models' slots (so a
        freed slot always finds a row ready), or twice the face-swap workers."""
        if kind == "deepfake":
            return 2 * int(getattr(self.swapper, "workers", 2) or 2) + 2
        return 2 * sum(self._max_slots(m) for m in self.settings.models.get(kind, [])) + 2

    async def _feed(
        self,
        queue: deque[tuple[Task, RowState, list[PendingTask]]],
        fps: dict[str, str],
        finished: dict[str, RowResult],
    ) -> None:
        while queue and self._stop_reason is None:
            task, prior, pending = queue.popleft()
            finished[task.index] = await self._row(task, prior, pending, fps.get(task.index))

    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop the run from outside (Ctrl-C, SIGTERM): rows end as "stopped", paid ids
        still in flight are journaled, and ``run`` returns the summary."""
        self._stop(reason, by_user=True)

    def _emit(self, result: RowResult) -> RowResult:
        if self.on_row is not None:
            self.on_row(result)
        return result

    def _stop(self, reason: str, *, by_user: bool = False) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            (log.warning if by_user else log.error)("run_stopped", reason=reason)
            current = asyncio.current_task()
            for t in self._tasks:
                if t is not current and not t.done():
                    t.cancel()

    # --- what a rerun keeps ----------------------------------------------------
    def _plan_rows(
        self, tasklist: TaskList, state: JournalState, fps: dict[str, str]
    ) -> list[tuple[RowState, list[PendingTask]]]:
        """For each row: what the journal knows, and the paid tasks still worth fetching.

        A done row is kept only when its image is whole, it was made from the same inputs,
        and it is not an emulator placeholder in a run with a key. A broken image is fetched
        again from its journaled task while the id lives; a changed row's old tasks are
        left alone (their images answer another prompt).
        """
        now = time.time()
        plans: list[tuple[RowState, list[PendingTask]]] = []
        for task in tasklist.tasks:
            prior = state.rows.get(task.index) or RowState(index=task.index)
            fp = fps.get(task.index)
            same = prior.fp is None or fp is None or prior.fp == fp
            if prior.fp is None and prior.result.get("prompt") not in (None, task.prompt):
                same = False  # a journal from before fingerprints: its prompt tells
            pending = [p for p in prior.pending if p.fp is None or fp is None or p.fp == fp]
            if prior.done:
                path = self.imgs_dir / f"{task.index}.jpg"
                why = None
                if not same:
                    why = "changed since they were made"
                elif prior.emulated and not self.emulated:
                    why = "emulator placeholders"
                elif not jpeg_whole(path):
                    why = "damaged or missing on disk"
                    pending = self._refetchable(prior, now)
                if why is None:
                    plans.append((prior, []))
                    continue
                self.redone[why] += 1
                prior = RowState(index=task.index)  # not done: make it (or fetch it) again
            plans.append((prior, pending))
        return plans

    @staticmethod
    def _refetchable(prior: RowState, now: float) -> list[PendingTask]:
        """The done row's own paid task, while the service still keeps it."""
        r = prior.result
        t = float(r.get("t") or 0.0)
        if now - t >= TASK_ID_TTL_S or not r.get("model"):
            return []
        if r.get("task_id"):
            return [PendingTask(task_id=r["task_id"], model=r["model"], submitted_at=t)]
        if r.get("url"):
            return [
                PendingTask(task_id="refetch", model=r["model"], submitted_at=t, urls=[r["url"]])
            ]
        return []

    # --- one row -------------------------------------------------------------
    async def _row(
        self, task: Task, prior: RowState, pending: list[PendingTask], fp: str | None
    ) -> RowResult:
        t0 = time.monotonic()
        path = self.imgs_dir / f"{task.index}.jpg"
        if prior.done:
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
                res = await self._swap_row(task, fp)
            else:
                res = await self._api_row(task, pending, fp)
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
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one row, visibly, not the run
            log.exception("row_error", index=task.index, error=repr(exc))
            res = RowResult(
                index=task.index,
                task_type=task.task_type,
                status="failed",
                reason=f"internal error: {type(exc).__name__}: {exc} (details in run.log)",
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
    async def _swap_row(self, task: Task, fp: str | None) -> RowResult:
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
            "fp": fp,
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
    async def _api_row(self, task: Task, pending: list[PendingTask], fp: str | None) -> RowResult:
        """Collect the row's candidates (paid tasks first), then pick and write one."""
        if self.life is None:
            raise self._fail(task, "no DashScope client")
        plan = build_prompt(task.task_type, task.prompt, templates=self.settings.prompt_templates)
        if plan.shortened:
            log.warning(
                "prompt_shortened", index=task.index, chars=len(task.prompt), sent=len(plan.sent)
            )
        want = self.settings.candidates.get(task.task_type, 1)
        got: list[Candidate] = []
        for paid in pending:
            got.extend(await self._resume(task, paid))
        attempt = _Attempt()
        # An edit's source is prepared before the row waits for a slot, so a slot never waits
        # on a decode; the rows window (``_window``) bounds how many wait prepared.
        source: list[PreparedSource] = []
        if task.task_type != "t2i" and len(got) < want:
            try:
                source.append(await self._prepare(task))
            except RowFailed as exc:
                raise self._fail(task, str(exc)) from None
        while len(got) < want:
            try:
                got.extend(
                    await self._generate_once(task, plan, want, len(got), source, attempt, fp)
                )
            except _RowStop:
                if not got:  # what was made so far still counts
                    raise
                break
        async with self._finishing:
            return await self._finish(task, plan, got[:want], attempt.count + 1, fp)

    def _models_for(self, task: Task, attempt: _Attempt) -> list[str]:
        return [
            m
            for m in self.settings.models[task.task_type]
            if m not in attempt.refused and m not in self.refused_models
        ]

    async def _generate_once(
        self,
        task: Task,
        plan: PromptPlan,
        want: int,
        have: int,
        source: list[PreparedSource],
        attempt: _Attempt,
        fp: str | None,
    ) -> list[Candidate]:
        """One paid request that yields images, retried and rerouted until it does (or
        cannot). Each failure is handled by its type; only a closed task is paid again."""
        while True:
            models = self._models_for(task, attempt)
            if not models:
                why = "; ".join(
                    f"{m}: {r}" for m, r in {**self.refused_models, **attempt.refused}.items()
                )
                raise self._fail(
                    task, f"every model refused the row ({why})", attempts=attempt.count
                )
            try:
                return await self._request(task, plan, want, have, source, fp, models)
            except Resubmit as exc:
                delay = self._after_error(task, exc.cause, attempt)
            except DashScopeError as exc:
                delay = self._after_error(task, exc, attempt)
            except ResultUnreachable as exc:
                raise self._fail(task, str(exc), attempts=attempt.count + 1) from None
            except ImageProblem as exc:
                raise self._fail(task, str(exc), attempts=attempt.count + 1) from None
            if delay:
                await asyncio.sleep(delay)

    async def _request(
        self,
        task: Task,
        plan: PromptPlan,
        want: int,
        have: int,
        source: list[PreparedSource],
        fp: str | None,
        models: list[str],
    ) -> list[Candidate]:
        assert self.life is not None
        async with self.pool.slot(models) as held:
            lane = held.lane
            if task.task_type != "t2i" and not source:
                source.append(await self._prepare(task))
            req = self._build(task, plan, lane.name, want - have, have, source, fp)
            if req.input_style == "local":  # this machine's GPUs: nothing to pay, poll or fetch
                return await self._local(task, req, held)
            await lane.submit_gate()
            if self.budget is not None and not self.budget.reserve(req.model, req.n):
                why = getattr(self.budget, "reason", lambda: "the --budget would be passed")()
                raise self._fail(task, f"not submitted: {why}")
            started = time.monotonic()
            try:
                paid = await self.life.submit(req)
            except BaseException as exc:
                if self.budget is not None:
                    self.budget.refund(req.model, req.n)
                if isinstance(exc, DashScopeError) and not exc.model:
                    exc.model = lane.name  # what to set aside or learn from
                if isinstance(exc, RateLimited):  # the quota said no: the lane learns it
                    lane.on_throttled()
                raise
            if paid.sync:
                lane.record_sync(time.monotonic() - started)
                held.release()
                urls, actual = paid.urls, None
            else:
                state = await self.life.wait(task.index, lane, paid, resumed=False)
                held.release()
                urls = list(state.urls)
                actual = (getattr(state, "actual_prompts", None) or [None])[0]
        return await self.life.fetch(task.index, paid, urls, actual)

    async def _local(self, task: Task, req: Request, held: Any) -> list[Candidate]:
        """A local diffusion model (``local:<name>``): the worker's images, checked and
        re-encoded like downloaded ones."""
        if self.local is None:
            raise ModelNotServed(
                f"{req.model}: no local generation backend is configured", model=req.model
            )
        base = req.seed if req.seed is not None else secrets.randbelow(2**31 - 64)
        started = time.monotonic()
        images = await self.local.generate(
            req.model,
            task_type=task.task_type,
            prompt=task.prompt,  # the model family adds its own frame (runner.backends.local)
            negative=None,
            source=task.ori_image,
            n=req.n,
            seeds=[base + k for k in range(req.n)],
        )
        held.lane.record_sync(time.monotonic() - started)
        held.release()
        out: list[Candidate] = []
        for data in images:
            jpeg, w, h = await self.cpu.run(result_to_jpeg, data, self.settings.jpeg_quality)
            out.append(Candidate(model=req.model, jpeg=jpeg, width=w, height=h))
        return out

    def _build(
        self,
        task: Task,
        plan: PromptPlan,
        model: str,
        wanted: int,
        have: int,
        source: list[PreparedSource],
        fp: str | None,
    ) -> Request:
        s = self.settings
        cap = caps(model)
        n = max(1, min(wanted, cap.n_max))
        # candidates of one row get different seeds: the same seed gives the same picture
        seed = None if s.seed is None else s.seed + have
        size = cap.size_for(task.prompt, s.size) if task.task_type == "t2i" else None
        return Request(
            index=task.index,
            model=model,
            prompt=plan.sent,
            n=n,
            seed=seed,
            negative=plan.negative,
            source=source[0].uri if source else None,
            size=size,
            fp=fp,
            sync=cap.sync,
            strength=s.edit_strength,
            prompt_extend=s.prompt_extend,
            input_style=cap.input_style,
        )

    def _after_error(self, task: Task, exc: DashScopeError, attempt: _Attempt) -> float:
        """Decide what a failed request means for the row: the pause before the next try,
        or ``_RowStop``. Fatal errors propagate (the run stops)."""
        model = exc.model or ""
        if isinstance(exc, Fatal):
            raise exc
        if isinstance(exc, SubmitUncertain):  # it may be paid for: another submit may pay twice
            raise self._fail(
                task,
                f"{exc}; the service may have accepted the task, so it was not sent again "
                "(run again to retry the row)",
                model=model or None,
                attempts=attempt.count + 1,
            )
        if isinstance(exc, RateLimited):
            attempt.throttled += 1
            self.retries += 1
            if attempt.throttled > self.settings.max_throttled:
                raise self._fail(task, f"throttled {attempt.throttled} times: {exc}")
            return backoff_delay(
                min(attempt.throttled, 6), exc.retry_after, max_s=self.settings.backoff_max_s
            )
        if isinstance(exc, Retryable | ResultExpired):
            attempt.count += 1
            self.retries += 1
            if attempt.count >= self.settings.max_attempts:
                raise self._fail(
                    task, f"gave up after {attempt.count} attempts: {exc}", attempts=attempt.count
                )
            log.info("row_retry", index=task.index, model=model, error=str(exc))
            retry_after = getattr(exc, "retry_after", None)
            return backoff_delay(attempt.count, retry_after, max_s=self.settings.backoff_max_s)
        if isinstance(exc, ModelNotServed):  # not served here at all: no later row tries it
            if model not in self.refused_models:
                self.refused_models[model] = str(exc)
                log.warning("model_set_aside", model=model, error=str(exc))
            return 0.0
        if isinstance(exc, ModelRefused):  # this row's content: another model may take it
            attempt.refused[model] = str(exc)
            log.warning("model_refused_row", index=task.index, model=model, error=str(exc))
            return 0.0
        raise self._fail(task, str(exc), model=model or None, attempts=attempt.count + 1)

    async def _prepare(self, task: Task) -> PreparedSource:
        assert task.ori_image is not None
        url = None
        if self.settings.image_base_url:
            url = source_url(self.settings.image_base_url, task.ori_name)
        try:
            src = await asyncio.to_thread(
                prepare_source, task.ori_image, url=url, quality=self.settings.jpeg_quality
            )
        except ImageProblem as exc:
            raise RowFailed(f"ori_image: {exc}") from None
        if src.note:
            log.info("source_resized", index=task.index, note=src.note)
        return src

    async def _resume(self, task: Task, paid: PendingTask) -> list[Candidate]:
        """Fetch what a request paid for by an earlier run made, without paying again."""
        assert self.life is not None
        log.info("task_resumed", index=task.index, task_id=paid.task_id)
        try:
            if paid.sync:
                return await self.life.fetch(task.index, paid, paid.urls, None)
            if paid.model in self.lanes:
                async with self.pool.slot([paid.model]) as held:
                    state = await self.life.wait(task.index, held.lane, paid, resumed=True)
            else:  # a model no longer listed: its task is still worth fetching
                lane = ModelLane(paid.model, self.settings.quota(paid.model))
                state = await self.life.wait(task.index, lane, paid, resumed=True)
            actual = (getattr(state, "actual_prompts", None) or [None])[0]
            return await self.life.fetch(task.index, paid, list(state.urls), actual)
        except ResultUnreachable as exc:
            raise self._fail(task, str(exc)) from None
        except Resubmit as exc:
            log.info("resume_closed", index=task.index, task_id=paid.task_id, why=str(exc))
            return []

    # --- choosing and writing ------------------------------------------------
    async def _finish(
        self, task: Task, plan: PromptPlan, got: list[Candidate], attempts: int, fp: str | None
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
        # a local model's image is real even when the API side is the emulator
        emulated = self.emulated and not best.model.startswith("local:")
        fields: dict[str, Any] = {
            "model": best.model,
            "task_id": best.task_id,
            "url": best.url,
            "file": rel,
            "emulated": emulated,
            "fp": fp,
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
            emulated=emulated,
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
