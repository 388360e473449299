"""Requests as the 2026 catalogue says (issue 23), on an in-memory transport: each model on
its route, the image-generation interface and its ``choices`` answers, prompt_extend sent
explicitly where it is taken, the poll answer that names no (or another) task, SUSPENDED,
and the route the service refuses fixed by the lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from http_fakes import FakeTransport

from runner.backends.dashscope import ClientConfig, DashScopeClient, SyncResult
from runner.backends.dashscope.client import send_image_request
from runner.errors import ServerError, WrongRoute
from runner.models import caps
from runner.scheduling.lifecycle import Lifecycle, Request

BASE = "https://dashscope.test/api/v1"
T2I = f"{BASE}/services/aigc/text2image/image-synthesis"
MM = f"{BASE}/services/aigc/multimodal-generation/generation"
GEN = f"{BASE}/services/aigc/image-generation/generation"
IMG = "https://oss.test/out/1.png?Expires=1&Signature=x"
SRC = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
def mocked() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
async def client(mocked: FakeTransport) -> AsyncIterator[DashScopeClient]:
    config = ClientConfig(base_url=BASE, api_key="sk-test-0123456789", max_retries=0)
    async with DashScopeClient(config, transport=mocked) as c:
        yield c


def choices(*urls: str) -> dict[str, Any]:
    content = [{"image": u, "type": "image"} for u in urls]
    return {
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": content}}]
    }


def submitted(task_id: str = "t-1") -> dict[str, Any]:
    return {"output": {"task_id": task_id, "task_status": "PENDING"}, "request_id": "r"}


async def send(client: DashScopeClient, model: str, **kw: Any) -> Any:
    found = caps(model)
    return await send_image_request(
        client, model, "a red fox", sync=found.sync, input_style=found.input_style, **kw
    )


async def test_qwen_image_t2i_goes_sync_with_one_text_item(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    mocked.post(MM, payload={"output": choices(IMG), "request_id": "r"})
    answer = await send(client, "qwen-image-plus", size="1328*1328")
    assert isinstance(answer, SyncResult) and answer.urls == [IMG]
    (call,) = mocked.calls("POST", MM)
    assert "X-DashScope-Async" not in call.headers
    body = call.json()
    assert body["input"] == {"messages": [{"role": "user", "content": [{"text": "a red fox"}]}]}
    assert body["parameters"] == {
        "n": 1,
        "watermark": False,
        "prompt_extend": False,  # taken by qwen-image: always sent, false unless asked
        "size": "1328*1328",
    }


async def test_wan26_goes_to_the_image_generation_interface_and_its_poll_has_choices(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    mocked.post(GEN, payload=submitted())
    answer = await send(client, "wan2.6-image", source=SRC, prompt_extend=True)
    assert answer.task_id == "t-1"
    (call,) = mocked.calls("POST", GEN)
    assert call.headers["X-DashScope-Async"] == "enable"
    content = call.json()["input"]["messages"][0]["content"]
    assert content == [{"image": SRC}, {"text": "a red fox"}]
    assert "prompt_extend" not in call.json()["parameters"]  # wan2.6-image: not taken
    output = {"task_id": "t-1", "task_status": "SUCCEEDED", "finished": True, **choices(IMG)}
    mocked.get(f"{BASE}/tasks/t-1", payload={"output": output, "request_id": "r"})
    state = await client.fetch_task("t-1")
    assert (state.status, state.urls) == ("SUCCEEDED", [IMG])


async def test_prompt_extend_is_sent_only_to_models_that_take_it(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    mocked.post(MM, payload={"output": choices(IMG)}, repeat=True)
    await send(client, "qwen-image-edit", source=SRC, prompt_extend=True)
    await send(client, "qwen-image-edit-plus", source=SRC)
    await send(client, "qwen-image-edit-plus", source=SRC, prompt_extend=True)
    sent = [c.json()["parameters"] for c in mocked.calls("POST", MM)]
    assert "prompt_extend" not in sent[0]  # qwen-image-edit does not take it
    assert sent[1]["prompt_extend"] is False  # the service's default (true) is not left
    assert sent[2]["prompt_extend"] is True
    assert all(p["watermark"] is False for p in sent)


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ({"task_status": "SUCCEEDED", "results": [{"url": IMG}]}, "names no output.task_id"),
        (
            {"task_id": "t-other", "task_status": "SUCCEEDED", "results": [{"url": IMG}]},
            "is about 't-other'",
        ),
    ],
)
async def test_a_poll_answer_about_no_task_or_another_is_a_server_error(
    client: DashScopeClient, mocked: FakeTransport, output: dict[str, Any], why: str
) -> None:
    mocked.get(f"{BASE}/tasks/t-1", payload={"output": output, "request_id": "r"})
    with pytest.raises(ServerError, match=why):
        await client.fetch_task("t-1", max_retries=0)


async def test_suspended_is_a_status_polled_on(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    output = {"task_id": "t-1", "task_status": "SUSPENDED"}
    mocked.get(f"{BASE}/tasks/t-1", payload={"output": output})
    state = await client.fetch_task("t-1")
    assert state.status == "SUSPENDED" and not state.terminal


class Ledger:
    """The calls the lifecycle makes around a send, recorded (runner.store.ledger's API)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.outcomes: list[tuple[str, object]] = []

    async def send(self, index: str, model: str, **kw: Any) -> SimpleNamespace:
        self.sent.append({"model": model, **kw})
        return SimpleNamespace(key=f"k{len(self.sent)}", model=model, **kw)

    async def accepted(self, paid: object, task_id: str) -> None:
        self.outcomes.append(("accepted", task_id))

    async def refused(self, paid: object, why: str) -> None:
        self.outcomes.append(("refused", why))


def _life(client: DashScopeClient, ledger: Ledger | None = None) -> Lifecycle:
    # the send and its records: no watcher or CPU pool is touched
    return Lifecycle(client, ledger or Ledger(), None, cpu=None)  # type: ignore[arg-type]


def _request(model: str) -> Request:
    found = caps(model)
    return Request(
        index="1",
        model=model,
        prompt="a red fox",
        size="1328*1328",
        sync=found.sync,
        input_style=found.input_style,
        prompt_extend=False,
    )


async def test_a_refused_route_is_fixed_for_the_model_not_set_aside(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    # the account answers qwen-image-plus only async: the sync call is refused (not billed)
    refusal = {
        "code": "AccessDenied",
        "message": "current user api does not support synchronous calls",
    }
    mocked.post(MM, status=403, payload=refusal)
    mocked.post(T2I, payload=submitted("t-9"), repeat=True)
    ledger = Ledger()
    life = _life(client, ledger)
    with pytest.raises(ServerError, match="sent async from now on"):
        await life.submit(_request("qwen-image-plus"))  # the row sends again at once
    assert life.routes == {"qwen-image-plus": False}
    again = _request("qwen-image-plus")
    await life.submit(again)
    assert (again.sync, again.input_style) == (False, "prompt")
    # the record before the send already says async: the task is polled, not downloaded
    assert [s["sync"] for s in ledger.sent] == [True, False]
    assert ledger.outcomes[-1] == ("accepted", "t-9")
    body = mocked.calls("POST", T2I)[0].json()
    assert body["input"] == {"prompt": "a red fox"}
    assert body["parameters"]["prompt_extend"] is False


async def test_a_model_refused_on_every_route_is_set_aside_loudly(
    client: DashScopeClient, mocked: FakeTransport
) -> None:
    refusal = {
        "code": "AccessDenied",
        "message": "current user api does not support synchronous calls",
    }
    mocked.post(MM, status=403, payload=refusal)
    with pytest.raises(WrongRoute, match="qwen-image-max refused its sync route and has no other"):
        await _life(client).submit(_request("qwen-image-max"))  # sync-only: nowhere to go
