"""The async DashScope client: one place that speaks HTTP to DashScope (or the emulator).

Modelled on openai-python's ``_base_client.py``: every answer that is not a success becomes a
typed error from :mod:`runner.errors` (via :func:`runner.errors.classify`), and one loop owns
the retries. Only idempotent GETs (task polls, result downloads) are retried here; submits,
the sync multimodal call and chat raise once, because the scheduler owns job-level retries
and must see every 429 to learn a model's quota.

Secrets: the API key lives in a ``SecretStr`` and is only turned into a header at the moment
a request to the API host is sent. It never goes into a log line, an exception, an event or a
repr, and result downloads (pre-signed OSS URLs) never carry it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from importlib import metadata
from types import TracebackType
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import quote, urlsplit

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from runner.backends.dashscope.breaker import CONNECT_ERRORS, HostBreaker
from runner.errors import (
    DashScopeError,
    DownloadError,
    Fatal,
    RateLimited,
    ResultExpired,
    Retryable,
    RowFailed,
    ServerError,
    SubmitUncertain,
    classify,
)
from runner.logs import REDACTED, scrub_text
from runner.models import caps
from runner.retry import backoff_delay, parse_retry_after

__all__ = [
    "ClientConfig",
    "DashScopeClient",
    "DownloadTooLarge",
    "EventHook",
    "Submitted",
    "SyncResult",
    "TaskState",
    "TaskStatus",
]

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
TaskStatus = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
_TASK_STATUSES: frozenset[str] = frozenset(get_args(TaskStatus))

EventHook = Callable[[str, dict[str, Any]], None]
T = TypeVar("T")

_T2I_PATH = "/services/aigc/text2image/image-synthesis"
_I2I_PATH = "/services/aigc/image2image/image-synthesis"
_MULTIMODAL_PATH = "/services/aigc/multimodal-generation/generation"
_BEIJING = timezone(timedelta(hours=8))  # the service's clock: Beijing time, no zone sent
_CHUNK = 64 * 1024
_ERROR_BODY_MAX = 64 * 1024  # error bodies are small; never buffer a huge one
_CONNECTION_LIMIT = 64  # API host + OSS host together; quotas keep real use far lower
_CONNECTION_LIMIT_PER_HOST = 32

# The OpenAI-compatible endpoint answers with lower-case codes; translate the ones the error
# table knows so classify() sees DashScope's names (others fall back to the HTTP status).
_COMPAT_CODES: dict[str, str] = {
    "invalid_api_key": "InvalidApiKey",
    "data_inspection_failed": "DataInspectionFailed",
    "model_not_found": "ModelNotFound",
    "limit_requests": "Throttling.RateQuota",
    "insufficient_quota": "Throttling.AllocationQuota",
    "arrearage": "Arrearage",
}

# Network-level failures: nothing wrong with the request, so they are ServerError (retryable).
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,  # includes ServerDisconnectedError, ServerTimeoutError
    aiohttp.ClientPayloadError,
    TimeoutError,  # asyncio.TimeoutError is the builtin since 3.11
)


def _user_agent() -> str:
    try:
        version = metadata.version("runner")
    except metadata.PackageNotFoundError:
        version = "0.1.0"
    return f"runner/{version} (quota-aware DashScope job runner; aiohttp/{aiohttp.__version__})"


USER_AGENT = _user_agent()


async def _sleep(seconds: float) -> None:
    """The one place the retry loop waits (tests replace it to record delays)."""
    await asyncio.sleep(seconds)


# --------------------------------------------------------------------------- config & models


class ClientConfig(BaseModel):
    """Explicit client configuration (httpx style): nothing is read from the environment here;
    the settings layer maps DASHSCOPE_API_KEY / DASHSCOPE_HTTP_BASE_URL onto it."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: SecretStr
    timeout_s: float = Field(60.0, gt=0)  # per request, connect + read
    sync_timeout_s: float = Field(180.0, gt=0)  # multimodal-generation is sync and slow
    max_retries: int = Field(4, ge=0)  # idempotent GETs only (poll, download)
    backoff_max_s: float = Field(8.0, gt=0)
    retry_after_cap_s: float = Field(120.0, gt=0)
    download_max_bytes: int = Field(40 * MiB, gt=0)
    compatible_base_url: str | None = None  # None: derived from base_url
    connect_timeout_s: float = Field(10.0, gt=0)  # a connect slower than this is a failure
    # Circuit breaker: this long of nothing but connection failures to a host stops the run.
    breaker_window_s: float = Field(30.0, ge=0)
    breaker_min_failures: int = Field(3, ge=1)

    @field_validator("base_url", "compatible_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _strip_key(cls, value: object) -> object:
        # A pasted key often carries a newline; stripping here never raises, so a bad key is
        # never echoed back in a ValidationError.
        if isinstance(value, SecretStr):
            return SecretStr(value.get_secret_value().strip())
        if isinstance(value, str):
            return value.strip()
        return value

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("api_key is empty")
        return value

    @model_validator(mode="after")
    def _derive_compatible(self) -> ClientConfig:
        if self.compatible_base_url is None:
            if self.base_url.endswith("/api/v1"):
                self.compatible_base_url = self.base_url[: -len("/api/v1")] + "/compatible-mode/v1"
            else:
                parts = urlsplit(self.base_url)
                self.compatible_base_url = f"{parts.scheme}://{parts.netloc}/compatible-mode/v1"
        return self


class Submitted(BaseModel):
    """An accepted async task."""

    task_id: str
    request_id: str | None = None
    model: str


class TaskState(BaseModel):
    """One poll of a task. FAILED/UNKNOWN are returned, not raised: the scheduler decides."""

    task_id: str
    status: TaskStatus
    urls: list[str] = Field(default_factory=list)  # successful result URLs, in order
    item_errors: list[tuple[str, str]] = Field(default_factory=list)  # failed items, n>1
    code: str | None = None  # FAILED (or UNKNOWN) task
    message: str | None = None
    actual_prompts: list[str] = Field(default_factory=list)  # when prompt_extend rewrote it
    request_id: str | None = None
    # The service's own clock (epoch seconds): end_time - submit_time is the task's true
    # duration, free of the poller's delay. None when the answer does not carry them.
    submit_time: float | None = None
    scheduled_time: float | None = None
    end_time: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class SyncResult(BaseModel):
    """The answer of the sync multimodal-generation call."""

    urls: list[str]
    request_id: str | None = None
    model: str


class DownloadTooLarge(DownloadError):
    """The result is bigger than ``download_max_bytes``. A DownloadError for the scheduler,
    but not retried inside the client: fetching the same bytes again cannot help."""


# --------------------------------------------------------------------------- helpers


def _safe_where(url: str) -> str:
    """scheme://host/path: result URLs carry pre-signed query strings, never log those."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def service_time(value: object) -> float | None:
    """Epoch seconds of the service's "YYYY-MM-DD HH:MM:SS.fff" (Beijing time, UTC+8)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    for form in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            naive = datetime.strptime(text, form)
        except ValueError:
            continue
        return naive.replace(tzinfo=_BEIJING).timestamp()
    return None


def _str_or_none(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw[: limit * 4].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _parse_error_body(raw: bytes) -> tuple[str | None, str, str | None]:
    """(code, message, request_id) of an error answer; tolerates HTML/XML/empty bodies."""
    try:
        data = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        code = _str_or_none(data.get("code"))
        message = _str_or_none(data.get("message")) or ""
        err = data.get("error")
        if isinstance(err, dict):  # OpenAI-compatible shape
            code = code or _str_or_none(err.get("code")) or _str_or_none(err.get("type"))
            message = message or _str_or_none(err.get("message")) or ""
        if code is not None:
            code = _COMPAT_CODES.get(code, code)
        return code, message, _str_or_none(data.get("request_id"))
    # OSS answers in XML: keep its <Code> for the log, the rest as a short snippet.
    match = re.search(rb"<Code>([^<]{1,100})</Code>", raw or b"")
    code = match.group(1).decode("utf-8", errors="replace") if match else None
    return code, _snippet(raw) if raw else "", None


def _header_request_id(headers: Mapping[str, str]) -> str | None:
    for name in ("x-request-id", "x-dashscope-request-id", "x-oss-request-id"):
        value = headers.get(name)
        if value:
            return value
    return None


# --------------------------------------------------------------------------- the client


class DashScopeClient:
    """Async DashScope client. Use as ``async with DashScopeClient(cfg) as client: ...``.

    ``on_event(name, payload)`` lets the scheduler count things: ``request`` (every attempt,
    ``{"kind", "model"}``), ``throttled`` (every 429), ``retry`` (every in-client retry).
    Payloads never hold the key, headers or pre-signed URLs.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._owns_session = session is None
        self._on_event = on_event
        self._breaker = HostBreaker(config.breaker_window_s, config.breaker_min_failures)

    def __repr__(self) -> str:
        return f"DashScopeClient(base_url={self._config.base_url!r})"

    @property
    def config(self) -> ClientConfig:
        return self._config

    # ---- lifecycle

    async def __aenter__(self) -> DashScopeClient:
        self._get_session()  # bind the session to the running loop now
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it (a given session is the caller's)."""
        if self._owns_session and self._session is not None:
            # A later call would lazily open a fresh session.
            session, self._session = self._session, None
            if not session.closed:
                await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the loop that actually runs the requests.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=_CONNECTION_LIMIT,
                limit_per_host=_CONNECTION_LIMIT_PER_HOST,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._config.timeout_s),
            )
            self._owns_session = True
        return self._session

    # ---- public API: async tasks

    async def submit_text2image(
        self,
        model: str,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        size: str = "1024*1024",
        n: int = 1,
        seed: int | None = None,
        prompt_extend: bool = True,
        watermark: bool = False,
    ) -> Submitted:
        """Submit a text-to-image task (async mode). Not retried here."""
        self._check_n(model, n)
        self._warn_long_prompt(model, prompt)
        input_: dict[str, Any] = {"prompt": prompt}
        if negative_prompt:
            input_["negative_prompt"] = negative_prompt
        # n is always sent: the server's default is 4 images (4x the cost and quota).
        parameters: dict[str, Any] = {
            "size": size,
            "n": n,
            "prompt_extend": prompt_extend,
            "watermark": watermark,
        }
        if seed is not None:
            parameters["seed"] = seed
        body = {"model": model, "input": input_, "parameters": parameters}
        return await self._submit(_T2I_PATH, model, body)

    async def submit_image_edit(
        self,
        model: str,
        prompt: str,
        image: str,
        *,
        function: str = "description_edit",
        strength: float = 0.5,
        n: int = 1,
        seed: int | None = None,
        watermark: bool = False,
    ) -> Submitted:
        """Submit an image-edit task (wanx2.1-imageedit) on the image2image path.
        ``image`` is a URL or a ``data:`` URI. Not retried here."""
        self._check_n(model, n)
        self._warn_long_prompt(model, prompt)
        input_: dict[str, Any] = {"function": function, "prompt": prompt, "base_image_url": image}
        parameters: dict[str, Any] = {"n": n, "watermark": watermark}
        if function in ("description_edit", "stylization_all"):
            parameters["strength"] = strength  # only these functions take a strength
        if seed is not None:
            parameters["seed"] = seed
        body = {"model": model, "input": input_, "parameters": parameters}
        return await self._submit(_I2I_PATH, model, body)

    async def submit_images_edit(
        self,
        model: str,
        prompt: str,
        images: list[str],
        *,
        n: int = 1,
        size: str | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        watermark: bool = False,
    ) -> Submitted:
        """Submit an edit that names its sources as ``input.images`` (wan2.5-i2i-preview) on
        the image2image path. Not retried here."""
        self._check_n(model, n)
        if not images:
            raise ValueError("images is empty")
        self._warn_long_prompt(model, prompt)
        input_: dict[str, Any] = {"prompt": prompt, "images": list(images)}
        if negative_prompt:
            input_["negative_prompt"] = negative_prompt
        parameters: dict[str, Any] = {"n": n, "watermark": watermark}
        if size is not None:
            parameters["size"] = size
        if seed is not None:
            parameters["seed"] = seed
        body = {"model": model, "input": input_, "parameters": parameters}
        return await self._submit(_I2I_PATH, model, body)

    async def fetch_task(self, task_id: str) -> TaskState:
        """Poll a task (GET, retried on Retryable errors). FAILED/UNKNOWN are returned."""
        url = self._task_url(task_id)

        async def once() -> TaskState:
            data = await self._api_call("GET", url, kind="poll", timeout_s=self._config.timeout_s)
            return self._parse_task(task_id, data)

        return await self._retrying("poll", once, model=None)

    async def cancel_task(self, task_id: str) -> None:
        """Cancel a PENDING task. Not retried here."""
        await self._api_call(
            "POST",
            self._task_url(task_id) + "/cancel",
            kind="cancel",
            timeout_s=self._config.timeout_s,
        )

    # ---- public API: sync calls

    async def multimodal_edit(
        self,
        model: str,
        prompt: str,
        image: str,
        *,
        n: int = 1,
        negative_prompt: str | None = None,
        seed: int | None = None,
        watermark: bool = False,
        size: str | None = None,
        prompt_extend: bool | None = None,
    ) -> SyncResult:
        """Sync multimodal-generation edit (the qwen-image-edit family; qwen-image-edit-plus
        returns n = 1-6 images in one call). No async header, not retried."""
        self._check_n(model, n)
        self._warn_long_prompt(model, prompt)
        parameters: dict[str, Any] = {"n": n, "watermark": watermark}
        if negative_prompt:
            parameters["negative_prompt"] = negative_prompt
        if seed is not None:
            parameters["seed"] = seed
        if size is not None:
            parameters["size"] = size
        if prompt_extend is not None:
            parameters["prompt_extend"] = prompt_extend
        body = {
            "model": model,
            "input": {
                "messages": [{"role": "user", "content": [{"image": image}, {"text": prompt}]}]
            },
            "parameters": parameters,
        }
        data = await self._api_call(
            "POST",
            self._config.base_url + _MULTIMODAL_PATH,
            kind="sync",
            model=model,
            body=body,
            timeout_s=self._config.sync_timeout_s,
        )
        urls: list[str] = []
        output = data.get("output")
        choices = output.get("choices") if isinstance(output, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            message = choice.get("message") if isinstance(choice, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            for part in content if isinstance(content, list) else []:
                if isinstance(part, dict) and isinstance(part.get("image"), str) and part["image"]:
                    urls.append(part["image"])
        request_id = _str_or_none(data.get("request_id"))
        if not urls:
            raise ServerError(
                "multimodal-generation answer has no output.choices[].message.content[].image",
                request_id=request_id,
                model=model,
            )
        return SyncResult(urls=urls, request_id=request_id, model=model)

    async def chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
    ) -> str:
        """OpenAI-compatible chat/completions (Qwen-VL judge); returns the message text."""
        body = {
            "model": model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        base = self._config.compatible_base_url or ""  # always set by the config validator
        data = await self._api_call(
            "POST",
            base + "/chat/completions",
            kind="chat",
            model=model,
            body=body,
            timeout_s=self._config.timeout_s,
        )
        request_id = _str_or_none(data.get("request_id") or data.get("id"))
        choices = data.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: keep the text ones
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            content = "".join(t for t in texts if isinstance(t, str))
        if not isinstance(content, str):
            raise ServerError(
                "chat answer has no choices[0].message.content", request_id=request_id, model=model
            )
        return content

    # ---- public API: downloads

    async def download(self, url: str) -> bytes:
        """Fetch a result URL (GET, retried) with a size cap. No Authorization header: result
        hosts are pre-signed OSS URLs. The bytes are not decoded here."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https") or not urlsplit(url).netloc:
            # Do not echo the URL: it may be a multi-megabyte data: URI.
            raise RowFailed(f"refusing to download a non-http(s) URL (scheme {scheme or 'none'!r})")
        return await self._retrying("download", lambda: self._download_once(url), model=None)

    # ---- internals: requests

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

    def _redact(self, text: str) -> str:
        """Belt and braces: a server echoing the key (ours or any ``sk-...``) must not put it
        into our exceptions or logs."""
        key = self._config.api_key.get_secret_value()
        if key and key in text:
            text = text.replace(key, REDACTED)
        text = scrub_text(text)  # any sk-... key, Bearer tokens, keys given to logging
        text = re.sub(r"(?i)bearer\s+\S+", "Bearer " + REDACTED, text)
        # Pre-signed query strings (Signature=...) stay out of messages too.
        return re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", r"\1?...", text)

    def _task_url(self, task_id: str) -> str:
        if not task_id:
            raise ValueError("task_id is empty")
        return f"{self._config.base_url}/tasks/{quote(task_id, safe='')}"

    async def _submit(self, path: str, model: str, body: dict[str, Any]) -> Submitted:
        data = await self._api_call(
            "POST",
            self._config.base_url + path,
            kind="submit",
            model=model,
            body=body,
            async_task=True,
            timeout_s=self._config.timeout_s,
        )
        output = data.get("output")
        task_id = output.get("task_id") if isinstance(output, dict) else None
        request_id = _str_or_none(data.get("request_id"))
        if not isinstance(task_id, str) or not task_id:
            raise SubmitUncertain(
                "submit: HTTP 200 answer has no output.task_id; the task MAY have been "
                "accepted (and billed)",
                request_id=request_id,
                model=model,
            )
        log.debug("dashscope.submitted", model=model, task_id=task_id, request_id=request_id)
        return Submitted(task_id=task_id, request_id=request_id, model=model)

    async def _api_call(
        self,
        method: str,
        url: str,
        *,
        kind: str,
        timeout_s: float,
        model: str | None = None,
        body: dict[str, Any] | None = None,
        async_task: bool = False,
    ) -> dict[str, Any]:
        """One attempt against the API host: the JSON object of a 2xx answer, or a typed error."""
        host = urlsplit(url).netloc
        self._breaker.check(host)
        self._emit("request", {"kind": kind, "model": model})
        session = self._get_session()
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        started = time.monotonic()
        try:
            async with session.request(
                method,
                url,
                data=data,
                headers=self._api_headers(async_task=async_task),
                timeout=self._timeout(timeout_s),
            ) as resp:
                self._breaker.success(host)
                status = resp.status
                headers = resp.headers
                raw = await resp.read()
        except aiohttp.InvalidURL:
            # Only the configured base URL can make this: nothing else will work either.
            raise Fatal(f"{kind}: invalid API URL {_safe_where(url)!r}", model=model) from None
        except _NETWORK_ERRORS as exc:
            raise self._connect_failure(host, exc) or self._network_error(
                kind, exc, timeout_s, model
            ) from None
        except aiohttp.ClientError as exc:
            raise ServerError(
                self._redact(f"{kind}: {type(exc).__name__}: {exc}"), model=model
            ) from None
        elapsed_ms = round((time.monotonic() - started) * 1000)
        path = urlsplit(url).path
        if status >= 400:
            raise self._error_from_answer(status, raw, headers, kind=kind, model=model)

        try:
            parsed = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            # A submit or a sync call answered 2xx may have been carried out (and billed):
            # say so, so that the caller does not take a retry for free.
            kind_of = SubmitUncertain if kind in ("submit", "sync") else ServerError
            maybe = "; it MAY have been accepted (and billed)" if kind_of is SubmitUncertain else ""
            raise kind_of(
                f"{kind}: HTTP {status} answer is not JSON{maybe}: {self._redact(_snippet(raw))}",
                status=status,
                model=model,
            ) from None
        if not isinstance(parsed, dict):
            raise ServerError(f"{kind}: HTTP {status} answer is not a JSON object", model=model)
        request_id = _str_or_none(parsed.get("request_id")) or _header_request_id(headers)
        # Some gateways answer 200 with an error body: treat it as the error it names.
        if parsed.get("code") and "output" not in parsed and "choices" not in parsed:
            raise self._error_from_answer(status, raw, headers, kind=kind, model=model)
        log.debug(
            "dashscope.response",
            kind=kind,
            method=method,
            path=path,
            status=status,
            elapsed_ms=elapsed_ms,
            request_id=request_id,
            model=model,
        )
        return parsed

    async def _download_once(self, url: str) -> bytes:
        host = urlsplit(url).netloc
        self._breaker.check(host)
        self._emit("request", {"kind": "download", "model": None})
        session = self._get_session()
        where = _safe_where(url)
        cap = self._config.download_max_bytes
        started = time.monotonic()
        try:
            async with session.get(
                url,
                headers={"User-Agent": USER_AGENT, "Accept": "*/*"},
                timeout=self._timeout(self._config.timeout_s),
            ) as resp:
                self._breaker.success(host)
                if resp.status >= 400:
                    raw = await resp.content.read(_ERROR_BODY_MAX)
                    raise self._download_error(resp.status, raw, resp.headers, where)
                if resp.content_length is not None and resp.content_length > cap:
                    # Reject before reading a byte.
                    raise DownloadTooLarge(
                        f"result is {resp.content_length} bytes, over the {cap}-byte cap: {where}",
                        status=resp.status,
                    )
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    buf += chunk
                    if len(buf) > cap:  # no (or a lying) Content-Length: stop streaming
                        raise DownloadTooLarge(
                            f"result exceeds the {cap}-byte cap: {where}", status=resp.status
                        )
                status = resp.status
        except aiohttp.InvalidURL:
            raise RowFailed(f"download: invalid URL {where!r}") from None
        except _NETWORK_ERRORS as exc:
            raise self._connect_failure(host, exc) or self._network_error(
                "download", exc, self._config.timeout_s, None
            ) from None
        except aiohttp.ClientError as exc:
            # str(exc) may quote the full pre-signed URL: the type name is enough.
            raise DownloadError(f"download: {type(exc).__name__} ({where})") from None
        if not buf:
            raise DownloadError(f"download: empty body (HTTP {status}) from {where}", status=status)
        log.debug(
            "dashscope.downloaded",
            where=where,
            status=status,
            size=len(buf),
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )
        return bytes(buf)

    # ---- internals: errors and retries

    def _error_from_answer(
        self,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        *,
        kind: str,
        model: str | None,
    ) -> DashScopeError:
        code, message, request_id = _parse_error_body(raw)
        request_id = request_id or _header_request_id(headers)
        retry_after = parse_retry_after(headers, self._config.retry_after_cap_s)
        if not message:
            message = f"HTTP {status}"
        exc = classify(
            status,
            code,
            self._redact(f"{kind}: {message}"),
            retry_after=retry_after,
            request_id=request_id,
            model=model,
        )
        self._report_error(kind, exc)
        return exc

    def _download_error(
        self, status: int, raw: bytes, headers: Mapping[str, str], where: str
    ) -> DashScopeError:
        code, _, request_id = _parse_error_body(raw)
        request_id = request_id or _header_request_id(headers)
        exc: DashScopeError
        if status in (408, 429) or status >= 500:
            # The storage host is struggling: fetching again later may work.
            retry_after = parse_retry_after(headers, self._config.retry_after_cap_s)
            exc = classify(
                status,
                None,
                f"download: HTTP {status} from {where}",
                retry_after=retry_after,
                request_id=request_id,
            )
        else:
            # 403 (signature expired), 404/410 (gone) or any other refusal of a pre-signed URL:
            # the URL will never work again, the row must be submitted again.
            exc = ResultExpired(
                f"result URL refused with HTTP {status} (expired or gone): {where}",
                code=code or "",
                status=status,
                request_id=request_id,
            )
        self._report_error("download", exc)
        return exc

    def _timeout(self, total_s: float) -> aiohttp.ClientTimeout:
        # A separate connect limit, so that a host that never answers the SYN is told apart
        # from a slow answer (the circuit breaker counts only the former).
        return aiohttp.ClientTimeout(
            total=total_s, sock_connect=min(self._config.connect_timeout_s, total_s)
        )

    def _connect_failure(self, host: str, exc: BaseException) -> Fatal | None:
        """The breaker's verdict on a network error: ServiceUnreachable once it opens."""
        if not isinstance(exc, CONNECT_ERRORS):
            return None
        return self._breaker.failure(host, exc)

    def _network_error(
        self, kind: str, exc: BaseException, timeout_s: float, model: str | None
    ) -> ServerError:
        if isinstance(exc, TimeoutError):
            message = f"{kind}: no complete answer within {timeout_s:g} s ({type(exc).__name__})"
        else:
            message = f"{kind}: network error: {type(exc).__name__}: {exc}"
        error = ServerError(self._redact(message), model=model)
        self._report_error(kind, error)
        return error

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
            self._emit(
                "throttled",
                {
                    "kind": kind,
                    "model": exc.model,
                    "code": exc.code or None,
                    "retry_after": retry_after,
                    "request_id": exc.request_id,
                },
            )

    async def _retrying(
        self, kind: str, attempt_fn: Callable[[], Awaitable[T]], *, model: str | None
    ) -> T:
        """Run an idempotent attempt, retrying Retryable errors with jittered backoff
        (Retry-After honoured up to the cap by parse_retry_after)."""
        retries = 0
        while True:
            try:
                return await attempt_fn()
            except DownloadTooLarge:
                raise
            except Retryable as exc:
                if retries >= self._config.max_retries:
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

    # ---- internals: parsing and small checks

    def _parse_task(self, task_id: str, data: dict[str, Any]) -> TaskState:
        request_id = _str_or_none(data.get("request_id"))
        output = data.get("output")
        if not isinstance(output, dict):
            raise ServerError("task answer has no output object", request_id=request_id)
        status = output.get("task_status")
        if status not in _TASK_STATUSES:
            raise ServerError(
                f"task answer has an unknown output.task_status {status!r}", request_id=request_id
            )
        answered_id = output.get("task_id")
        if answered_id not in (None, "", task_id):
            raise ServerError(
                f"asked for task {task_id!r}, the answer is about {answered_id!r}",
                request_id=request_id,
            )
        urls: list[str] = []
        item_errors: list[tuple[str, str]] = []
        actual_prompts: list[str] = []
        results = output.get("results")
        for item in results if isinstance(results, list) else []:
            if not isinstance(item, dict):
                continue
            url = item.get("url")
            if isinstance(url, str) and url:
                urls.append(url)
                prompt = item.get("actual_prompt")
                if isinstance(prompt, str) and prompt:
                    actual_prompts.append(prompt)
            elif item.get("code") or item.get("message"):
                item_errors.append(
                    (
                        self._redact(str(item.get("code") or "")),
                        self._redact(str(item.get("message") or "")),
                    )
                )
        if status == "SUCCEEDED" and not urls:
            # SUCCEEDED means at least one image: an answer without one is malformed.
            raise ServerError(
                f"task {task_id} SUCCEEDED without any result URL", request_id=request_id
            )
        return TaskState(
            task_id=task_id,
            status=status,
            urls=urls,
            item_errors=item_errors,
            # A FAILED task's words come from the network: scrubbed like an error answer's,
            # since they become the row's reason (failed.csv, summary, console).
            code=_str_or_none(self._redact(str(output.get("code") or ""))),
            message=_str_or_none(self._redact(str(output.get("message") or ""))),
            actual_prompts=[scrub_text(p) for p in actual_prompts],
            request_id=request_id,
            submit_time=service_time(output.get("submit_time")),
            scheduled_time=service_time(output.get("scheduled_time")),
            end_time=service_time(output.get("end_time")),
        )

    def _emit(self, name: str, payload: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(name, payload)
        except Exception:  # a broken counter must not fail a request
            log.exception("dashscope.event_hook_failed", hook_event=name)

    @staticmethod
    def _check_n(model: str, n: int) -> None:
        # A caller's mistake, not the service's: the capability table says what one request
        # may return (qwen-image: 1, qwen-image-edit-plus: 6, wanx: 4).
        n_max = caps(model).n_max
        if not 1 <= n <= n_max:
            raise ValueError(f"n must be 1 to {n_max} for {model}, got {n}")

    @staticmethod
    def _warn_long_prompt(model: str, prompt: str) -> None:
        limit = caps(model).prompt_limit
        if len(prompt) > limit:
            log.warning(
                "dashscope.prompt_truncated_by_server", model=model, chars=len(prompt), limit=limit
            )
