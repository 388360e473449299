"""The typed error tree. Every layer raises these; ``runner.policy`` decides by type (and by
the ``step`` that failed, where the raiser knows it) what happens next.

- ``Retryable``: back off and try the same thing again (429 throttling, 5xx, timeouts, resets);
  ``TokensThrottled`` (a tokens-a-minute 429) always carries a ``retry_after`` pause.
- ``ModelRefused``: this model will not do this row (moderation); try the next model.
  ``ModelNotServed``: the model is not served here at all; set it aside for the whole run.
- ``RowFailed``: the row itself is wrong (bad input, rejected prompt on every model); fail it.
- ``Fatal``: nothing else can succeed either (bad key, no money, disk full); stop the run.
  ``ServiceUnreachable``: every connection to the host failed for about 30 s.
- ``Uncertain``: a paid request was written and its answer lost: it may have been billed;
  never resent blindly.
- ``Resubmit``: a paid task can give nothing (closed); its ``cause`` is decided as above.
  ``ResultUnreachable``: a paid image could not be downloaded now; the row fails, the task
  stays open for the next run. ``StillRunning``: the task had not ended by its deadline.

``Step`` names the call that failed (submit, poll, download, sync call, local generation,
judge call); the lifecycle, the row steps and the judge stamp it on the error with ``at``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Self


class Step(StrEnum):
    """The call an error came from: the same error means another thing at another step
    (a failed download keeps the paid task; a failed submit paid nothing)."""

    SUBMIT = "submit"
    POLL = "poll"
    DOWNLOAD = "download"
    SYNC_CALL = "sync call"  # qwen-image-edit: one call that answers with the result
    LOCAL = "local generation"
    JUDGE_CALL = "judge call"


class RunnerError(Exception):
    """Base of every error the runner raises on purpose."""


class TaskFileError(RunnerError):
    """The task file as a whole cannot be used (one clear line for the user)."""


class SettingsError(RunnerError):
    """The settings cannot be used."""


class DashScopeError(RunnerError):
    """An answer from DashScope (or the emulator) that is not a success."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        status: int | None = None,
        request_id: str | None = None,
        model: str | None = None,
        step: Step | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.request_id = request_id
        self.model = model
        self.step = step

    def at(self, step: Step) -> Self:
        """Stamp the step this error came from, unless an inner layer already did."""
        if self.step is None:
            self.step = step
        return self

    def __str__(self) -> str:
        parts = [p for p in (self.code, str(self.status) if self.status else "") if p]
        head = f"[{' '.join(parts)}] " if parts else ""
        # Without the server's closing period: callers end their sentence themselves
        # ("Run stopped: ... provided." rather than "provided..").
        text = str(self.args[0]) if self.args else ""
        return f"{head}{text.rstrip().rstrip('.')}"


class Retryable(DashScopeError):
    """Try again after a pause; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class RateLimited(Retryable):
    """429 Throttling*: the model's quota (submits a second or tasks in flight) is full."""


class TokensThrottled(RateLimited):
    """429 Throttling.AllocationQuota / insufficient_quota: a tokens-per-minute throttle that
    clears within about a minute. ``retry_after`` is always set (the server's, or ours)."""


class ServerError(Retryable):
    """5xx, a connection reset, a stalled server: nothing wrong with the request."""


class Uncertain(DashScopeError):
    """A paid request (a submit or a sync call) was written, but no usable answer came back:
    a timeout, a reset or a cut body after the request left, an unreadable 2xx, a 2xx without
    the task id. The service MAY have accepted it, and billed it, so it is never sent again
    blindly: an async submit is looked for at the service (its task list), a sync call or an
    unmatched submit fails its row unless the user pays again (``--repay-uncertain``).
    ``paid``: the ledger's request (runner.store.ledger), set where the request is known."""

    paid: Any = None


class ModelRefused(DashScopeError):
    """This model will not serve the row (content moderation); another model may."""


class ModelNotServed(ModelRefused):
    """This model is not served to this account here at all ("Model not exist." in this
    region, access denied, not purchased, free tier used up): set it aside for the run."""


class WrongRoute(ModelNotServed):
    """403 AccessDenied "current user api does not support synchronous calls" (or
    "asynchronous"): the request went to a route this model is not served on. A bug in the
    request, not the model's refusal: the lifecycle resends it on the model's other route;
    only a model served on neither is set aside, with this reason."""


class RowFailed(DashScopeError):
    """The row's own input or prompt is at fault; retrying it as is cannot help."""


class Fatal(DashScopeError):
    """The account or key is unusable (InvalidApiKey, Arrearage, overdue bills): stop the run."""


class ServiceUnreachable(Fatal):
    """Every connection to the host failed for a while (DNS, refused, TLS, connect timeouts),
    with no success in between: stop once, naming the host and the error."""

    def __init__(self, host: str, error: str, seconds: float) -> None:
        super().__init__(
            f"cannot reach {host} ({error}); every connection failed for {seconds:.0f} s",
            code="ServiceUnreachable",
        )
        self.host = host
        self.error = error


class DownloadError(Retryable):
    """A result could not be fetched or is not a valid image; fetching again may help."""


