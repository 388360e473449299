"""The DashScope client over an in-memory transport (tests/http_fakes.py): wire format,
errors, retries, downloads and secret hygiene. No sleeping: the retry pause is replaced to
record delays. A few tests take the real aiohttp path against a loopback server."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from http_fakes import FakeTransport, refused
from structlog.testing import capture_logs

from runner.backends.dashscope import (
    ClientConfig,
    DashScopeClient,
    DownloadTooLarge,
    Request,
    Submitted,
    SyncResult,
    TaskState,
    requester,
)
from runner.errors import (
    DashScopeError,
    DownloadError,
    Fatal,
    ModelNotServed,
    ModelRefused,
    RateLimited,
    ResultExpired,
    RowFailed,
    ServerError,
    ServiceUnreachable,
    TokensThrottled,
    Uncertain,
    WrongRoute,
)

BASE = "https://dashscope.test/api/v1"
KEY = "sk-test-VERY-SECRET-0123456789"
T2I = f"{BASE}/services/aigc/text2image/image-synthesis"
I2I = f"{BASE}/services/aigc/image2image/image-synthesis"
MM = f"{BASE}/services/aigc/multimodal-generation/generation"
CHAT = "https://dashscope.test/compatible-mode/v1/chat/completions"
RESULT = "https://oss.test/out/1.png?Expires=1700000000&Signature=abcDEF"


def task_url(task_id: str = "t-1") -> str:
    return f"{BASE}/tasks/{task_id}"


def calls(m: FakeTransport, method: str, url: str) -> list[Request]:
    return m.calls(method, url)


def sent_json(call: Request) -> dict[str, Any]:
    return call.json()


Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def events() -> Events:
    return []


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(requester, "_sleep", fake_sleep)
    return recorded


@pytest.fixture
def mocked() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
async def client(
    events: Events, delays: list[float], mocked: FakeTransport
) -> AsyncIterator[DashScopeClient]:
    config = ClientConfig(base_url=BASE, api_key=KEY, max_retries=3, download_max_bytes=1000)
    async with DashScopeClient(
        config, transport=mocked, on_event=lambda n, p: events.append((n, p))
    ) as c:
        yield c


def submitted_payload(task_id: str = "t-1") -> dict[str, Any]:
    return {"output": {"task_id": task_id, "task_status": "PENDING"}, "request_id": "r-1"}


# --------------------------------------------------------------------------- config


def test_config_derives_compatible_url_and_hides_key() -> None:
    cfg = ClientConfig(base_url=BASE + "/", api_key=f"  {KEY}\n")
    assert cfg.base_url == BASE
    assert cfg.compatible_base_url == "https://dashscope.test/compatible-mode/v1"
    assert cfg.api_key.get_secret_value() == KEY  # stripped
    assert KEY not in repr(cfg) and KEY not in str(cfg) and KEY not in cfg.model_dump_json()
    other = ClientConfig(base_url="http://127.0.0.1:8000/emu", api_key=KEY)
    assert other.compatible_base_url == "http://127.0.0.1:8000/compatible-mode/v1"
    explicit = ClientConfig(base_url=BASE, api_key=KEY, compatible_base_url="http://x/v1/")
    assert explicit.compatible_base_url == "http://x/v1"
    assert cfg.download_max_bytes == 40 * 1024 * 1024


def test_config_rejects_empty_key_and_bad_url() -> None:
    with pytest.raises(ValueError):
        ClientConfig(base_url=BASE, api_key="   ")
    with pytest.raises(ValueError):
        ClientConfig(base_url="ftp://x/api/v1", api_key=KEY)


# --------------------------------------------------------------------------- wire format


async def test_text2image_submit_body_and_headers(
    client: DashScopeClient, mocked: FakeTransport, events: Events
) -> None:
    mocked.post(T2I, payload=submitted_payload())
    sub = await client.submit_text2image("wanx2.1-t2i-turbo", "a red fox")
    assert sub == Submitted(task_id="t-1", request_id="r-1", model="wanx2.1-t2i-turbo")
    (call,) = calls(mocked, "POST", T2I)
    assert sent_json(call) == {
        "model": "wanx2.1-t2i-turbo",
        "input": {"prompt": "a red fox"},
        "parameters": {"size": "1024*1024", "n": 1, "prompt_extend": True, "watermark": False},
    }
    headers = call.headers
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-DashScope-Async"] == "enable"
    assert headers["User-Agent"].startswith("runner/")
    assert events == [("request", {"kind": "submit", "model": "wanx2.1-t2i-turbo"})]


async def test_text2image_optional_fields(client: DashScopeClient, mocked: FakeTransport) -> None:
    mocked.post(T2I, payload=submitted_payload())
    await client.submit_text2image(
        "qwen-image",
        "猫",
        negative_prompt="blurry",
        size="1328*1328",
        n=1,
        seed=42,
        prompt_extend=False,
    )
    body = sent_json(calls(mocked, "POST", T2I)[0])
    assert body["input"] == {"prompt": "猫", "negative_prompt": "blurry"}
    assert body["parameters"] == {
        "size": "1328*1328",
        "n": 1,
        "prompt_extend": False,
        "watermark": False,
        "seed": 42,
    }


async def test_image_edit_uses_image2image_path(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    mocked.post(I2I, payload=submitted_payload("t-9"))
    image = "data:image/png;base64,iVBORw0KGgo="
    sub = await client.submit_image_edit("wanx2.1-imageedit", "make it night", image, n=2, seed=7)
    assert sub.task_id == "t-9"
    assert calls(mocked, "POST", T2I) == []
    (call,) = calls(mocked, "POST", I2I)
    assert sent_json(call) == {
        "model": "wanx2.1-imageedit",
        "input": {
            "function": "description_edit",
            "prompt": "make it night",
            "base_image_url": image,
        },
        "parameters": {"n": 2, "watermark": False, "strength": 0.5, "seed": 7},
    }
    assert call.headers["X-DashScope-Async"] == "enable"


async def test_multimodal_edit_is_sync_and_parsed(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    answer = {
        "output": {
            "choices": [
                {"message": {"role": "assistant", "content": [{"image": "https://oss.test/a.png"}]}}
            ]
        },
        "request_id": "r-mm",
    }
    mocked.post(MM, payload=answer)
    res = await client.multimodal(
        "qwen-image-edit", "把招牌文字改为“OPEN”", ["https://img.test/in.png"], negative_prompt="x"
    )
    assert res == SyncResult(
        urls=["https://oss.test/a.png"], request_id="r-mm", model="qwen-image-edit"
    )
    (call,) = calls(mocked, "POST", MM)
    assert "X-DashScope-Async" not in call.headers
    assert call.timeout_s == client.config.sync_timeout_s
    assert sent_json(call) == {
        "model": "qwen-image-edit",
        "input": {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"image": "https://img.test/in.png"},
                        {"text": "把招牌文字改为“OPEN”"},
                    ],
                }
            ]
        },
        "parameters": {"n": 1, "watermark": False, "negative_prompt": "x"},
    }


async def test_multimodal_without_image_is_server_error(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    mocked.post(MM, payload={"output": {"choices": []}, "request_id": "r"})
    with pytest.raises(ServerError, match=r"no output\.choices"):
        await client.multimodal("qwen-image-edit", "p", ["https://img.test/in.png"])


# --------------------------------------------------------------------------- errors


# The reference's error table (shared/reference/dashscope.md, "Errors"), by code AND message.
ERROR_TABLE = [
    (400, "InvalidParameter", "msg", RowFailed),
    (400, "InvalidParameter", "Model not exist.", ModelNotServed),  # not served in the region
    # input or output inappropriate: another model (or a changed prompt) may pass
    (400, "DataInspectionFailed", "msg", ModelRefused),
    # not moderation: the media download timed out during inspection: send again
    (400, "InvalidParameter.DataInspection", "msg", ServerError),
    (400, "IPInfringementSuspect", "msg", ModelRefused),
    (400, "Arrearage", "msg", Fatal),
    (400, "BadRequest.InputDownloadFailed", "msg", RowFailed),  # input errors: 400 now ...
    (400, "BadRequest.UnsupportedFileFormat", "msg", RowFailed),
    (415, "BadRequest.InputDownloadFailed", "msg", RowFailed),  # ... 415 in older docs
    (415, "BadRequest.UnsupportedFileFormat", "msg", RowFailed),
    (401, "InvalidApiKey", "msg", Fatal),
    (403, "AccessDenied", "msg", ModelNotServed),
    # the wrong route for the model: a request bug, fixed by the lifecycle
    (403, "AccessDenied", "current user api does not support synchronous calls", WrongRoute),
    (403, "AccessDenied", "current user api does not support asynchronous calls", WrongRoute),
    (429, "Throttling.ConcurrencyLimit", "msg", RateLimited),  # undocumented: by its prefix
    (403, "Model.AccessDenied", "msg", ModelNotServed),
    (403, "AccessDenied.Unpurchased", "msg", ModelNotServed),
    (403, "AllocationQuota.FreeTierOnly", "msg", ModelNotServed),
    (404, "ModelNotFound", "msg", ModelNotServed),
    (429, "Throttling", "msg", RateLimited),
    (429, "Throttling.RateQuota", "msg", RateLimited),
    (429, "Throttling.BurstRate", "msg", RateLimited),
    (429, "Throttling.AllocationQuota", "msg", TokensThrottled),  # tokens a minute: a pause
    (429, "Throttling.AllocationQuota", "Free allocated quota exceeded.", ModelNotServed),
    (429, "CommodityNotPurchased", "msg", Fatal),
    (429, "PrepaidBillOverdue", "msg", Fatal),
    (429, "PostpaidBillOverdue", "msg", Fatal),
    (500, "InternalError", "msg", ServerError),
    (500, "InternalError.Algo", "msg", ServerError),
    (500, "InternalError.Timeout", "msg", ServerError),
    (500, "SystemError", "msg", ServerError),
    (503, "ModelUnavailable", "msg", ServerError),
    (503, "ModelServingError", "msg", ServerError),
]


@pytest.mark.parametrize(("status", "code", "message", "kind"), ERROR_TABLE)
async def test_error_table_on_submit(
    client: DashScopeClient,
    mocked: FakeTransport,
    status: int,
    code: str,
    message: str,
    kind: type[DashScopeError],
) -> None:
    message = f"msg for {code}" if message == "msg" else message
    body = {"code": code, "message": message, "request_id": "r-err"}
    mocked.post(T2I, status=status, payload=body)
    with pytest.raises(kind) as info:
        await client.submit_text2image("wanx2.1-t2i-turbo", "p")
    exc = info.value
    assert type(exc) is kind
    assert (exc.code, exc.status, exc.request_id, exc.model) == (
        code,
        status,
        "r-err",
        "wanx2.1-t2i-turbo",
    )
    assert message.rstrip(".") in str(exc)
    if kind is TokensThrottled:  # no Retry-After: the client still says how long to pause
        assert isinstance(exc, TokensThrottled) and 10 <= (exc.retry_after or 0) <= 60
    assert len(calls(mocked, "POST", T2I)) == 1  # POST: never retried in the client


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (502, "<html><body>Bad Gateway</body></html>", ServerError),
        (504, "", ServerError),
        (400, "not json at all", RowFailed),
        (401, "", Fatal),
    ],
)
async def test_non_json_error_bodies(
    client: DashScopeClient,
    mocked: FakeTransport,
    status: int,
    body: str,
    kind: type[DashScopeError],
) -> None:
    mocked.post(T2I, status=status, body=body, content_type="text/html")
    with pytest.raises(kind) as info:
        await client.submit_text2image("m", "p")
    assert info.value.status == status
    assert str(status) in str(info.value)
    if body:  # a short, whitespace-collapsed snippet of the body explains the failure
        assert ("Bad Gateway" if status == 502 else body) in str(info.value)


async def test_submit_answer_without_task_id(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    # A 200 submit whose answer cannot be read: the task may exist and be billed.
    mocked.post(T2I, payload={"output": {"task_status": "PENDING"}, "request_id": "r"})
    with pytest.raises(Uncertain, match=r"task_id.*MAY have been accepted"):
        await client.submit_text2image("m", "p")
    mocked.post(T2I, status=200, body="<html>", content_type="text/html")
    with pytest.raises(Uncertain, match=r"not JSON.*MAY have been accepted"):
        await client.submit_text2image("m", "p")
    mocked.post(MM, status=200, body="{truncated", content_type="application/json")
    with pytest.raises(Uncertain):
        await client.multimodal("qwen-image-edit", "p", ["https://img.test/in.png"])
    assert len(calls(mocked, "POST", T2I)) == 2  # never retried in the client


async def test_429_on_submit_raises_once_with_retry_after(
    client: DashScopeClient, mocked: FakeTransport, events: Events, delays: list[float]
) -> None:
    mocked.post(
        T2I,
        status=429,
        payload={"code": "Throttling.RateQuota", "message": "slow down", "request_id": "r"},
        headers={"Retry-After": "7"},
    )
    with pytest.raises(RateLimited) as info:
        await client.submit_text2image("wan2.2-t2i-flash", "p")
    assert info.value.retry_after == 7.0
    assert len(calls(mocked, "POST", T2I)) == 1
    assert delays == []
    throttled = [p for n, p in events if n == "throttled"]
    assert throttled == [
        {
            "kind": "submit",
            "model": "wan2.2-t2i-flash",
            "code": "Throttling.RateQuota",
            "retry_after": 7.0,
            "request_id": "r",
        }
    ]


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientConnectionError("reset"),
        aiohttp.ServerDisconnectedError(),
        TimeoutError(),
        aiohttp.ClientPayloadError("truncated"),
    ],
)
async def test_a_lost_answer_to_a_paid_call_is_uncertain_and_not_retried(
    client: DashScopeClient, mocked: FakeTransport, exc: Exception
) -> None:
    """Any failure once the connection is made may come after the service took the request:
    a submit (or a sync call) is then Uncertain, never resent here."""
    mocked.post(T2I, exception=exc)
    mocked.post(T2I, payload=submitted_payload())  # would succeed if (wrongly) retried
    with pytest.raises(Uncertain, match="MAY have been accepted"):
        await client.submit_text2image("m", "p")
    assert len(calls(mocked, "POST", T2I)) == 1


async def test_a_connect_failure_sent_nothing_and_is_retryable(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    mocked.post(T2I, exception=refused(T2I))
    with pytest.raises(ServerError) as info:
        await client.submit_text2image("m", "p")
    assert not isinstance(info.value, Uncertain)


async def test_sync_and_chat_not_retried(client: DashScopeClient, mocked: FakeTransport) -> None:
    mocked.post(MM, status=500, payload={"code": "InternalError", "message": "boom"})
    with pytest.raises(ServerError):
        await client.multimodal("qwen-image-edit", "p", ["https://img.test/a.png"])
    assert len(calls(mocked, "POST", MM)) == 1
    mocked.post(CHAT, status=429, payload={"error": {"code": "limit_requests", "message": "x"}})
    with pytest.raises(RateLimited):
        await client.chat("qwen-vl-max", [{"role": "user", "content": "hi"}])
    assert len(calls(mocked, "POST", CHAT)) == 1


# --------------------------------------------------------------------------- GET retries


async def test_poll_retries_honour_retry_after_then_succeed(
    client: DashScopeClient, mocked: FakeTransport, events: Events, delays: list[float]
) -> None:
    url = task_url()
    mocked.get(url, status=429, payload={"code": "Throttling"}, headers={"Retry-After": "3"})
    mocked.get(url, status=500, payload={"code": "InternalError"})
    mocked.get(url, exception=aiohttp.ServerDisconnectedError())
    mocked.get(url, payload={"output": {"task_id": "t-1", "task_status": "RUNNING"}})
    state = await client.fetch_task("t-1")
    assert state.status == "RUNNING"
    assert len(calls(mocked, "GET", url)) == 4
    assert delays[0] == 3.0  # the server's Retry-After, not the backoff
    assert 0.75 <= delays[1] <= 1.0  # 0.5 * 2**1 with jitter in [0.75, 1]
    assert 1.5 <= delays[2] <= 2.0
    retries = [p for n, p in events if n == "retry"]
    assert [r["attempt"] for r in retries] == [1, 2, 3]
    assert [r["error"] for r in retries] == ["RateLimited", "ServerError", "ServerError"]
    assert sum(1 for n, _ in events if n == "request") == 4
    assert sum(1 for n, _ in events if n == "throttled") == 1


async def test_retry_after_above_cap_falls_back_to_backoff(
    client: DashScopeClient, mocked: FakeTransport, delays: list[float]
) -> None:
    url = task_url()
    mocked.get(url, status=429, payload={"code": "Throttling"}, headers={"Retry-After": "600"})
    mocked.get(url, payload={"output": {"task_id": "t-1", "task_status": "PENDING"}})
    await client.fetch_task("t-1")
    assert len(delays) == 1 and 0.375 <= delays[0] <= 0.5


async def test_poll_retries_exhausted(
    client: DashScopeClient, mocked: FakeTransport, delays: list[float]
) -> None:
    url = task_url()
    mocked.get(url, status=503, payload={"code": "ModelUnavailable"}, repeat=True)
    with pytest.raises(ServerError) as info:
        await client.fetch_task("t-1")
    assert info.value.code == "ModelUnavailable"
    assert len(calls(mocked, "GET", url)) == 4  # 1 + max_retries
    assert len(delays) == 3


async def test_poll_non_retryable_error_raises_at_once(
    client: DashScopeClient, mocked: FakeTransport, delays: list[float]
) -> None:
    mocked.get(task_url(), status=401, payload={"code": "InvalidApiKey", "message": "bad key"})
    with pytest.raises(Fatal):
        await client.fetch_task("t-1")
    assert len(calls(mocked, "GET", task_url())) == 1
    assert delays == []


# --------------------------------------------------------------------------- task states


async def test_failed_task_is_returned_not_raised(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    mocked.get(
        task_url(),
        payload={
            "request_id": "r-f",
            "output": {
                "task_id": "t-1",
                "task_status": "FAILED",
                "code": "DataInspectionFailed",
                "message": "Output data may contain inappropriate content.",
            },
        },
    )
    state = await client.fetch_task("t-1")
    assert state == TaskState(
        task_id="t-1",
        status="FAILED",
        code="DataInspectionFailed",
        message="Output data may contain inappropriate content.",
        request_id="r-f",
    )
    assert state.terminal and state.urls == []


async def test_partial_success_parsed(client: DashScopeClient, mocked: FakeTransport) -> None:
    mocked.get(
        task_url(),
        payload={
            "request_id": "r-s",
            "output": {
                "task_id": "t-1",
                "task_status": "SUCCEEDED",
                "results": [
                    {"url": "https://oss.test/1.png?Expires=1", "actual_prompt": "a fox, detailed"},
                    {"code": "InternalError.Timeout", "message": "item timed out"},
                    {"url": "https://oss.test/2.png?Expires=1"},
                ],
                "task_metrics": {"TOTAL": 3, "SUCCEEDED": 2, "FAILED": 1},
            },
            "usage": {"image_count": 2},
        },
    )
    state = await client.fetch_task("t-1")
    assert state.status == "SUCCEEDED"
    assert state.urls == ["https://oss.test/1.png?Expires=1", "https://oss.test/2.png?Expires=1"]
    assert state.item_errors == [("InternalError.Timeout", "item timed out")]
    assert state.actual_prompts == ["a fox, detailed"]
    assert state.request_id == "r-s"


async def test_unknown_and_pending_states(client: DashScopeClient, mocked: FakeTransport) -> None:
    mocked.get(task_url(), payload={"output": {"task_id": "t-1", "task_status": "UNKNOWN"}})
    state = await client.fetch_task("t-1")
    assert state.status == "UNKNOWN" and state.terminal
    mocked.get(task_url(), payload={"output": {"task_id": "t-1", "task_status": "PENDING"}})
    state = await client.fetch_task("t-1")
    assert state.status == "PENDING" and not state.terminal


@pytest.mark.parametrize(
    "payload",
    [
        {"request_id": "r"},
        {"output": {"task_id": "t-1"}},
        {"output": {"task_id": "t-1", "task_status": "WEIRD"}},
        {"output": {"task_id": "t-1", "task_status": "SUCCEEDED", "results": []}},
        {"output": {"task_id": "t-other", "task_status": "RUNNING"}},
    ],
)
async def test_malformed_poll_answers(
    mocked: FakeTransport, delays: list[float], payload: dict[str, Any]
) -> None:
    config = ClientConfig(base_url=BASE, api_key=KEY, max_retries=0)
    async with DashScopeClient(config, transport=mocked) as c:
        mocked.get(task_url(), payload=payload)
        with pytest.raises(ServerError):
            await c.fetch_task("t-1")


# --------------------------------------------------------------------------- downloads


async def test_download_sends_no_auth_header(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    mocked.get(RESULT, body=b"\x89PNG fake bytes", content_type="image/png")
    data = await client.download(RESULT)
    assert data == b"\x89PNG fake bytes"
    (call,) = calls(mocked, "GET", RESULT)
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert "authorization" not in headers
    assert KEY not in repr((call.url, dict(call.headers), call.body))  # nothing sent has it


async def test_download_content_length_over_cap_rejected_early(
    client: DashScopeClient, mocked: FakeTransport, delays: list[float]
) -> None:
    mocked.get(RESULT, body=b"x" * 10, headers={"Content-Length": "5000"})
    with pytest.raises(DownloadTooLarge) as info:
        await client.download(RESULT)
    assert isinstance(info.value, DownloadError)
    assert len(calls(mocked, "GET", RESULT)) == 1 and delays == []  # not retried


async def test_download_streaming_over_cap(client: DashScopeClient, mocked: FakeTransport) -> None:
    mocked.get(RESULT, body=b"x" * 5000)  # no Content-Length: the stream must be cut
    with pytest.raises(DownloadError, match="cap"):
        await client.download(RESULT)
    assert len(calls(mocked, "GET", RESULT)) == 1


async def test_download_at_cap_is_fine(client: DashScopeClient, mocked: FakeTransport) -> None:
    mocked.get(RESULT, body=b"y" * 1000)
    assert len(await client.download(RESULT)) == 1000


@pytest.mark.parametrize(
    "url", ["data:image/png;base64,AAAA", "file:///etc/passwd", "ftp://h/x.png", "oss://k/x"]
)
async def test_download_refuses_non_http(
    client: DashScopeClient, mocked: FakeTransport, url: str
) -> None:
    with pytest.raises(RowFailed):
        await client.download(url)
    assert mocked.requests == []


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_download_expired_url(
    client: DashScopeClient, mocked: FakeTransport, status: int, delays: list[float]
) -> None:
    xml = "<Error><Code>AccessDenied</Code><Message>Request has expired.</Message></Error>"
    mocked.get(RESULT, status=status, body=xml, content_type="application/xml")
    with pytest.raises(ResultExpired) as info:
        await client.download(RESULT)
    assert info.value.status == status
    assert "Signature" not in str(info.value)  # pre-signed query stays out of messages
    assert len(calls(mocked, "GET", RESULT)) == 1 and delays == []


async def test_download_retries_server_errors(
    client: DashScopeClient, mocked: FakeTransport, delays: list[float]
) -> None:
    mocked.get(RESULT, status=503, body="busy")
    mocked.get(RESULT, exception=aiohttp.ClientPayloadError("cut"))
    mocked.get(RESULT, body=b"png")
    assert await client.download(RESULT) == b"png"
    assert len(delays) == 2


async def test_download_empty_body_is_download_error(
    mocked: FakeTransport, delays: list[float]
) -> None:
    config = ClientConfig(base_url=BASE, api_key=KEY, max_retries=0)
    async with DashScopeClient(config, transport=mocked) as c:
        mocked.get(RESULT, body=b"")
        with pytest.raises(DownloadError, match="empty"):
            await c.download(RESULT)


# --------------------------------------------------------------------------- chat


async def test_chat_parses_content(client: DashScopeClient, mocked: FakeTransport) -> None:
    answer = {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"score": 4}'}}],
    }
    mocked.post(CHAT, payload=answer)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA"}},
                {"type": "text", "text": "score it"},
            ],
        }
    ]
    assert await client.chat("qwen-vl-max", messages, max_completion_tokens=64) == '{"score": 4}'
    (call,) = calls(mocked, "POST", CHAT)
    assert sent_json(call) == {
        "model": "qwen-vl-max",
        "messages": messages,
        "temperature": 0.0,
        "max_completion_tokens": 64,
    }
    assert call.headers["Authorization"] == f"Bearer {KEY}"
    mocked.post(
        CHAT, payload={"choices": [{"message": {"content": [{"text": "a"}, {"text": "b"}]}}]}
    )
    assert await client.chat("qwen-vl-max", messages) == "ab"
    mocked.post(CHAT, payload={"choices": []})
    with pytest.raises(ServerError):
        await client.chat("qwen-vl-max", messages)


async def test_chat_compatible_error_shape(client: DashScopeClient, mocked: FakeTransport) -> None:
    err = {"error": {"code": "invalid_api_key", "message": "Incorrect API key provided."}}
    mocked.post(CHAT, status=401, payload=err)
    with pytest.raises(Fatal) as info:
        await client.chat("qwen-vl-max", [{"role": "user", "content": "hi"}])
    assert info.value.code == "InvalidApiKey"
    err = {"error": {"code": "data_inspection_failed", "message": "inappropriate"}}
    mocked.post(CHAT, status=400, payload=err)
    with pytest.raises(ModelRefused):
        await client.chat("qwen-vl-max", [{"role": "user", "content": "hi"}])


# --------------------------------------------------------------------------- secrets, lifecycle


async def test_key_never_leaks(mocked: FakeTransport, delays: list[float]) -> None:
    events: Events = []
    config = ClientConfig(base_url=BASE, api_key=KEY, max_retries=1)
    with capture_logs() as logs:
        async with DashScopeClient(
            config, transport=mocked, on_event=lambda n, p: events.append((n, p))
        ) as c:
            assert KEY not in repr(c) and KEY not in str(c)
            # A server that echoes the key (and the header) back in its error message.
            echo = {
                "code": "InvalidApiKey",
                "message": f"bad key {KEY} (Authorization: Bearer {KEY})",
            }
            mocked.post(T2I, status=401, payload=echo)
            with pytest.raises(Fatal) as info:
                await c.submit_text2image("m", "p")
            texts = [str(info.value), repr(info.value), repr(info.value.args)]
            mocked.get(task_url(), status=500, body=f"oops {KEY}", repeat=True)
            with pytest.raises(ServerError) as info2:
                await c.fetch_task("t-1")
            texts += [str(info2.value), repr(info2.value)]
            mocked.post(CHAT, status=429, payload={"error": {"message": KEY}})
            with pytest.raises(RateLimited) as info3:
                await c.chat("qwen-vl-max", [])
            texts.append(str(info3.value))
            mocked.get(RESULT, exception=aiohttp.ClientConnectionError("reset"), repeat=True)
            with pytest.raises(ServerError):
                await c.download(RESULT)
    assert logs, "the client logs its errors and retries"
    blob = "\n".join(texts) + repr(logs) + repr(events)
    assert KEY not in blob
    assert not re.search(r"Bearer\s+sk-", blob)
    assert "Signature=abcDEF" not in blob  # pre-signed query strings stay out of logs too


async def test_event_hook_failure_does_not_fail_request(mocked: FakeTransport) -> None:
    def broken(name: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("counter bug")

    config = ClientConfig(base_url=BASE, api_key=KEY)
    async with DashScopeClient(config, transport=mocked, on_event=broken) as c:
        mocked.post(T2I, payload=submitted_payload())
        assert (await c.submit_text2image("m", "p")).task_id == "t-1"


@contextlib.asynccontextmanager
async def loopback_submits() -> AsyncIterator[str]:
    """A loopback server that accepts text2image submits; yields its base URL."""

    async def submit(request: web.Request) -> web.Response:
        return web.json_response(submitted_payload())

    app = web.Application()
    app.router.add_post("/api/v1/services/aigc/text2image/image-synthesis", submit)
    async with TestServer(app) as server:
        yield str(server.make_url("/api/v1"))


async def test_given_session_is_not_closed_and_own_session_is() -> None:
    async with loopback_submits() as base:
        config = ClientConfig(base_url=base, api_key=KEY)
        async with aiohttp.ClientSession() as session:
            async with DashScopeClient(config, session=session) as c:
                await c.submit_text2image("m", "p")
            assert not session.closed
        own = DashScopeClient(config)
        await own.submit_text2image("m", "p")  # session created lazily inside the loop
        inner = own._transport._session  # type: ignore[attr-defined]
        assert inner is not None and not inner.closed
        await own.close()
        assert inner.closed


def test_a_session_and_a_transport_are_exclusive(mocked: FakeTransport) -> None:
    config = ClientConfig(base_url=BASE, api_key=KEY)
    with pytest.raises(ValueError, match="not both"):
        DashScopeClient(config, session=object(), transport=mocked)  # type: ignore[arg-type]


async def test_a_request_shows_neither_the_key_nor_a_signature(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    mocked.post(T2I, payload=submitted_payload())
    mocked.get(RESULT, body=b"png")
    await client.submit_text2image("m", "p")
    await client.download(RESULT)
    submit, download = mocked.requests
    assert submit.headers["Authorization"] == f"Bearer {KEY}"  # sent, but never shown
    assert KEY not in repr(submit) and "Signature" not in repr(download)


async def test_invalid_n_rejected(client: DashScopeClient) -> None:
    with pytest.raises(ValueError):
        await client.submit_text2image("m", "p", n=0)


# --------------------------------------------------------------------------- real loopback server


async def test_against_real_loopback_server(delays: list[float]) -> None:
    """The fake transport stands in for aiohttp's request path; check the real one once
    (headers on the wire, chunked streaming past the cap, a read timeout)."""
    seen: dict[str, Any] = {}

    async def submit(request: web.Request) -> web.Response:
        seen["submit"] = dict(request.headers)
        seen["body"] = await request.json()
        return web.json_response(submitted_payload())

    async def result(request: web.Request) -> web.StreamResponse:
        seen["download"] = dict(request.headers)
        resp = web.StreamResponse()  # chunked: no Content-Length to reject early
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"z" * 500)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/v1/services/aigc/text2image/image-synthesis", submit)
    app.router.add_get("/result.png", result)
    app.router.add_get("/api/v1/tasks/slow", slow)
    async with TestServer(app) as server:
        base = str(server.make_url("/api/v1"))
        config = ClientConfig(
            base_url=base, api_key=KEY, download_max_bytes=2000, timeout_s=0.2, max_retries=0
        )
        async with DashScopeClient(config) as c:
            assert (await c.submit_text2image("m", "p")).task_id == "t-1"
            with pytest.raises(DownloadTooLarge):
                await c.download(str(server.make_url("/result.png")) + "?Signature=s")
            with pytest.raises(ServerError, match="no complete answer"):
                await c.fetch_task("slow")
    assert seen["submit"]["Authorization"] == f"Bearer {KEY}"
    assert seen["submit"]["X-DashScope-Async"] == "enable"
    assert seen["body"]["parameters"]["n"] == 1
    assert "Authorization" not in seen["download"]
    assert seen["download"]["User-Agent"].startswith("runner/")


# --------------------------------------------------------------------------- issue 10


async def test_poll_carries_service_timestamps(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    output = {
        "task_id": "t-1",
        "task_status": "SUCCEEDED",
        "submit_time": "2025-01-08 16:03:59.840",
        "scheduled_time": "2025-01-08 16:03:59.863",
        "end_time": "2025-01-08 16:04:10.660",
        "results": [{"url": RESULT}],
    }
    mocked.get(task_url(), payload={"output": output, "request_id": "r"})
    state = await client.fetch_task("t-1")
    # Beijing time (UTC+8): 16:03:59.840 there is 08:03:59.840 UTC.
    assert state.submit_time == pytest.approx(1736323439.840)
    assert state.scheduled_time == pytest.approx(1736323439.863)
    assert state.end_time is not None and state.end_time - state.submit_time == pytest.approx(10.82)
    mocked.get(task_url(), payload={"output": {"task_id": "t-1", "task_status": "PENDING"}})
    pending = await client.fetch_task("t-1")
    assert (pending.submit_time, pending.end_time) == (None, None)


async def test_poll_answer_not_json_is_retried(
    client: DashScopeClient, mocked: FakeTransport, delays: list[float]
) -> None:
    mocked.get(task_url(), status=200, body="<html>gateway</html>", content_type="text/html")
    mocked.get(task_url(), payload={"output": {"task_id": "t-1", "task_status": "RUNNING"}})
    assert (await client.fetch_task("t-1")).status == "RUNNING"
    assert len(delays) == 1


async def test_qwen_image_edit_plus_takes_n(client: DashScopeClient, mocked: FakeTransport) -> None:
    urls = [f"https://oss.test/{i}.png?Signature=s" for i in range(3)]
    answer = {
        "output": {"choices": [{"message": {"content": [{"image": u} for u in urls]}}]},
        "request_id": "r",
    }
    mocked.post(MM, payload=answer)
    result = await client.multimodal(
        "qwen-image-edit-plus", "add a hat", ["https://img.test/in.png"], n=3, seed=5
    )
    assert result.urls == urls
    params = sent_json(calls(mocked, "POST", MM)[0])["parameters"]
    assert (params["n"], params["seed"]) == (3, 5)
    with pytest.raises(ValueError, match="1 to 1"):
        await client.multimodal("qwen-image-edit", "p", ["https://img.test/in.png"], n=2)
    with pytest.raises(ValueError, match="1 to 6"):
        await client.multimodal("qwen-image-edit-plus", "p", ["https://img.test/i.png"], n=7)
    with pytest.raises(ValueError, match="1 to 1"):
        await client.submit_text2image("qwen-image", "p", n=2)


async def test_images_edit_body(client: DashScopeClient, mocked: FakeTransport) -> None:
    mocked.post(I2I, payload=submitted_payload())
    await client.submit_images_edit(
        "wan2.5-i2i-preview", "paint it blue", ["https://img.test/a.png"], n=2, seed=9
    )
    call = calls(mocked, "POST", I2I)[0]
    body = sent_json(call)
    assert body["input"] == {"prompt": "paint it blue", "images": ["https://img.test/a.png"]}
    # it takes prompt_extend: always sent, false unless asked
    assert body["parameters"] == {"n": 2, "watermark": False, "seed": 9, "prompt_extend": False}
    assert call.headers["X-DashScope-Async"] == "enable"


async def test_foreign_keys_in_answers_are_redacted(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    other = "sk-0123456789abcdefOTHER"
    body = {"code": "InvalidParameter", "message": f"bad key {other} / Bearer {other}"}
    mocked.post(T2I, status=400, payload=body)
    with capture_logs() as logs, pytest.raises(RowFailed) as info:
        await client.submit_text2image("wanx2.1-t2i-turbo", "p")
    assert other not in str(info.value) and "[redacted]" in str(info.value)
    assert other not in repr(logs)


def test_invalid_api_key_message_has_one_period() -> None:
    from runner.errors import classify

    err = classify(401, "InvalidApiKey", "Invalid API-key provided.")
    assert isinstance(err, Fatal)
    assert f"Run stopped: {err}.".endswith("Invalid API-key provided.")
    assert ".." not in f"Run stopped: {err}."


# --------------------------------------------------------------------------- circuit breaker


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_breaker_stops_on_a_dead_host(delays: list[float]) -> None:
    port = _closed_port()
    events: Events = []
    config = ClientConfig(
        base_url=f"http://127.0.0.1:{port}/api/v1",
        api_key=KEY,
        max_retries=0,
        breaker_window_s=0.3,
    )
    async with DashScopeClient(config, on_event=lambda n, p: events.append((n, p))) as c:
        with pytest.raises(ServerError, match="network error"):
            await c.fetch_task("t-1")  # a refusal: retryable, the host may come back
        with pytest.raises(ServerError):
            await c.submit_text2image("wanx2.1-t2i-turbo", "p")
        await asyncio.sleep(0.35)  # the window: only connection failures for 0.3 s
        with capture_logs() as logs, pytest.raises(ServiceUnreachable) as info:
            await c.fetch_task("t-1")
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "ClientConnectorError" in str(info.value) and isinstance(info.value, Fatal)
        assert [e["event"] for e in logs].count("dashscope.unreachable") == 1
        sent = len([e for e in events if e[0] == "request"])
        for call in (c.fetch_task("t-2"), c.download(f"http://127.0.0.1:{port}/r.png")):
            with pytest.raises(ServiceUnreachable):
                await call
        assert len([e for e in events if e[0] == "request"]) == sent  # no request was made


def test_breaker_needs_a_streak_without_success() -> None:
    from runner.backends.dashscope.breaker import HostBreaker

    now = [0.0]
    breaker = HostBreaker(window_s=30, min_failures=3, clock=lambda: now[0])
    refused = aiohttp.ClientConnectionError("refused")
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert breaker.failure("h", refused) is None
    breaker.success("h")  # an answer in between: the streak starts again
    for t in (31.0, 40.0, 50.0):
        now[0] = t
        assert breaker.failure("h", refused) is None
    now[0] = 61.0
    assert isinstance(breaker.failure("h", refused), ServiceUnreachable)
    with pytest.raises(ServiceUnreachable):
        breaker.check("h")
    breaker.check("other-host")  # per host


async def test_failed_task_words_are_scrubbed(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    other = "sk-0123456789abcdefOTHER"
    output = {
        "task_id": "t-1",
        "task_status": "FAILED",
        "code": "InternalError",
        "message": f"echo {KEY} and {other} and Bearer {other}",
    }
    mocked.get(task_url(), payload={"output": output})
    state = await client.fetch_task("t-1")
    assert state.status == "FAILED" and state.message is not None
    for secret in (KEY, other):
        assert secret not in state.message
    assert state.message.startswith("echo [redacted]")
