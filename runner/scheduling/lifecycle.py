"""One remote task, start to end: submit -> journal -> poll -> download -> close.

The same steps serve a fresh request and a task resumed from the journal, so a task the
service accepted is paid for once and its image is never lost:

* The submit and the journal record of its answer run as one shielded step: a stop or a
  Ctrl-C in between waits for the record (``drain``), it never drops a paid id. A sync call
  (qwen-image-edit) journals its result URLs the moment its answer arrives, before any
  download: they are its only proof of payment.
* Retries belong to the step that failed: a poll error polls again (``TaskWatcher``), a
  download error downloads again (a refused, expired URL is re-polled for fresh ones), as
  ``runner.policy`` decides; errors leave here stamped with their ``Step``.
  Only a task that FAILED, is UNKNOWN/CANCELED, succeeded without an image, or ran past
  the watch timeout is closed and is a reason to submit anew (``Resubmit``).
* A result that cannot be downloaded now keeps its task open in the journal: the row fails
  for this run and the next run fetches it without paying again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol, TypeVar

import structlog
from pydantic import BaseModel

from runner.backends.dashscope.client import send_image_request
from runner.errors import (
    DashScopeError,
    DownloadError,
    Resubmit,
    ResultExpired,
    ResultUnreachable,
    Retryable,
    RunnerError,
    ServerError,
    Step,
    WrongRoute,
    classify,
)
from runner.images import ImageProblem, result_to_jpeg
from runner.models import ModelCaps, caps
from runner.policy import Action, RetryPolicy, Tries
from runner.scheduling.polling import TaskWatcher, WatchTimeout
from runner.store.journal import Journal, PendingTask

__all__ = ["Candidate", "Lifecycle", "Request", "Resubmit", "ResultUnreachable"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


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
    async def cancel_task(self, task_id: str) -> None: ...
    async def multimodal_edit(self, model: str, prompt: str, image: str, **kw: Any) -> Any: ...
    async def multimodal_t2i(self, model: str, prompt: str, **kw: Any) -> Any: ...
    async def submit_generation(
        self, model: str, prompt: str, images: list[str], **kw: Any
    ) -> Any: ...
    async def download(self, url: str) -> bytes: ...


CpuRun = Callable[..., Awaitable[Any]]


@dataclass(eq=False)
class Lifecycle:
    client: Client
    journal: Journal
    watcher: TaskWatcher
    _: KW_ONLY
    cpu: CpuRun
    jpeg_quality: int = 95
    backoff_max_s: float = 8.0  # the default policy's, when none is given
    policy: RetryPolicy | None = None
    billed: dict[str, int] = field(default_factory=dict)  # model -> images paid in this run
    retries: int = 0  # download rounds and URL renewals (no payment)
    # model -> sync: the route the service took where it refused the table's (``_send``)
    routes: dict[str, bool] = field(default_factory=dict)
    _critical: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = RetryPolicy(backoff_max_s=self.backoff_max_s)

    # --- the paid step -------------------------------------------------------
    async def _shielded(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` to its end even if the caller is cancelled (``drain`` waits for it)."""
        task = asyncio.ensure_future(coro)
        self._critical.add(task)
        task.add_done_callback(self._critical.discard)
        return await asyncio.shield(task)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait for paid steps still in flight to be journaled (on a stop or Ctrl-C)."""
        pending = [t for t in self._critical if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def submit(self, req: Request) -> PendingTask:
        """Send the request; return the journaled proof of payment (task id or sync URLs).
        A failure comes back as a typed error stamped with its step (submit or sync call)."""
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

    async def _submit_and_journal(self, req: Request) -> PendingTask:
        now = time.time()
        answer = await self._send(req)
        urls: list[str] = []
        if req.sync:
            # its result URLs are its only proof of payment: journaled before any download
            task_id, urls = "sync-" + uuid.uuid4().hex[:16], list(answer.urls)
            ev, record = "sync_answer", {"call_id": task_id, "urls": urls}
        else:
            task_id = answer.task_id
            ev, record = "submitted", {"task_id": task_id, "prompt_sent": req.prompt}
        await self.journal.write(ev, index=req.index, model=req.model, n=req.n, fp=req.fp, **record)
        self.billed[req.model] = self.billed.get(req.model, 0) + (len(urls) if req.sync else req.n)
        return PendingTask(task_id=task_id, model=req.model, submitted_at=now, fp=req.fp, urls=urls)

    # --- waiting -------------------------------------------------------------
    async def wait(self, index: str, lane: Any, paid: PendingTask, *, resumed: bool) -> Any:
        """Poll an async task to its end; SUCCEEDED with images returns its state.

        Anything else closes the task in the journal and raises ``Resubmit``.
        """
        try:
            state = await self.watcher.wait_terminal(
                lane, paid.task_id, submitted_at=paid.submitted_at, resumed=resumed
            )
        except WatchTimeout as exc:
            try:
                await self.client.cancel_task(paid.task_id)
            except RunnerError:
                pass
            await self.close(index, paid.task_id, "timed out")
            raise Resubmit(
                f"task {paid.task_id} did not end in time",
                ServerError(str(exc), model=paid.model, step=Step.POLL),
            ) from None
        if state.status == "SUCCEEDED":
            if getattr(state, "item_errors", None):
                log.info("partial_success", index=index, errors=state.item_errors[:4])
            if state.urls:
                return state
            await self.close(index, paid.task_id, "succeeded without images")
            raise Resubmit(
                "task succeeded without an image",
                ServerError(
                    "task succeeded but returned no image", model=paid.model, step=Step.POLL
                ),
            )
        if state.status == "FAILED":
            await self.close(index, paid.task_id, f"FAILED {state.code}")
            raise Resubmit(
                f"task {paid.task_id} FAILED",
                classify(None, state.code, state.message or "", model=paid.model).at(Step.POLL),
            )
        await self.close(index, paid.task_id, state.status)
        raise Resubmit(
            f"task {paid.task_id} is {state.status}",
            ResultExpired(
                f"task {paid.task_id} is {state.status}", model=paid.model, step=Step.POLL
            ),
        )

    async def close(self, index: str, task_id: str, why: str) -> None:
        """Journal that a paid id can give no result any more, so no rerun waits on it."""
        await self.journal.write("task_closed", index=index, task_id=task_id, why=why)

    # --- downloading ---------------------------------------------------------
    async def fetch(
        self, index: str, paid: PendingTask, urls: list[str], actual: str | None
    ) -> list[Candidate]:
        """Download and check every result image; at least one must be usable.

        A round that gave nothing is retried as the policy says (an expired URL of an async
        task is re-polled for fresh ones first). A sync call's URLs cannot be renewed: when
        refused they close the call (``Resubmit``). Raises ``ResultUnreachable`` with the task
        left open when the images exist but could not be fetched in this run.
        """
        assert self.policy is not None
        tries = Tries()
        while True:
            out, last, expired = await self._round(paid, urls, actual)
            if out:
                return out
            self.retries += 1
            # a body that is no image is a failed download too: fetching again may help
            error = expired or (
                last if isinstance(last, DashScopeError) else DownloadError(str(last))
            )
            decision = self.policy.decide(error.at(Step.DOWNLOAD), tries)
            if expired is not None:
                urls = await self._fresh_urls(index, paid, last)
            if decision.action is not Action.RETRY:
                raise ResultUnreachable(
                    f"result of {paid.model} could not be downloaded ({last}); "
                    "it is kept: the next run fetches it without paying again"
                )
            if decision.delay_s:
                log.info("download_retry", index=index, round=tries.count, error=str(last))
                await asyncio.sleep(decision.delay_s)

    async def _round(
        self, paid: PendingTask, urls: list[str], actual: str | None
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

    async def _fresh_urls(self, index: str, paid: PendingTask, why: Exception | None) -> list[str]:
        if paid.sync:  # no task to ask again: the call's images are gone
            await self.close(index, paid.task_id, "result URLs expired")
            raise Resubmit(
                "the sync call's result URLs expired",
                ResultExpired(f"result URLs expired ({why})", model=paid.model),
            )
        try:
            state = await self.client.fetch_task(paid.task_id)
        except Retryable as exc:  # the task is still there: keep it for the next run
            raise ResultUnreachable(
                f"result URLs expired and the task could not be asked again ({exc}); "
                "it is kept: the next run fetches it without paying again"
            ) from None
        if state.status == "SUCCEEDED" and state.urls:
            log.info("result_urls_renewed", index=index, task_id=paid.task_id)
            return list(state.urls)
        await self.close(index, paid.task_id, f"result gone ({state.status})")
        raise Resubmit(
            "the task's results are gone",
            ResultExpired(f"task {paid.task_id} is {state.status}", model=paid.model),
        )

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