class ResultExpired(DashScopeError):
    """The task is gone (UNKNOWN) or its result URL expired: submit the row again."""


class Resubmit(RunnerError):
    """A paid task can give no image (closed in the journal): a new request is needed.
    ``cause`` is the typed error that says why (FAILED code, expired, timed out)."""

    def __init__(self, message: str, cause: DashScopeError) -> None:
        super().__init__(message)
        self.cause = cause


class ResultUnreachable(RunnerError):
    """A paid image exists but could not be fetched in this run; its task stays open."""


class StillRunning(ResultUnreachable):
    """The task was still PENDING or RUNNING at its deadline, one last poll included: it is
    never resubmitted (it bills when it ends); the row fails, the next run polls it again."""


class DiskFull(RunnerError):
    """Writing a result failed for lack of space: stop, keep what is written."""


# The reference's error table, by code (native and OpenAI-compatible names); the few codes
# whose meaning depends on the message are refined in classify().
_BY_CODE: dict[str, type[DashScopeError]] = {
    "InvalidApiKey": Fatal,
    "invalid_api_key": Fatal,
    "Arrearage": Fatal,
    "arrearage": Fatal,
    "CommodityNotPurchased": Fatal,
    "PrepaidBillOverdue": Fatal,
    "PostpaidBillOverdue": Fatal,
    "Throttling": RateLimited,
    "Throttling.RateQuota": RateLimited,
    "Throttling.BurstRate": RateLimited,
    "limit_requests": RateLimited,
    "limit_burst_rate": RateLimited,
    "Throttling.AllocationQuota": TokensThrottled,
    "insufficient_quota": TokensThrottled,
    "AccessDenied": ModelNotServed,
    "Model.AccessDenied": ModelNotServed,
    "AccessDenied.Unpurchased": ModelNotServed,
    "AllocationQuota.FreeTierOnly": ModelNotServed,
    "ModelNotFound": ModelNotServed,
    "model_not_found": ModelNotServed,
    # input or output may be inappropriate: the docs' remedy is a changed prompt, another
    # model may pass; a refused call is not billed
    "DataInspectionFailed": ModelRefused,
    # not moderation: the media download timed out during inspection (cross-border URLs):
    # send again (a data URI needs no download)
    "InvalidParameter.DataInspection": ServerError,
    "data_inspection_failed": ModelRefused,
    "IPInfringementSuspect": ModelRefused,
    "InvalidParameter": RowFailed,
    "BadRequest.InputDownloadFailed": RowFailed,
    "BadRequest.UnsupportedFileFormat": RowFailed,
    "InternalError": ServerError,
    "InternalError.Algo": ServerError,
    "InternalError.Timeout": ServerError,
    "SystemError": ServerError,
    "ModelUnavailable": ServerError,
    "ModelServingError": ServerError,
}

# Seconds to pause on a tokens-a-minute 429 that carries no Retry-After: the window is a
# minute, so a pause of a fraction of it lets part of the window pass before the next try.
TOKENS_RETRY_AFTER_S = 20.0


def _by_message(code: str, message: str) -> type[DashScopeError] | None:
    folded = message.casefold()
    if code == "AccessDenied" and "does not support" in folded and "synchronous" in folded:
        return WrongRoute  # "... synchronous calls" / "... asynchronous calls"
    if code == "InvalidParameter" and "model not exist" in folded:
        return ModelNotServed  # the region does not serve the model: not the row's fault
    if code in ("Throttling.AllocationQuota", "insufficient_quota") and (
        "free allocated quota exceeded" in folded
    ):
        return ModelNotServed  # the free tier is used up: no pause brings it back
    return None


def _by_status(status: int) -> type[DashScopeError]:
    if status == 429:
        return RateLimited
    if status in (408, 409) or status >= 500:
        return ServerError
    if status == 401:
        return Fatal
    if status in (403, 404):
        return ModelNotServed
    return RowFailed  # 400 and 415: the request (the row's input) is wrong


def classify(
    status: int | None,
    code: str | None,
    message: str = "",
    *,
    retry_after: float | None = None,
    request_id: str | None = None,
    model: str | None = None,
) -> DashScopeError:
    """Turn an error answer (or a FAILED task's code, status None) into its typed error:
    by code AND message (the reference's table), then by HTTP status."""
    code = code or ""
    kind: type[DashScopeError] | None = _by_message(code, message) or _BY_CODE.get(code)
    if kind is None and code.startswith("Throttling"):
        kind = RateLimited
    if kind is None and code.startswith(("InternalError", "SystemError")):
        kind = ServerError
    if kind is None and status is not None:
        kind = _by_status(status)
    if kind is None:
        kind = RowFailed
    msg = message or code or f"HTTP {status}"
    if issubclass(kind, Retryable):
        if kind is TokensThrottled and retry_after is None:
            retry_after = TOKENS_RETRY_AFTER_S
        return kind(
            msg,
            retry_after=retry_after,
            code=code,
            status=status,
            request_id=request_id,
            model=model,
        )
    return kind(msg, code=code, status=status, request_id=request_id, model=model)
