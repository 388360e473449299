"""One paid request, start to end: send -> (reconcile) -> poll -> download -> close.

The ledger (runner.store.ledger) journals each step of a request, so a request the service
took is paid for once and its image is never lost; this module carries the steps out over
the client, for a fresh request and for one an earlier run left open alike:

* The send is one shielded step: the ``sending`` record is on disk before the request
  leaves, its answer (a task id, a sync call's result URLs), a refusal or a lost answer is
  journaled before the step returns; a Ctrl-C meanwhile waits for it (``drain``).
* A lost answer (``Uncertain``) is never a blind resend. An async submit is looked for at
  the service (``reconcile``: its task list around the send, each unknown task's prompt read
  back) and adopted when found; otherwise the row is told the request may have been billed.
* Retries belong to the step that failed: a poll error polls again (``TaskWatcher``), a
  download error downloads again (an async task's refused URLs are renewed by asking the task
  again), as ``runner.policy`` decides; errors leave here stamped with their ``Step``.
  A task is closed (and a new request allowed) only when the service says it can give
  nothing: FAILED (not billed), CANCELED, UNKNOWN (gone). One still running at its deadline
  is kept (``StillRunning``): it bills when it ends, and the next run polls it.
* A result that cannot be downloaded now keeps its request open: the row fails for this run
  and the next run fetches it without paying again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol, TypeVar

import structlog
from pydantic import BaseModel

from runner.backends.dashscope.client import send_image_request
from runner.errors import (
    DashScopeError,
    DownloadError,
    Fatal,
    Resubmit,
    ResultExpired,
    ResultUnreachable,
    Retryable,
    RunnerError,
    ServerError,
    Step,
    Uncertain,
    WrongRoute,
    classify,
)
from runner.images import ImageProblem, result_to_jpeg
from runner.logs import NOTICES, scrub_text
from runner.models import ModelCaps, caps
from runner.policy import Action, RetryPolicy, Tries
from runner.scheduling.polling import PollBudget, TaskWatcher
from runner.store.ledger import Ledger, PaidRequest

__all__ = ["Candidate", "Lifecycle", "Request", "Resubmit", "ResultUnreachable"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

# A sync call's result URLs live 24 h; a refusal before this age is a failed download, not
# an expiry (it is retried, and kept for the next run, never paid again).
URL_LIFE_S = 23 * 3600
# How far around a lost submit the service's task list is read (clock skew, queueing).
RECONCILE_MARGIN_S = 600.0
# How long a lost submit is looked for while tasks that may be it are still running.
RECONCILE_WAIT_S = 300.0
# What ``_prompt_of`` says of a task that ended without billing anything.
UNBILLED = "\x00unbilled"
# The pause between the two task listings that must both lack a lost submit before it is
# taken as never accepted (the list may lag the submit a little).
RECONCILE_SETTLE_S = 3.0


class Candidate(BaseModel):
    """One generated image, checked and re-encoded, before it is chosen or not."""

    model: str
    jpeg: bytes
    width: int
    height: int
    task_id: str | None = None
    url: str | None = None  # a sync call's result URL (no task id to ask again)
    actual_prompt: str | None = None


@dataclass
class Request:
    """What one paid request asks for; the scheduler fills it, the lifecycle sends it."""

    index: str
    model: str
    prompt: str
    n: int = 1
    seed: int | None = None
    negative: str | None = None
    source: str | None = None  # an edit's source image: URL or data: URI
    size: str | None = None  # t2i size "W*H"
    fp: str | None = None  # the row's fingerprint, kept with the paid id
    sync: bool = False  # sync multimodal call (no task id)
    strength: float = 0.5
    prompt_extend: bool = True
    # how the model takes its input (runner.models): prompt (t2i), function
    # (wanx2.1-imageedit), images (wan2.5-i2i-preview), messages (the sync qwen-image-edit)
    input_style: str = "prompt"


class Client(Protocol):
    async def submit_text2image(self, model: str, prompt: str, **kw: Any) -> Any: ...
    async def submit_image_edit(self, model: str, prompt: str, image: str, **kw: Any) -> Any: ...
    async def submit_images_edit(
        self, model: str, prompt: str, images: list[str], **kw: Any
    ) -> Any: ...
    async def fetch_task(self, task_id: str) -> Any: ...
    async def list_tasks(self, model: str, start: float, end: float, **kw: Any) -> Any: ...
    async def multimodal(self, model: str, prompt: str, images: list[str], **kw: Any) -> Any: ...
    async def submit_generation(
        self, model: str, prompt: str, images: list[str], **kw: Any
    ) -> Any: ...
    async def download(self, url: str) -> bytes: ...


CpuRun = Callable[..., Awaitable[Any]]


@dataclass(eq=False)
class Lifecycle:
    client: Client
    ledger: Ledger
    watcher: TaskWatcher
    _: KW_ONLY
    cpu: CpuRun
    jpeg_quality: int = 95
    backoff_max_s: float = 8.0  # the default policy's, when none is given
    policy: RetryPolicy | None = None
    retries: int = 0  # download rounds and URL renewals (no payment)
    # model -> sync: the route the service took where it refused the table's (``_send``)
    routes: dict[str, bool] = field(default_factory=dict)
    _critical: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)
    _answered: dict[str, float] = field(default_factory=dict, repr=False)  # key -> monotonic
    _started: dict[str, float] = field(default_factory=dict, repr=False)  # key -> monotonic

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = RetryPolicy(backoff_max_s=self.backoff_max_s)

    @property
    def polls(self) -> PollBudget:
        return self.watcher.budget

    # --- the paid step -------------------------------------------------------
    async def _shielded(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` to its end even if the caller is cancelled (``drain`` waits for it)."""
        task = asyncio.ensure_future(coro)
        self._critical.add(task)
        task.add_done_callback(self._settled)
        return await asyncio.shield(task)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        """A paid step ended; its error is read here too, for a caller cancelled meanwhile
        no longer reads it (the records it wrote say what happened)."""
        self._critical.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("paid_step_failed", error=repr(task.exception()))

    async def drain(self, timeout_s: float) -> None:
        """Wait for paid steps still in flight to be journaled (on a stop or Ctrl-C): as long
        as the slowest may take (a sync call's timeout). Cancelled, it leaves them: each is
        then a ``sending`` record without an answer, which the next run treats as uncertain."""
        pending = [t for t in self._critical if not t.done()]
        if pending:
            calls = f"{len(pending)} paid call{'s' if len(pending) > 1 else ''}"
            NOTICES.warning(
                f"waiting for {calls} to answer, at most {timeout_s:.0f} s "
                "(Ctrl-C again to leave them: the next run treats them as uncertain)"
            )
            await asyncio.wait(pending, timeout=timeout_s)

    async def submit(self, req: Request) -> PaidRequest:
        """Send the request; return its paid request, accepted (a task id) or answered (a
        sync call's URLs). A refusal comes back as a typed error stamped with its step, a
        lost answer as ``Uncertain`` (``exc.paid`` names the request), a budget that does
        not allow it as ``BudgetReached`` (nothing sent)."""
        _take_route(req, self.routes.get(req.model))
        try:
            return await self._shielded(self._submit_and_journal(req))
        except DashScopeError as exc:
            raise exc.at(Step.SYNC_CALL if req.sync else Step.SUBMIT) from None

    async def _send(self, req: Request) -> Any:
        """The one request, on the model's route, in the form it takes its input.

        When the service answers that the route is the wrong one for the model (403 "does
        not support synchronous/asynchronous calls": refused, not billed), the model's
        later requests in this run go to its other documented route (runner.models;
        ``submit`` applies it) and this one is answered a ``ServerError``, so that the row
        sends again at once. A model refused on every route it has raises ``WrongRoute``
        (set aside, loudly: its route in the table is wrong)."""
        try:
            return await send_image_request(
                self.client,
                req.model,
                req.prompt,
                sync=req.sync,
                input_style=req.input_style,
                source=req.source,
                size=req.size,
                n=req.n,
                seed=req.seed,
                negative=req.negative,
                strength=req.strength,
                prompt_extend=req.prompt_extend,
            )
        except WrongRoute as exc:
            other = _route(req.model, not req.sync)
            # refused on the route the service took before: a route the table calls wrong
            if other is None or self.routes.get(req.model) == req.sync:
                raise WrongRoute(
                    f"{req.model} refused its {_route_name(req.sync)} route and has no other "
                    f"that works ({exc}); its route in runner/models.py is wrong",
                    code=exc.code,
                    status=exc.status,
                    request_id=exc.request_id,
                    model=req.model,
                ) from None
            if req.model not in self.routes:  # calls sent before the fix answer the same
                self.routes[req.model] = other.sync
                log.warning(
                    "route_fixed",
                    model=req.model,
                    refused=_route_name(req.sync),
                    now=_route_name(other.sync),
                    error=str(exc),
                )
            raise ServerError(
                f"{req.model} is not served {_route_name(req.sync)} here ({exc}): "
                f"sent {_route_name(other.sync)} from now on",
                model=req.model,
            ) from None

    async def _submit_and_journal(self, req: Request) -> PaidRequest:
        paid = await self.ledger.send(
            req.index, req.model, n=req.n, fp=req.fp, sync=req.sync, prompt=req.prompt
        )
        try:
            answer = await self._send(req)
        except Uncertain as exc:
            await self.ledger.uncertain(paid, str(exc))
            exc.paid = paid
            raise
        except DashScopeError as exc:  # the service answered no (or nothing left)
            await self.ledger.refused(paid, str(exc))
            raise
        except Exception as exc:  # the request could not be built: it never left
            await self.ledger.refused(paid, f"not sent: {exc}")
            raise
        now = time.monotonic()
        if req.sync:
            urls = list(answer.urls)
            await self.ledger.answered(paid, urls)
            self._answered[paid.key] = now
            if len(urls) > req.n:
                await self._too_many(paid, len(urls))
        else:
            await self.ledger.accepted(paid, answer.task_id)
            self._started[paid.key] = now
        return paid

    async def _too_many(self, paid: PaidRequest, got: int) -> None:
        """More images than asked: billed all the same, refused as a server error."""
        await self.ledger.close(paid, f"answered {got} images for {paid.n} asked", images=got)
        raise Resubmit(
            "the service answered more images than asked",
            ServerError(f"{paid.model} answered {got} images for {paid.n} asked", model=paid.model),
        )

    # --- a lost submit -------------------------------------------------------
    async def reconcile(self, paid: PaidRequest, lane: Any) -> PaidRequest:
        """Find a submit whose answer was lost among the service's tasks, and adopt it.

        The account's tasks of the model around the send are listed (on the task-query
        budget); each task no journal record names is asked for its ``orig_prompt``, and the
        first whose prompt is the one sent is adopted as this request's task. Tasks that may
        be it but have not ended (the prompt comes with the results) are asked again for a
        while. Two listings ``RECONCILE_SETTLE_S`` apart with no task that could be it mean
        the service never took the request: it is journaled as not accepted and a
        ``ServerError`` lets the row send it again for free. Anything else (a task whose
        prompt cannot be read, one that never ends, a list that cannot be read) is
        ``Uncertain``: the request may have been billed.
        """
        if paid.sync or not paid.prompt:
            raise self.not_found(paid, "a sync call cannot be looked up")
        # around the send, on the journal's clock; the window widens with the time waited
        start = paid.sent_at - RECONCILE_MARGIN_S
        began = time.monotonic()
        judged: set[str] = set()  # tasks whose prompt was read
        waiting: set[str] = set()  # not ended: their prompt is not told yet
        unreadable: set[str] = set()  # ended, prompt not told: could be this request
        listings = 0
        while True:
            end = paid.sent_at + RECONCILE_MARGIN_S + (time.monotonic() - began)
            try:
                found = await self._listed(paid.model, start, end)
            except DashScopeError as exc:
                if isinstance(exc, Fatal):
                    raise
                raise self.not_found(paid, f"the task list could not be read ({exc})") from None
            listings += 1
            for task_id in found:
                if task_id in judged or self.ledger.claimed(task_id):
                    continue
                told = await self._prompt_of(task_id)
                if told is None:
                    waiting.add(task_id)
                    continue
                judged.add(task_id)
                waiting.discard(task_id)
                if told == UNBILLED:  # not a request that may have been billed
                    continue
                if not told:
                    unreadable.add(task_id)
                elif _same_prompt(told, paid.prompt) and not self.ledger.claimed(task_id):
                    await self.ledger.accepted(paid, task_id, adopted=True)
                    self._started[paid.key] = time.monotonic()
                    log.info(  # found, nothing for the user to do
                        "lost_submit_found", index=paid.index, task_id=task_id, model=paid.model
                    )
                    return paid
            # tasks another request has claimed meanwhile (its answer came) are not this one
            waiting = {t for t in waiting if not self.ledger.claimed(t)}
            unreadable = {t for t in unreadable if not self.ledger.claimed(t)}
            if waiting and time.monotonic() - began < RECONCILE_WAIT_S:
                await self.polls.wait(lane.stats.latency.quantile(0.5) or 2.0)
                continue
            if waiting or unreadable:
                why = f"{len(waiting | unreadable)} task(s) that may be it cannot be told apart"
                raise self.not_found(paid, why)
            if listings < 2:  # once more a little later: the list may lag the submit
                await asyncio.sleep(RECONCILE_SETTLE_S)
                continue
            await self.ledger.refused(paid, "no such task in the service's task list")
            log.info("lost_submit_absent", index=paid.index, model=paid.model)
            raise ServerError(
                f"{paid.model}: the submit's answer was lost and the service has no such task; "
                "sent again",
                model=paid.model,
                step=Step.SUBMIT,
            )

    async def _listed(self, model: str, start: float, end: float) -> list[str]:
        """Every task id of ``model`` in the window, page by page, on the poll budget."""
        ids: list[str] = []
        page = 1
        while True:
            await self.polls.wait(0.0)
            tasks, total = await self.client.list_tasks(model, start, end, page_no=page)
            ids += [t.task_id for t in tasks if t.model in (None, model)]
            if not tasks or total is None or len(ids) >= total or page >= 20:
                return ids
            page += 1

    async def _prompt_of(self, task_id: str) -> str | None:
        """The prompt a task was given, once it has ended (None while it runs; ``UNBILLED``
        for a task that FAILED or was CANCELED: whoever's it is, it cost nothing)."""
        await self.polls.wait(0.0)
        try:
            state = await self.client.fetch_task(task_id)
        except Retryable:
            return None
        if not state.terminal:
            return None
        if state.status in ("FAILED", "CANCELED"):
            return UNBILLED
        return state.orig_prompts[0] if state.orig_prompts else ""

    def not_found(self, paid: PaidRequest, why: str) -> Uncertain:
        """The error of a lost request that could not be found at the service."""
        exc = Uncertain(
            f"{paid.model}: the answer to a paid request was lost and it was not found at the "
            f"service ({why}); it may have been billed",
            model=paid.model,
        )
        exc.paid = paid
        return exc

    async def repay(self, paid: PaidRequest) -> None:
        """The user pays again for an uncertain request (``--repay-uncertain``): it is closed
        (still counted as possibly billed) so that a new request may replace it."""
        await self.ledger.close(paid, "uncertain: paid again (--repay-uncertain)")

    # --- waiting -------------------------------------------------------------
    async def wait(self, lane: Any, paid: PaidRequest) -> Any:
        """Poll an async task to its end; SUCCEEDED with images returns its state.

        A task that can give nothing is closed in the journal and ``Resubmit`` raised; one
        still running at its deadline raises ``StillRunning`` and stays open.
        """
        while True:
            assert paid.task_id is not None
            started = self._started.get(paid.key)
            state = await self.watcher.wait_terminal(
                lane,
                paid.task_id,
                started=started,
                age_s=0.0 if started is not None else max(0.0, time.time() - paid.sent_at),
            )
            told = state.orig_prompts[0] if getattr(state, "orig_prompts", None) else None
            ours = not told or not paid.prompt or _same_prompt(told, paid.prompt)
            if paid.phase != "uncertain" and ours:
                break
            # another request's task (its prompt differs), or a task id two requests were
            # answered: this request's own task is looked for at the service
            if paid.phase != "uncertain":
                await self.ledger.uncertain(paid, "the task the service named has another prompt")
            paid = await self.reconcile(paid, lane)
        index = paid.index
        if state.status == "SUCCEEDED":
            if getattr(state, "item_errors", None):
                log.info("partial_success", index=index, errors=state.item_errors[:4])
            urls = list(state.urls)
            await self.ledger.ended(paid, "SUCCEEDED", len(urls))
            if len(urls) > paid.n:
                await self._too_many(paid, len(urls))
            if urls:
                return state
            await self.ledger.close(paid, "succeeded without images", images=0)
            raise Resubmit(
                "task succeeded without an image",
                ServerError(
                    "task succeeded but returned no image", model=paid.model, step=Step.POLL
                ),
            )
        if state.status in ("FAILED", "CANCELED"):  # nothing made: nothing billed
            await self.ledger.close(paid, f"{state.status} {state.code or ''}".strip(), images=0)
            cause = (
                classify(None, state.code, state.message or "", model=paid.model)
                if state.status == "FAILED"
                else ResultExpired(f"task {paid.task_id} was CANCELED", model=paid.model)
            )
            raise Resubmit(f"task {paid.task_id} {state.status}", cause.at(Step.POLL))
        await self.ledger.close(paid, state.status)
        raise Resubmit(
            f"task {paid.task_id} is {state.status}",
            ResultExpired(
                f"task {paid.task_id} is {state.status}", model=paid.model, step=Step.POLL
            ),
        )

    # --- downloading ---------------------------------------------------------
    async def fetch(
        self, paid: PaidRequest, urls: list[str], actual: str | None
    ) -> list[Candidate]:
        """Download and check every result image; at least one must be usable.

        A round that gave nothing is retried as the policy says (an expired URL of an async
        task is re-polled for fresh ones first). A sync call's URLs cannot be renewed: a
        refusal within their life is a failed download (kept for the next run); past it they
        close the call (``Resubmit``). Raises ``ResultUnreachable`` with the request left
        open when the images exist but could not be fetched in this run.
        """
        assert self.policy is not None
        tries = Tries()
        while True:
            out, last, expired = await self._round(paid, urls, actual)
            if out:
                return out
            self.retries += 1
            error: DashScopeError
            if expired is not None and paid.sync and self._young(paid):
                # refused within the URLs' life: a failed download, not an expiry
                error = DownloadError(f"result URL refused within its life: {expired}")
                expired = None
            else:
                # a body that is no image is a failed download too: fetching again may help
                error = expired or (
                    last if isinstance(last, DashScopeError) else DownloadError(str(last))
                )
            decision = self.policy.decide(error.at(Step.DOWNLOAD), tries)
            if expired is not None:
                urls = await self._fresh_urls(paid, last)
            if decision.action is not Action.RETRY:
                raise ResultUnreachable(
                    f"result of {paid.model} could not be downloaded ({last}); "
                    "it is kept: the next run fetches it without paying again"
                )
            if decision.delay_s:
                log.info("download_retry", index=paid.index, round=tries.count, error=str(last))
                await asyncio.sleep(decision.delay_s)

    def _young(self, paid: PaidRequest) -> bool:
        """Whether a sync call's URLs are still within their life: this run's answers on the
        monotonic clock, an earlier run's by the journal's time."""
        answered = self._answered.get(paid.key)
        if answered is not None:
            return time.monotonic() - answered < URL_LIFE_S
        return time.time() - paid.sent_at < URL_LIFE_S

    async def _round(
        self, paid: PaidRequest, urls: list[str], actual: str | None
    ) -> tuple[list[Candidate], Exception | None, ResultExpired | None]:
        """One try at every URL: the usable images, the last error, the last expiry."""
        out: list[Candidate] = []
        last: Exception | None = None
        expired: ResultExpired | None = None
        for url in urls:
            try:
                body = await self.client.download(url)
                jpeg, w, h = await self.cpu(result_to_jpeg, body, self.jpeg_quality)
            except ResultExpired as exc:
                expired = last = exc
                continue
            except (Retryable, ImageProblem) as exc:
                last = exc
                continue
            out.append(
                Candidate(
                    model=paid.model,
                    jpeg=jpeg,
                    width=w,
                    height=h,
                    task_id=None if paid.sync else paid.task_id,
                    url=url if paid.sync else None,
                    actual_prompt=actual,
                )
            )
        return out, last, expired

    async def _fresh_urls(self, paid: PaidRequest, why: Exception | None) -> list[str]:
        if paid.sync:  # no task to ask again: the call's images are gone
            await self.ledger.close(paid, "result URLs expired")
            raise Resubmit(
                "the sync call's result URLs expired",
                ResultExpired(f"result URLs expired ({why})", model=paid.model),
            )
        assert paid.task_id is not None
        try:
            state = await self.client.fetch_task(paid.task_id)
        except (Retryable, RunnerError) as exc:  # the task may be there: keep it for later
            if isinstance(exc, Fatal):
                raise
            raise ResultUnreachable(
                f"result URLs expired and the task could not be asked again ({exc}); "
                "it is kept: the next run fetches it without paying again"
            ) from None
        if state.status == "SUCCEEDED" and state.urls:
            log.info("result_urls_renewed", index=paid.index, task_id=paid.task_id)
            return list(state.urls)
        await self.ledger.close(paid, f"result gone ({state.status})")
        raise Resubmit(
            "the task's results are gone",
            ResultExpired(f"task {paid.task_id} is {state.status}", model=paid.model),
        )


def _same_prompt(told: str, sent: str) -> bool:
    """Whether a task's prompt as the service tells it is the one sent: equal, or the
    service kept a cut of a long one (it cuts at the model's limit). ``sent`` is the
    ledger's copy, as on disk: anything in it shaped like a key is redacted, so the
    service's copy is compared redacted the same way (a prompt about "a standard bearer"
    or a sign reading "sk-..." is still its own)."""
    told, sent = scrub_text(told.strip()), scrub_text(sent.strip())
    return told == sent or (len(told) >= 200 and sent.startswith(told))


def _route(model: str, sync: bool) -> ModelCaps | None:
    """``model``'s caps on its sync (or async) route, None when it has no such route."""
    found = caps(model)
    if found.sync == sync:
        return found
    other = found.on_other_route()
    return other if other is not None and other.sync == sync else None


def _take_route(req: Request, sync: bool | None) -> None:
    """Send ``req`` on the route the service took for its model (``Lifecycle.routes``)."""
    route = None if sync is None or sync == req.sync else _route(req.model, sync)
    if route is not None:
        req.sync, req.input_style = route.sync, route.input_style


def _route_name(sync: bool) -> str:
    return "sync" if sync else "async"
