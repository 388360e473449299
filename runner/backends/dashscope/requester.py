"""One HTTP request over a transport and its own retries, as openai-python's
``_base_client.py`` does it (``runner.policy`` says who retries what at each layer: this is
the request's).

:class:`Requester` checks the host's circuit breaker, sends over the client's
:class:`~runner.backends.dashscope.transport.Transport`, turns every answer that is not a
success into a typed error from :mod:`runner.errors` (see
:mod:`runner.backends.dashscope.failures`), and retries Retryable errors with jittered
backoff, honouring Retry-After up to ``retry_after_cap_s``. By default only GETs are retried
(the config's ``max_retries``); a caller may pass its own ``max_retries`` per call. Submits,
the sync call and chat are not retried here: their errors go to the caller, which asks
``RetryPolicy.decide`` (a 429 on a submit also teaches the model's lane its quota).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import structlog

from runner.backends.dashscope.breaker import CONNECT_ERRORS, HostBreaker
from runner.backends.dashscope.config import CHUNK, ERROR_BODY_MAX, USER_AGENT, ClientConfig
from runner.backends.dashscope.failures import (
    answer_error,
    client_error,
    download_error,
    network_error,
    not_json_error,
)
from runner.backends.dashscope.transport import NETWORK_ERRORS, Request, Response, Transport
from runner.backends.dashscope.types import (
    DownloadTooLarge,
    EventHook,
    header_request_id,
    redact,
    safe_where,
    str_or_none,
)
from runner.errors import DashScopeError, DownloadError, RateLimited, Retryable
from runner.policy import backoff_delay

__all__ = ["Requester"]

log = structlog.get_logger(__name__)
T = TypeVar("T")


async def _sleep(seconds: float) -> None:
    """The one place the retry loop waits (tests replace it to record delays)."""
    await asyncio.sleep(seconds)


class Requester:
    """Sends requests over a transport: breaker, typed errors, events and retries.

    ``on_event(name, payload)``: ``request`` (every attempt, ``{"kind", "model"}``),
    ``throttled`` (every 429), ``retry`` (every retry). Payloads never hold the key,
    headers or pre-signed URLs.
    """

    def __init__(
        self, config: ClientConfig, transport: Transport, on_event: EventHook | None = None
    ) -> None:
        self._config = config
        self._transport = transport
        self._on_event = on_event
        self._breaker = HostBreaker(config.breaker_window_s, config.breaker_min_failures)

    def redact(self, text: str) -> str:
        return redact(text, self._config.api_key.get_secret_value())

    async def call(
        self,
        method: str,
        url: str,
        *,
        kind: str,
        parse: Callable[[dict[str, Any]], T],
        timeout_s: float | None = None,
        model: str | None = None,
        body: dict[str, Any] | None = None,
        async_task: bool = False,
        max_retries: int | None = None,
    ) -> T:
        """A JSON call to the API host; ``parse`` reads the answer (a ServerError it raises
        is retried like a bad answer). ``max_retries`` None: the config's for GET, else 0."""
        request = Request(
            method,
            url,
            self._api_headers(async_task=async_task),
            None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8"),
            self._config.timeout_s if timeout_s is None else timeout_s,
        )

        async def once() -> T:
            return parse(await self._api_once(request, kind=kind, model=model))

        if max_retries is None:  # only a GET is surely idempotent
            max_retries = self._config.max_retries if method == "GET" else 0
        return await self._retrying(kind, once, model=model, max_retries=max_retries)

    async def download(self, url: str, *, max_retries: int | None = None) -> bytes:
        """GET a result URL with the size cap; no key is sent (pre-signed URLs)."""
        request = Request(
            "GET", url, {"User-Agent": USER_AGENT, "Accept": "*/*"}, None, self._config.timeout_s
        )
        if max_retries is None:
            max_retries = self._config.max_retries
        return await self._retrying(
            "download", lambda: self._download_once(request), model=None, max_retries=max_retries
        )

    # ---- one attempt

    def _api_headers(self, *, async_task: bool) -> dict[str, str]:
        # Built per request (never as session defaults) so downloads cannot inherit the key.
        headers = {
            "Authorization": f"Bearer {self._config.api_key.get_secret_value()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if async_task:
            headers["X-DashScope-Async"] = "enable"
        return headers

    async def _exchange(
        self,
        request: Request,
        read: Callable[[Response], Awaitable[T]],
        *,
        kind: str,
        model: str | None,
    ) -> T:
        """Send ``request`` once and ``read`` its answer; network failures become typed."""
        host = urlsplit(request.url).netloc
        self._breaker.check(host)
        self._emit("request", {"kind": kind, "model": model})
        try:
            async with self._transport.send(request) as resp:
                self._breaker.success(host)
                return await read(resp)
        except NETWORK_ERRORS as exc:
            # The breaker's verdict first: ServiceUnreachable once it opens.
            unreachable = (
                self._breaker.failure(host, exc) if isinstance(exc, CONNECT_ERRORS) else None
            )
            if unreachable is not None:
                raise unreachable from None
            # A connect-phase failure sent nothing; any later one may have been carried out.
            sent = not isinstance(exc, CONNECT_ERRORS)
            error = network_error(kind, exc, request.timeout_s, model, self.redact, sent=sent)
            self._report_error(kind, error)
            raise error from None
        except aiohttp.ClientError as exc:
            raise client_error(
                exc, kind=kind, where=safe_where(request.url), model=model, scrub=self.redact
            ) from None

    async def _api_once(self, request: Request, *, kind: str, model: str | None) -> dict[str, Any]:
        """The JSON object of a 2xx answer, or a typed error."""

        async def read(resp: Response) -> tuple[int, Mapping[str, str], bytes]:
            return resp.status, resp.headers, await resp.read()

        started = time.monotonic()
        status, headers, raw = await self._exchange(request, read, kind=kind, model=model)
        elapsed_ms = round((time.monotonic() - started) * 1000)
        if status >= 400:
            raise self._error_from_answer(status, raw, headers, kind=kind, model=model)
        try:
            parsed = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            raise not_json_error(kind, status, raw, model, self.redact) from None
        if not isinstance(parsed, dict):
            raise not_json_error(kind, status, raw, model, self.redact)
        # Some gateways answer 200 with an error body: treat it as the error it names.
        if parsed.get("code") and "output" not in parsed and "choices" not in parsed:
            raise self._error_from_answer(status, raw, headers, kind=kind, model=model)
        log.debug(
            "dashscope.response",
            kind=kind,
            method=request.method,
            path=urlsplit(request.url).path,
            status=status,
            elapsed_ms=elapsed_ms,
            request_id=str_or_none(parsed.get("request_id")) or header_request_id(headers),
            model=model,
        )
        return parsed

    async def _download_once(self, request: Request) -> bytes:
        where = safe_where(request.url)
        cap = self._config.download_max_bytes

        async def read(resp: Response) -> tuple[int, bytes]:
            if resp.status >= 400:
                raw = await resp.read(ERROR_BODY_MAX)
                cap_s = self._config.retry_after_cap_s
                error = download_error(resp.status, raw, resp.headers, where, cap_s)
                self._report_error("download", error)
                raise error
            if resp.content_length is not None and resp.content_length > cap:
                # Reject before reading a byte.
                raise DownloadTooLarge(
                    f"result is {resp.content_length} bytes, over the {cap}-byte cap: {where}",
                    status=resp.status,
                )
            buf = bytearray()
            async for chunk in resp.iter_chunks(CHUNK):
                buf += chunk
                if len(buf) > cap:  # no (or a lying) Content-Length: stop streaming
                    raise DownloadTooLarge(
                        f"result exceeds the {cap}-byte cap: {where}", status=resp.status
                    )
            return resp.status, bytes(buf)

        started = time.monotonic()
        status, data = await self._exchange(request, read, kind="download", model=None)
        if not data:
            raise DownloadError(f"download: empty body (HTTP {status}) from {where}", status=status)
        log.debug(
            "dashscope.downloaded",
            where=where,
            status=status,
            size=len(data),
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )
        return data

    # ---- errors

    def _error_from_answer(
        self, status: int, raw: bytes, headers: Mapping[str, str], *, kind: str, model: str | None
    ) -> DashScopeError:
        cap_s = self._config.retry_after_cap_s
        exc = answer_error(
            status, raw, headers, kind=kind, model=model, retry_after_cap_s=cap_s, scrub=self.redact
        )
        self._report_error(kind, exc)
        return exc

    def _report_error(self, kind: str, exc: DashScopeError) -> None:
        retry_after = getattr(exc, "retry_after", None)
        log.info(
            "dashscope.error",
            kind=kind,
            error=type(exc).__name__,
            status=exc.status,
            code=exc.code or None,
            request_id=exc.request_id,
            model=exc.model,
            retry_after=retry_after,
            message=str(exc),
        )
        if isinstance(exc, RateLimited):
            throttled = {"kind": kind, "model": exc.model, "code": exc.code or None}
            throttled |= {"retry_after": retry_after, "request_id": exc.request_id}
            self._emit("throttled", throttled)

    # ---- retries

    async def _retrying(
        self,
        kind: str,
        attempt_fn: Callable[[], Awaitable[T]],
        *,
        model: str | None,
        max_retries: int,
    ) -> T:
        """Run an attempt, retrying Retryable errors with jittered backoff (Retry-After
        honoured up to the cap by parse_retry_after)."""
        retries = 0
        while True:
            try:
                return await attempt_fn()
            except DownloadTooLarge:
                raise
            except Retryable as exc:
                if retries >= max_retries:
                    raise
                retries += 1
                delay = backoff_delay(retries, exc.retry_after, max_s=self._config.backoff_max_s)
                payload = {
                    "kind": kind,
                    "model": model,
                    "attempt": retries,
                    "delay_s": delay,
                    "error": type(exc).__name__,
                    "code": exc.code or None,
                    "status": exc.status,
                }
                log.info("dashscope.retry", **payload)
                self._emit("retry", payload)
                await _sleep(delay)

    def _emit(self, name: str, payload: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(name, payload)
        except Exception:  # a broken counter must not fail a request
            log.exception("dashscope.event_hook_failed", hook_event=name)
