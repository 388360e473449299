"""The typed error tree. Every layer raises these; the scheduler decides by type alone.

- ``Retryable``: back off and try the same thing again (429 throttling, 5xx, timeouts, resets).
- ``ModelRefused``: this model will not do this row; try the next model in the list.
- ``RowFailed``: the row itself is wrong (bad input, rejected prompt on every model); fail it.
- ``Fatal``: nothing else can succeed either (bad key, no money, disk full); stop the run.
"""

from __future__ import annotations


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
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.request_id = request_id
        self.model = model

    def __str__(self) -> str:
        parts = [p for p in (self.code, str(self.status) if self.status else "") if p]
        head = f"[{' '.join(parts)}] " if parts else ""
        return f"{head}{self.args[0] if self.args else ''}"


class Retryable(DashScopeError):
    """Try again after a pause; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class RateLimited(Retryable):
    """429 Throttling*: the model's quota (submits a second or tasks in flight) is full."""


class ServerError(Retryable):
    """5xx, a connection reset, a stalled server: nothing wrong with the request."""


class ModelRefused(DashScopeError):
    """This model will not serve the row (access denied, no such model, quota exhausted,
    content moderation); another model in the list may."""


class RowFailed(DashScopeError):
    """The row's own input or prompt is at fault; retrying it as is cannot help."""


class Fatal(DashScopeError):
    """The account or key is unusable (InvalidApiKey, Arrearage): stop the whole run."""


class DownloadError(Retryable):
    """A result could not be fetched or is not a valid image; fetching again may help."""


class ResultExpired(DashScopeError):
    """The task is gone (UNKNOWN) or its result URL expired: submit the row again."""


class DiskFull(RunnerError):
    """Writing a result failed for lack of space: stop, keep what is written."""


# The error table of the protocol reference, by code first, then by HTTP status.
_BY_CODE: dict[str, type[DashScopeError]] = {
    "InvalidApiKey": Fatal,
    "Arrearage": Fatal,
    "Throttling": RateLimited,
    "Throttling.RateQuota": RateLimited,
    "Throttling.AllocationQuota": ModelRefused,  # exhausted: not soon
    "AccessDenied": ModelRefused,
    "Model.AccessDenied": ModelRefused,
    "ModelNotFound": ModelRefused,
    "DataInspectionFailed": ModelRefused,  # moderation: another model may pass
    "IPInfringementSuspect": ModelRefused,
    "InvalidParameter": RowFailed,
    "BadRequest.InputDownloadFailed": RowFailed,
    "BadRequest.UnsupportedFileFormat": RowFailed,
    "InternalError": ServerError,
    "InternalError.Algo": ServerError,
    "InternalError.Timeout": ServerError,
    "SystemError": ServerError,
    "ModelUnavailable": ServerError,
}


def classify(
    status: int | None,
    code: str | None,
    message: str = "",
    *,
    retry_after: float | None = None,
    request_id: str | None = None,
    model: str | None = None,
) -> DashScopeError:
    """Turn an error answer (or a FAILED task's code, status None) into its typed error."""
    code = code or ""
    kind: type[DashScopeError] | None = _BY_CODE.get(code)
    if kind is None and code.startswith("Throttling"):
        kind = RateLimited
    if kind is None and code.startswith(("InternalError", "SystemError")):
        kind = ServerError
    if kind is None and status is not None:
        if status == 429:
            kind = RateLimited
        elif status in (408, 409) or status >= 500:
            kind = ServerError
        elif status == 401:
            kind = Fatal
        elif status in (403, 404):
            kind = ModelRefused
        else:
            kind = RowFailed
    if kind is None:
        kind = RowFailed
    msg = message or code or f"HTTP {status}"
    if issubclass(kind, Retryable):
        return kind(
            msg,
            retry_after=retry_after,
            code=code,
            status=status,
            request_id=request_id,
            model=model,
        )
    return kind(msg, code=code, status=status, request_id=request_id, model=model)
