"""What went wrong, as a typed error from :mod:`runner.errors`.

Pure functions: an error answer, a download refusal, a network failure or an unreadable 2xx
answer in, the exception to raise out. The requester logs and counts them; nothing here
sends, retries or logs. Words from the network pass through ``scrub`` (the key, any
``sk-...`` or Bearer token and pre-signed query strings are taken out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp

from runner.backends.dashscope.types import header_request_id, parse_error_body, snippet
from runner.errors import (
    DashScopeError,
    DownloadError,
    Fatal,
    ResultExpired,
    RowFailed,
    ServerError,
    Uncertain,
    classify,
)
from runner.policy import parse_retry_after

Scrub = Callable[[str], str]

# The calls that are paid for when the service carries them out: once such a request has been
# written, an answer that does not come back whole leaves the payment uncertain.
PAID_KINDS = frozenset({"submit", "sync"})


def answer_error(
    status: int,
    raw: bytes,
    headers: Mapping[str, str],
    *,
    kind: str,
    model: str | None,
    retry_after_cap_s: float,
    scrub: Scrub,
) -> DashScopeError:
    """An API error answer (or a 200 with an error body), by code, message and status."""
    code, message, request_id = parse_error_body(raw)
    request_id = request_id or header_request_id(headers)
    return classify(
        status,
        code,
        scrub(f"{kind}: {message or f'HTTP {status}'}"),
        retry_after=parse_retry_after(headers, retry_after_cap_s),
        # words from the network: a request id ends up in failed.csv and the summary
        request_id=scrub(request_id) if request_id else None,
        model=model,
    )


def download_error(
    status: int, raw: bytes, headers: Mapping[str, str], where: str, retry_after_cap_s: float
) -> DashScopeError:
    """A result host's refusal: retryable when the host struggles, else the URL is gone."""
    code, _, request_id = parse_error_body(raw)
    request_id = request_id or header_request_id(headers)
    if status in (408, 429) or status >= 500:
        # The storage host is struggling: fetching again later may work.
        return classify(
            status,
            None,
            f"download: HTTP {status} from {where}",
            retry_after=parse_retry_after(headers, retry_after_cap_s),
            request_id=request_id,
        )
    # 403 (signature expired), 404/410 (gone) or any other refusal of a pre-signed URL: the
    # URL will never work again, the row must be submitted again.
    return ResultExpired(
        f"result URL refused with HTTP {status} (expired or gone): {where}",
        code=code or "",
        status=status,
        request_id=request_id,
    )


def network_error(
    kind: str,
    exc: BaseException,
    timeout_s: float,
    model: str | None,
    scrub: Scrub,
    *,
    sent: bool,
) -> DashScopeError:
    """No (complete) answer. ``sent``: the request may have reached the service (the failure
    came after the connection was made). A paid call in that case is ``Uncertain``; anything
    else is retryable (nothing was carried out, or carrying it out again costs nothing)."""
    if isinstance(exc, TimeoutError):
        message = f"{kind}: no complete answer within {timeout_s:g} s ({type(exc).__name__})"
    else:
        message = f"{kind}: network error: {type(exc).__name__}: {exc}"
    if sent and kind in PAID_KINDS:
        return Uncertain(
            scrub(f"{message}; the request was sent, so it MAY have been accepted (and billed)"),
            model=model,
        )
    return ServerError(scrub(message), model=model)


def client_error(
    exc: aiohttp.ClientError, *, kind: str, where: str, model: str | None, scrub: Scrub
) -> DashScopeError:
    """Any other aiohttp failure (an invalid URL, a redirect loop ...)."""
    download = kind == "download"
    if isinstance(exc, aiohttp.InvalidURL):
        if download:
            return RowFailed(f"download: invalid URL {where!r}")
        # Only the configured base URL can make this: nothing else will work either.
        return Fatal(f"{kind}: invalid API URL {where!r}", model=model)
    if download:
        # str(exc) may quote the full pre-signed URL: the type name is enough.
        return DownloadError(f"download: {type(exc).__name__} ({where})")
    message = scrub(f"{kind}: {type(exc).__name__}: {exc}")
    if kind in PAID_KINDS:  # the request went out (a redirect, a bad answer header...)
        return Uncertain(f"{message}; it MAY have been accepted (and billed)", model=model)
    return ServerError(message, model=model)


def not_json_error(
    kind: str, status: int, raw: bytes, model: str | None, scrub: Scrub
) -> DashScopeError:
    """A 2xx answer that is not JSON. A submit or a sync call may have been carried out (and
    billed): say so, so that the caller does not take a retry for free."""
    if kind in PAID_KINDS:
        return Uncertain(
            f"{kind}: HTTP {status} answer is not JSON; it MAY have been accepted (and billed): "
            f"{scrub(snippet(raw))}",
            status=status,
            model=model,
        )
    return ServerError(
        f"{kind}: HTTP {status} answer is not JSON: {scrub(snippet(raw))}",
        status=status,
        model=model,
    )
