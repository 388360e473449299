"""An API row's steps, up to its candidates: paid tasks of an earlier run first, then a
slot of one of its models, the request, the wait, the download (``lifecycle``). After a
failed request ``runner.policy`` decides: pause and send again, take the next model, set the
model aside for the run, fail the row, or stop the run; this module only carries it out.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from runner.errors import (
    DashScopeError,
    ModelNotServed,
    RateLimited,
    Resubmit,
    ResultUnreachable,
    RowFailed,
    ServerError,
    Step,
    Uncertain,
)
from runner.images import ImageProblem, PreparedSource, prepare_source, result_to_jpeg
from runner.logs import NOTICES
from runner.models import caps, source_url
from runner.outcomes import RowResult
from runner.policy import Action, RetryPolicy, Tries
from runner.prompts import CandidatePrompts
from runner.scheduling.cpu import CpuPool
from runner.scheduling.finishing import Finisher, RowStop, bad_input, failed
from runner.scheduling.lanes import LanePool, Slot
from runner.scheduling.lifecycle import Candidate, Lifecycle, Request
from runner.scheduling.model_lane import ModelLane
from runner.settings import Settings
from runner.store.ledger import BudgetReached, PaidRequest
from runner.tasks import Task

if TYPE_CHECKING:
    from runner.backends.local.pool import LocalPool

__all__ = ["RowSteps", "RowWork"]

log = structlog.get_logger(__name__)

READY_SOURCES = 8  # prepared edit sources waiting for a slot: a few seconds of submits


@dataclass(eq=False)
class RowWork:
    """One API row under way: what it asks for and what it has been through."""

    task: Task
    prompts: CandidatePrompts
    want: int  # candidates
    fp: str | None
    source: list[PreparedSource] = field(default_factory=list)  # the edit's, once prepared
    tries: Tries = field(default_factory=Tries)
    refused: dict[str, str] = field(default_factory=dict)  # model -> why it refused this row
    waiting_ready: bool = False  # holds a ``RowSteps.ready`` place (prepared, no slot yet)


@dataclass(eq=False)
class RowSteps:
    settings: Settings
    life: Lifecycle
    pool: LanePool
    cpu: CpuPool
    finisher: Finisher
    policy: RetryPolicy
    local: LocalPool | None = None  # the ``local:<name>`` models' workers
    refused_models: dict[str, str] = field(default_factory=dict)  # set aside for the run
    retries: int = 0
    # Rows between the service and the disk (download, decode, judge, write): bounded so
    # that finished rows never pile up in memory in front of a slow judge.
    finishing: asyncio.Semaphore = field(init=False)
    # Edit rows whose source is prepared (decoded, scaled, encoded: megabytes each) while they
    # wait for a slot. A slot then never waits on a decode, yet a long task list does not
    # prepare every source of its rows window at once (memory, and CPU the results need).
    ready: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.finishing = asyncio.Semaphore(max(8, self.settings.concurrency))
        self.ready = asyncio.Semaphore(READY_SOURCES)

    async def api_row(self, task: Task, pending: list[PaidRequest], fp: str | None) -> RowResult:
        """Collect the row's candidates (paid tasks first), one per prompt variant, then pick
        and write one."""
        prompts = CandidatePrompts(
            task.task_type, task.prompt, self.settings.variants(task.task_type)
        )
        row = RowWork(task, prompts, prompts.want, fp)
        got: list[Candidate] = []
        for paid in pending:
            got.extend(await self._resume(task, paid))
        try:
            await self._collect(row, got)
        finally:
            self._leave_ready(row)
            row.source.clear()  # its megabytes are not needed to pick, judge and write
        async with self.finishing:
            return await self.finisher.finish(
                task, prompts, got[: row.want], row.tries.count + 1, fp
            )

    async def _collect(self, row: RowWork, got: list[Candidate]) -> None:
        # An edit's source is prepared before the row waits for a slot, so a slot never waits
        # on a decode; ``ready`` bounds how many rows wait prepared.
        if row.task.task_type != "t2i" and len(got) < row.want:
            await self.ready.acquire()
            row.waiting_ready = True
            try:
                row.source.append(await self._prepare(row.task))
            except RowFailed as exc:  # the source is not a usable image
                raise bad_input(row.task, str(exc)) from None
        while len(got) < row.want:
            try:
                got.extend(await self._generate(row, len(got)))
            except RowStop as stop:
                if not got:  # what was made so far still counts
                    raise
                # the row ends with what it has, and says why it has fewer (the budget: a
                # BudgetReached became this stop)
                budget = isinstance(stop.__context__, BudgetReached)
                why = "budget reached" if budget else stop.result.reason
                self.finisher.short[row.task.index] = (
                    f"{len(got)} of {row.want} candidates: {why}",
                    row.want - len(got) if budget else 0,
                )
                break

    def _leave_ready(self, row: RowWork) -> None:
        if row.waiting_ready:
            row.waiting_ready = False
            self.ready.release()

    def _models_for(self, row: RowWork) -> list[str]:
        return [
            m
            for m in self.settings.models[row.task.task_type]
            if m not in row.refused and m not in self.refused_models
        ]

    async def _generate(self, row: RowWork, have: int) -> list[Candidate]:
        """One paid request that yields images, sent again or elsewhere until it does (or
        cannot), as the policy decides. Only a closed request is paid for again."""
        while True:
            models = self._models_for(row)
            if not models:
                why = "; ".join(
                    f"{m}: {r}" for m, r in {**self.refused_models, **row.refused}.items()
                )
                # refused for its content by every model it names (none only set aside for
                # the run, which never saw it): bad input; otherwise a rerun may yet help
                every = set(self.settings.models[row.task.task_type])
                stop = bad_input if row.refused and every <= set(row.refused) else failed
                raise stop(
                    row.task, f"every model refused the row ({why})", attempts=row.tries.count
                )
            try:
                return await self._request(row, have, models)
            except Resubmit as exc:  # the request is closed: decided as a new one
                delay = self._after_error(row, exc.cause)
            except Uncertain as exc:  # it may have been billed: paid again only if allowed
                delay = self._after_error(row, exc)
                if exc.paid is not None:
                    await self.life.repay(exc.paid)
            except (DashScopeError, ResultUnreachable, ImageProblem) as exc:
                delay = self._after_error(row, exc)
            if delay:
                await asyncio.sleep(delay)

    def _after_error(self, row: RowWork, exc: Exception) -> float:
        """Carry out the policy's decision: the pause before the next try, or raise."""
        count, total = row.tries.count, row.tries.total
        decision = self.policy.decide(exc, row.tries)
        self.retries += row.tries.total - total
        model = decision.model or ""
        if decision.action in (Action.SET_ASIDE, Action.NEXT_MODEL) and not model:
            # no model to leave: trying again would send the same request at once
            raise failed(row.task, decision.reason or str(exc), attempts=row.tries.count + 1)
        match decision.action:
            case Action.STOP:
                raise exc  # Fatal: the scheduler stops the run
            case Action.FAIL:
                kw: dict[str, Any] = {
                    "model": decision.model,
                    "request_id": getattr(exc, "request_id", None),  # what support asks for
                }
                if decision.attempts is not None:
                    kw["attempts"] = decision.attempts
                raise failed(row.task, decision.reason, **kw) from None
            case Action.SET_ASIDE if model not in self.refused_models:
                self.refused_models[model] = decision.reason
                log.info("model_set_aside", model=model, error=decision.reason)
                NOTICES.warning(
                    f"{model} set aside for this run: {decision.reason}"
                )
            case Action.NEXT_MODEL:
                row.refused[model] = decision.reason
                log.info(  # the row's reason names it if no model takes the row
                    "model_refused_row", index=row.task.index, model=model, error=decision.reason
                )
            case Action.RESUBMIT if row.tries.count > count:  # 429s are the lanes' to log
                step = getattr(exc, "step", None)
                log.info("row_retry", index=row.task.index, model=model, step=step, error=str(exc))
        return decision.delay_s

    async def _request(self, row: RowWork, have: int, models: list[str]) -> list[Candidate]:
        task = row.task
        async with self.pool.slot(models) as held:
            lane = held.lane
            self._leave_ready(row)  # the next row may prepare its source
            if task.task_type != "t2i" and not row.source:
                row.source.append(await self._prepare(task))
            req = self._build(row, lane.name, have)
            if req.input_style == "local":  # this machine's GPUs: nothing to pay, poll or fetch
                return await self._local(task, req, held)
            await lane.submit_gate()
            started = time.monotonic()
            try:
                paid = await self.life.submit(req)
            except BudgetReached as exc:
                raise failed(task, f"not submitted: {exc}") from None
            except Uncertain as exc:
                if exc.paid is None or exc.paid.sync:
                    raise
                paid = await self.life.reconcile(exc.paid, lane)  # found, or Uncertain again
            except DashScopeError as exc:
                if not exc.model:
                    exc.model = lane.name  # what to set aside or learn from
                if isinstance(exc, RateLimited):  # the quota said no: the lane learns it
                    lane.on_throttled()
                raise
            if paid.sync:
                lane.record_sync(time.monotonic() - started)
                held.release()
                urls, actual = paid.urls, None
            else:
                state = await self.life.wait(lane, paid)
                held.release()
                urls = list(state.urls)
                actual = (getattr(state, "actual_prompts", None) or [None])[0]
        return await self.life.fetch(paid, urls, actual)

    async def _local(self, task: Task, req: Request, held: Slot) -> list[Candidate]:
        """A local diffusion model (``local:<name>``): the worker's images, checked and
        re-encoded like downloaded ones."""
        if self.local is None:
            raise ModelNotServed(
                f"{req.model}: no local generation backend is configured",
                model=req.model,
                step=Step.LOCAL,
            )
        base = req.seed if req.seed is not None else secrets.randbelow(2**31 - 64)
        started = time.monotonic()
        try:
            images = await self.local.generate(
                req.model,
                task_type=task.task_type,
                prompt=task.prompt,  # the model family adds its own frame (backends.local)
                negative=None,
                source=task.ori_image,
                n=req.n,
                seeds=[base + k for k in range(req.n)],
            )
        except DashScopeError as exc:
            raise exc.at(Step.LOCAL) from None
        held.lane.record_sync(time.monotonic() - started)
        held.release()
        out: list[Candidate] = []
        for data in images:
            jpeg, w, h = await self.cpu.run(result_to_jpeg, data, self.settings.jpeg_quality)
            out.append(Candidate(model=req.model, jpeg=jpeg, width=w, height=h))
        return out

    def _build(self, row: RowWork, model: str, have: int) -> Request:
        """The request for candidates ``have`` onwards: the variant at that position, as many
        images as the model takes in one request of the candidates that share it."""
        s, task = self.settings, row.task
        cap = caps(model)
        n = max(1, min(row.prompts.run_length(have), row.want - have, cap.n_max))
        sent = row.prompts.send(have, n, cap.prompt_limit)
        for change in sent.changes:
            log.warning("prompt_changed", index=task.index, variant=sent.variant, why=change)
        # candidates of one row get different seeds: the same seed gives the same picture
        seed = None if s.seed is None else s.seed + have
        size = cap.size_for(task.prompt, s.size) if task.task_type == "t2i" else None
        return Request(
            index=task.index,
            model=model,
            prompt=sent.sent,
            n=n,
            seed=seed,
            negative=sent.negative,
            source=row.source[0].uri if row.source else None,
            size=size,
            fp=row.fp,
            sync=cap.sync,
            strength=s.edit_strength,
            prompt_extend=sent.extend,
            input_style=cap.input_style,
        )

    async def _prepare(self, task: Task) -> PreparedSource:
        assert task.ori_image is not None
        url = None
        if self.settings.image_base_url:
            url = source_url(self.settings.image_base_url, task.ori_name)
        try:
            # on the CPU pool: below the loop's priority, and no more threads than cores
            src = await self.cpu.run(
                prepare_source, task.ori_image, url=url, quality=self.settings.jpeg_quality
            )
        except ImageProblem as exc:
            raise RowFailed(f"ori_image: {exc}") from None
        if src.note:
            log.info("source_resized", index=task.index, note=src.note)
        return src

    async def _resume(self, task: Task, paid: PaidRequest) -> list[Candidate]:
        """What a request of an earlier run paid for, fetched without paying again; a request
        whose answer that run lost is looked for first (and paid again only when the user
        says so). Nothing, when the service says the request can give nothing."""
        log.info("task_resumed", index=task.index, task_id=paid.task_id, phase=paid.phase)
        try:
            if paid.uncertain:
                if paid.sync:
                    raise self.life.not_found(paid, "the run that sent it ended first")
                try:
                    paid = await self.life.reconcile(paid, self._lane_for(paid.model))
                except ServerError:  # the service never took it: nothing to fetch
                    return []
            if paid.sync:
                return await self.life.fetch(paid, paid.urls, None)
            if paid.model in self.pool.lanes:
                async with self.pool.slot([paid.model]) as held:
                    state = await self.life.wait(held.lane, paid)
            else:  # a model no longer listed: its task is still worth fetching
                state = await self.life.wait(self._lane_for(paid.model), paid)
            actual = (getattr(state, "actual_prompts", None) or [None])[0]
            return await self.life.fetch(paid, list(state.urls), actual)
        except Uncertain as exc:
            if not self.policy.repay_uncertain:
                reason = self.policy.decide(exc, Tries()).reason
                raise failed(task, reason) from None
            await self.life.repay(paid)
            return []
        except ResultUnreachable as exc:
            raise failed(task, str(exc)) from None
        except Resubmit as exc:
            log.info("resume_closed", index=task.index, task_id=paid.task_id, why=str(exc))
            return []

    def _lane_for(self, model: str) -> ModelLane:
        lane = self.pool.lanes.get(model)
        return lane if lane is not None else ModelLane(model, self.settings.quota(model))
