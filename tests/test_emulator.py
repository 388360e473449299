"""The DashScope emulator over raw HTTP: protocol, lifecycle, quotas, faults, judge, CLI."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from PIL import Image

from runner.emulator import Emulator, EmulatorConfig, FaultConfig, ModelSpec
from runner.emulator.images import render_edit, render_t2i
from tests.emulator_helpers import (
    ASYNC,
    AUTH,
    GEN,
    I2I,
    KEY,
    T2I,
    data_uri,
    fetch,
    gen_body,
    judge,
    post,
    submit,
    t2i_body,
    wait,
)

FAST = 0.01


# --- lifecycle --------------------------------------------------------------------------


async def test_lifecycle_results_and_download(http: aiohttp.ClientSession) -> None:
    cfg = EmulatorConfig(time_scale=0.05, poll_qps=10_000)
    async with Emulator(cfg) as emu:
        task_id = await submit(http, emu, t2i_body(n=2, size="800*600", prompt_extend=True))
        seen: list[str] = []
        while not seen or seen[-1] in ("PENDING", "RUNNING"):
            answer = await fetch(http, emu, task_id)
            status = answer["output"]["task_status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            await asyncio.sleep(0.005)
        assert seen == ["PENDING", "RUNNING", "SUCCEEDED"]
        out = answer["output"]
        assert out["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
        assert answer["usage"] == {"image_count": 2}
        assert {"submit_time", "scheduled_time", "end_time"} <= out.keys()
        first = out["results"][0]
        assert first["orig_prompt"] == "a red fox"
        assert first["actual_prompt"].startswith("a red fox, ")
        assert "Expires=" in first["url"] and "Signature=" in first["url"]
        async with http.get(first["url"]) as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            img = Image.open(io.BytesIO(await resp.read()))
        assert img.size == (800, 600)
        assert img.info["Software"] == "runner-emulator"
        stats = emu.stats
        assert stats.submits == {"wanx2.1-t2i-turbo": 1} and stats.downloads == 1
        assert stats.task_outcomes == {"SUCCEEDED": 1}
        assert [p[2] for p in stats.timeline] == [1, 0]


async def test_defaults_n4_and_no_actual_prompt_without_extend(
    http: aiohttp.ClientSession,
) -> None:
    async with Emulator(EmulatorConfig(time_scale=0)) as emu:
        body = {
            "model": "wanx2.1-t2i-turbo",
            "input": {"prompt": "cat"},
            "parameters": {"prompt_extend": False},
        }
        answer = await wait(http, emu, await submit(http, emu, body))
        results = answer["output"]["results"]
        assert len(results) == 4  # the service's default n
        assert "actual_prompt" not in results[0]


async def test_unknown_task_is_unknown_with_200(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        answer = await fetch(http, emu, "no-such-task")
        assert answer["output"] == {"task_id": "no-such-task", "task_status": "UNKNOWN"}


async def test_cancel_pending_only(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=1.0)) as emu:
        task_id = await submit(http, emu, t2i_body())
        url = f"{emu.base_url}/tasks/{task_id}/cancel"
        status, answer, _ = await post(http, url, {}, AUTH)
        assert status == 200 and "request_id" in answer
        assert (await fetch(http, emu, task_id))["output"]["task_status"] == "CANCELED"
        status, answer, _ = await post(http, url, {}, AUTH)
        assert status == 400 and answer["code"] == "UnsupportedOperation"
        assert emu.stats.in_flight["wanx2.1-t2i-turbo"] == 0


async def test_zero_time_scale_finishes_at_once(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig.benchmark()) as emu:
        task_id = await submit(http, emu, t2i_body())
        assert (await fetch(http, emu, task_id))["output"]["task_status"] == "SUCCEEDED"


# --- validation ----------------------------------------------------------------------------


async def test_missing_async_header_is_refused(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        status, answer, _ = await post(http, emu.base_url + T2I, t2i_body(), AUTH)
        assert status == 403 and answer["code"] == "AccessDenied"
        assert "synchronous" in answer["message"] and answer["request_id"]


@pytest.mark.parametrize(
    ("headers", "keys"),
    [
        ({}, None),
        ({"Authorization": "Bearer "}, None),
        ({"Authorization": "Bearer bad"}, frozenset({KEY})),
    ],
)
async def test_invalid_key(
    http: aiohttp.ClientSession, headers: dict[str, str], keys: frozenset[str] | None
) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST, api_keys=keys)) as emu:
        hdrs = {"X-DashScope-Async": "enable", **headers}
        status, answer, _ = await post(http, emu.base_url + T2I, t2i_body(), hdrs)
        assert status == 401 and answer["code"] == "InvalidApiKey"


async def test_invalidate_keys_and_invalidate_after(http: aiohttp.ClientSession) -> None:
    cfg = EmulatorConfig(time_scale=FAST, faults=FaultConfig(invalidate_key_after=3))
    async with Emulator(cfg) as emu:
        codes = []
        for _ in range(4):
            async with http.get(f"{emu.base_url}/tasks/x", headers=AUTH) as resp:
                codes.append(resp.status)
        assert codes == [200, 200, 401, 401]
        emu.set_faults(FaultConfig())
        async with http.get(f"{emu.base_url}/tasks/x", headers=AUTH) as resp:
            assert resp.status == 200
        emu.invalidate_keys()
        async with http.get(f"{emu.base_url}/tasks/x", headers=AUTH) as resp:
            assert resp.status == 401 and (await resp.json())["code"] == "InvalidApiKey"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        # A model the service does not serve: 400 "Model not exist." (the reference), not 404.
        (t2i_body(model="wanx9-t2i"), 400, "InvalidParameter"),
        # served sync only: the service's refusal of an async call (a route bug to fix)
        (t2i_body(model="qwen-image-edit"), 403, "AccessDenied"),
        (t2i_body(model="qwen-image-max", size="1328*1328", n=1), 403, "AccessDenied"),
        (t2i_body(model="wan2.1-t2i-turbo"), 400, "InvalidParameter"),  # intl spelling in cn
        (t2i_body(n=5), 400, "InvalidParameter"),
        (t2i_body(n=0), 400, "InvalidParameter"),
        (t2i_body(size="2000*1024"), 400, "InvalidParameter"),
        (t2i_body(size="1024x1024"), 400, "InvalidParameter"),
        (t2i_body(model="qwen-image", size="1328*1328", n=2), 400, "InvalidParameter"),
        (t2i_body(model="qwen-image", size="1024*1024"), 400, "InvalidParameter"),
        ({"model": "wanx2.1-t2i-turbo", "input": {}}, 400, "InvalidParameter"),
    ],
)
async def test_t2i_validation(
    http: aiohttp.ClientSession, body: dict[str, Any], status: int, code: str
) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        got, answer, _ = await post(http, emu.base_url + T2I, body)
        assert (got, answer["code"]) == (status, code), answer
        assert emu.stats.submits == {}
        assert emu.billed() == []


async def test_qwen_image_async_and_long_prompt_cut(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=0)) as emu:
        body = t2i_body(model="qwen-image", prompt="p" * 900, size="1664*928")
        task_id = await submit(http, emu, body)
        info = emu.task_info(task_id)
        assert info is not None and info.prompt_truncated and len(info.prompt) == 800
        assert info.orig_prompt_chars == 900 and emu.stats.prompts_truncated == 1
        answer = await wait(http, emu, task_id)
        assert answer["output"]["results"][0]["orig_prompt"] == "p" * 800


def edit_body(base: str, function: str = "description_edit", **extra: Any) -> dict[str, Any]:
    return {
        "model": "wanx2.1-imageedit",
        "input": {
            "function": function,
            "prompt": "make the sign say OPEN",
            "base_image_url": base,
            **extra,
        },
        "parameters": {"n": 1},
    }


async def test_image_edit_from_data_uri_and_own_url(http: aiohttp.ClientSession) -> None:
    src = render_t2i(640, 520, "shop front", 1)
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        answer = await wait(http, emu, await submit(http, emu, edit_body(data_uri(src)), I2I))
        url = answer["output"]["results"][0]["url"]
        async with http.get(url) as resp:
            edited = await resp.read()
        assert Image.open(io.BytesIO(edited)).size == (640, 520)
        # The emulator's own result URL is a valid input too.
        again = await wait(http, emu, await submit(http, emu, edit_body(url), I2I))
        assert again["output"]["task_status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    ("base", "function", "status", "code"),
    [
        ("SRC", "paint_it", 400, "InvalidParameter"),
        ("SMALL", "description_edit", 400, "InvalidParameter"),
        # Input errors come as 400 in the current docs (415 in older ones).
        ("https://example.com/a.png", "description_edit", 400, "BadRequest.InputDownloadFailed"),
        (
            "data:text/html;base64,PGh0bWw+",
            "description_edit",
            400,
            "BadRequest.UnsupportedFileFormat",
        ),
        (
            "data:image/png;base64,bm90IGFuIGltYWdl",
            "description_edit",
            400,
            "BadRequest.UnsupportedFileFormat",
        ),
        ("oss://nothing/here.png", "description_edit", 400, "BadRequest.InputDownloadFailed"),
        ("SRC", "description_edit_with_mask", 400, "InvalidParameter"),  # mask missing
    ],
)
async def test_image_edit_validation(
    http: aiohttp.ClientSession, base: str, function: str, status: int, code: str
) -> None:
    refs = {
        "SRC": data_uri(render_t2i(600, 600, "x", 0)),
        "SMALL": data_uri(render_t2i(256, 256, "x", 0)),
    }
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        got, answer, _ = await post(
            http, emu.base_url + I2I, edit_body(refs.get(base, base), function)
        )
        assert (got, answer["code"]) == (status, code), answer


# --- sync generation ----------------------------------------------------------------------


async def test_generation_holds_slot_and_answers_url(http: aiohttp.ClientSession) -> None:
    src = data_uri(render_t2i(512, 512, "sign", 0))
    # Slots only: the default 2 submits/s would refuse the third call by rate instead.
    cfg = EmulatorConfig(time_scale=0.05).with_quota("qwen-image-edit", 3, None)
    async with Emulator(cfg) as emu:
        url = emu.base_url + GEN
        answers = await asyncio.gather(*[post(http, url, gen_body(src), AUTH) for _ in range(4)])
        statuses = sorted(a[0] for a in answers)
        assert statuses == [200, 200, 200, 429]
        ok = next(a[1] for a in answers if a[0] == 200)
        image_url = ok["output"]["choices"][0]["message"]["content"][0]["image"]
        assert ok["usage"]["image_count"] == 1
        async with http.get(image_url) as resp:
            assert Image.open(io.BytesIO(await resp.read())).size == (512, 512)
        assert emu.stats.max_in_flight["qwen-image-edit"] == 3
        assert emu.stats.in_flight["qwen-image-edit"] == 0
        # qwen-image sync: text only, size from the fixed list.
        status, answer, _ = await post(
            http, url, gen_body(None, "a poster", "qwen-image", size="928*1664"), AUTH
        )
        assert status == 200, answer
        # Sync models refuse the async header, edits need exactly one image.
        status, answer, _ = await post(http, url, gen_body(src), ASYNC)
        assert (status, answer["code"]) == (403, "AccessDenied")
        status, answer, _ = await post(http, url, gen_body(None), AUTH)
        assert (status, answer["code"]) == (400, "InvalidParameter")


# --- quotas -------------------------------------------------------------------------------


async def test_third_task_in_flight_is_refused(http: aiohttp.ClientSession) -> None:
    cfg = EmulatorConfig(time_scale=1.0).with_quota("wanx2.1-t2i-turbo", 2, None)
    async with Emulator(cfg) as emu:
        for _ in range(2):
            await submit(http, emu, t2i_body())
        status, answer, _ = await post(http, emu.base_url + T2I, t2i_body())
        assert (status, answer["code"]) == (429, "Throttling.RateQuota")
        stats = emu.stats
        assert stats.quota_refusals == {"wanx2.1-t2i-turbo": 1}
        assert stats.max_in_flight["wanx2.1-t2i-turbo"] == 2
        assert stats.http_429 == {"Throttling.RateQuota": 1}
        assert stats.quota_overruns == {}


async def test_submit_rate_is_enforced(http: aiohttp.ClientSession) -> None:
    # A third slot, so that only the rate (2 submits a second) can refuse.
    cfg = EmulatorConfig(time_scale=1.0).with_quota("wan2.2-t2i-flash", 3, 2)
    async with Emulator(cfg) as emu:
        body = t2i_body(model="wan2.2-t2i-flash")
        await submit(http, emu, body)
        await submit(http, emu, body)
        status, answer, _ = await post(http, emu.base_url + T2I, body)
        assert (status, answer["code"]) == (429, "Throttling.RateQuota")
        await asyncio.sleep(1.05)
        await submit(http, emu, body)  # the window has moved on; a slot is still free
        assert emu.stats.max_in_flight["wan2.2-t2i-flash"] == 3


async def test_poll_budget(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        statuses = []
        for _ in range(25):
            async with http.get(f"{emu.base_url}/tasks/x", headers=AUTH) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert (await resp.json())["code"] == "Throttling"
        assert statuses.count(200) == 20 and statuses.count(429) == 5


async def test_quotas_off(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=1.0, quotas_enabled=False)) as emu:
        for _ in range(5):
            await submit(http, emu, t2i_body())
        for _ in range(30):
            await fetch(http, emu, "x")
        stats = emu.stats
        assert stats.http_429 == {} and stats.max_in_flight["wanx2.1-t2i-turbo"] == 5
        assert stats.quota_overruns["wanx2.1-t2i-turbo"] == 3


# --- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("rate_limit_retry_after", 429, "Throttling.RateQuota"),
        ("rate_limit", 429, "Throttling.RateQuota"),
        ("internal_error", 500, "InternalError"),
        ("model_unavailable", 503, "ModelUnavailable"),
        ("arrearage", 400, "Arrearage"),
    ],
)
async def test_request_faults(
    http: aiohttp.ClientSession, kind: str, status: int, code: str
) -> None:
    cfg = EmulatorConfig(
        time_scale=FAST,
        faults=FaultConfig.model_validate({kind: {"every_n": 1}, "retry_after_s": 7}),
    )
    async with Emulator(cfg) as emu:
        got, answer, headers = await post(http, emu.base_url + T2I, t2i_body())
        assert (got, answer["code"]) == (status, code)
        assert ("Retry-After" in headers) == (kind == "rate_limit_retry_after")
        if kind == "rate_limit_retry_after":
            assert headers["Retry-After"] == "7"
        assert emu.stats.faults_injected == {kind: 1} and emu.stats.submits == {}


async def test_connection_reset_and_stall(http: aiohttp.ClientSession) -> None:
    cfg = EmulatorConfig(time_scale=FAST, faults=FaultConfig(connection_reset={"at": {1}}))
    async with Emulator(cfg) as emu:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(http, emu.base_url + T2I, t2i_body())
        await submit(http, emu, t2i_body())  # only the first request was dropped
        emu.set_faults(stall=1.0, stall_s=2.0)
        timeout = aiohttp.ClientTimeout(total=0.3)
        with pytest.raises(TimeoutError):
            async with http.post(
                emu.base_url + T2I, json=t2i_body(), headers=ASYNC, timeout=timeout
            ) as resp:
                await resp.read()
        # The stalled submit was processed: a ghost task the client never heard of.
        assert emu.stats.submits["wanx2.1-t2i-turbo"] == 2


async def test_task_faults(http: aiohttp.ClientSession) -> None:
    faults = FaultConfig(
        task_failed={"at": {1}}, partial_success={"at": {2}}, task_unknown={"at": {3}}
    )
    cfg = EmulatorConfig(time_scale=FAST, faults=faults, quotas_enabled=False)
    async with Emulator(cfg) as emu:
        ids = [await submit(http, emu, t2i_body(n=2)) for _ in range(3)]
        failed, partial, unknown = [await wait(http, emu, i) for i in ids]
        assert failed["output"]["task_status"] == "FAILED"
        assert failed["output"]["code"] == "InternalError.Algo" and failed["output"]["message"]
        out = partial["output"]
        assert out["task_status"] == "SUCCEEDED"
        assert out["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 1, "FAILED": 1}
        assert "url" in out["results"][0] and out["results"][1]["code"]
        assert partial["usage"] == {"image_count": 1}
        assert unknown["output"]["task_status"] == "UNKNOWN"
        assert emu.stats.in_flight["wanx2.1-t2i-turbo"] == 0


async def test_data_inspection_and_sync_failure(http: aiohttp.ClientSession) -> None:
    faults = FaultConfig(data_inspection_words={"Forbidden"}, task_failed={"every_n": 1})
    async with Emulator(EmulatorConfig(time_scale=FAST, faults=faults)) as emu:
        status, answer, _ = await post(
            http, emu.base_url + T2I, t2i_body(prompt="a FORBIDDEN thing")
        )
        assert (status, answer["code"]) == (400, "DataInspectionFailed")
        src = data_uri(render_t2i(512, 512, "s", 0))
        status, answer, _ = await post(http, emu.base_url + GEN, gen_body(src), AUTH)
        assert (status, answer["code"]) == (500, "InternalError.Algo")


async def _result_url(http: aiohttp.ClientSession, emu: Emulator) -> str:
    answer = await wait(http, emu, await submit(http, emu, t2i_body(size="512*512")))
    return str(answer["output"]["results"][0]["url"])


@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        ("url_not_found", 404, b"NoSuchKey"),
        ("url_expired", 403, b"Request has expired"),
        ("html_body", 200, b"<html>"),
    ],
)
async def test_download_error_faults(
    http: aiohttp.ClientSession, kind: str, status: int, check: bytes
) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        url = await _result_url(http, emu)
        emu.set_faults(**{kind: 1.0})
        async with http.get(url) as resp:
            assert resp.status == status
            assert check in await resp.read()


async def test_download_body_faults(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        url = await _result_url(http, emu)
        emu.set_faults(corrupt_image=1.0)
        async with http.get(url) as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            body = await resp.read()
        assert body.startswith(b"\x89PNG")
        with pytest.raises(Exception):  # noqa: B017 - PIL raises several types
            Image.open(io.BytesIO(body)).load()
        emu.set_faults(truncated_download=1.0)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url) as resp:
                await resp.read()
        emu.set_faults(huge_body=1.0)
        cap, got = 2 * 1024 * 1024, 0
        async with http.get(url) as resp:
            assert resp.status == 200 and resp.content_length is None
            async for chunk in resp.content.iter_chunked(256 * 1024):
                got += len(chunk)
                if got > cap:
                    break
        assert got > cap
        # Real expiry and a forged signature, without faults.
        emu.set_faults()
        async with http.get(url.replace("Signature=", "Signature=0")) as resp:
            assert resp.status == 403
    short = EmulatorConfig(time_scale=FAST, url_ttl_s=-1)
    async with Emulator(short) as emu:
        async with http.get(await _result_url(http, emu)) as resp:
            assert resp.status == 403 and b"expired" in await resp.read()


async def test_every_n_schedule_and_transient_shorthand(http: aiohttp.ClientSession) -> None:
    cfg = EmulatorConfig(
        time_scale=FAST, quotas_enabled=False, faults=FaultConfig(internal_error={"every_n": 3})
    )
    async with Emulator(cfg) as emu:
        codes = []
        for _ in range(6):
            async with http.get(f"{emu.base_url}/tasks/x", headers=AUTH) as resp:
                codes.append(resp.status)
        assert codes == [200, 200, 500, 200, 200, 500]
        emu.set_faults(0.2)  # the transient shorthand
        faulty = 0
        for _ in range(100):
            try:
                async with http.get(f"{emu.base_url}/tasks/x", headers=AUTH) as resp:
                    faulty += resp.status != 200
            except aiohttp.ClientConnectionError:
                faulty += 1
        assert 8 <= faulty <= 35
        assert sum(emu.stats.faults_injected.values()) == faulty + 2


async def test_admin_endpoints(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        admin = f"{emu.root_url}/_emulator"
        async with http.post(f"{admin}/faults", json={"model_unavailable": 1.0}) as resp:
            assert resp.status == 200
        status, answer, _ = await post(http, emu.base_url + T2I, t2i_body())
        assert (status, answer["code"]) == (503, "ModelUnavailable")
        async with http.post(f"{admin}/faults", json={"bogus_kind": 1}) as resp:
            assert resp.status == 400
        async with http.post(f"{admin}/faults?merge=1", json={"model_unavailable": 0}) as resp:
            assert resp.status == 200
        task_id = await submit(http, emu, t2i_body(prompt="q" * 801))
        async with http.get(f"{admin}/tasks/{task_id}") as resp:
            assert (await resp.json())["prompt_truncated"] is True
        async with http.get(f"{admin}/stats") as resp:
            stats = await resp.json()
        assert stats["errors"] == {"ModelUnavailable": 1}
        assert stats["submits"] == {"wanx2.1-t2i-turbo": 1}
        async with http.post(f"{admin}/keys/invalidate") as resp:
            assert resp.status == 200
        assert (await post(http, emu.base_url + T2I, t2i_body()))[0] == 401
        async with http.post(f"{admin}/quotas", json={"enabled": False}) as resp:
            assert (await resp.json()) == {"enabled": False}


# --- uploads ------------------------------------------------------------------------------


async def test_upload_policy_and_oss_reference(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        url = f"{emu.base_url}/uploads?action=getPolicy&model=wanx2.1-imageedit"
        async with http.get(url, headers=AUTH) as resp:
            policy = (await resp.json())["data"]
        key = policy["upload_dir"] + "/src.png"
        form = aiohttp.FormData()
        for name, value in (
            ("OSSAccessKeyId", policy["oss_access_key_id"]),
            ("Signature", policy["signature"]),
            ("policy", policy["policy"]),
            ("key", key),
            ("success_action_status", "200"),
        ):
            form.add_field(name, value)
        form.add_field("file", render_t2i(600, 600, "up", 0), filename="src.png")
        async with http.post(policy["upload_host"], data=form) as resp:
            assert resp.status == 200
        body = edit_body(f"oss://{key}")
        status, answer, _ = await post(http, emu.base_url + I2I, body)
        assert status == 400  # without the resolve header the service cannot fetch oss://
        headers = {**ASYNC, "X-DashScope-OssResourceResolve": "enable"}
        status, answer, _ = await post(http, emu.base_url + I2I, body, headers)
        assert status == 200, answer


# --- judge --------------------------------------------------------------------------------

PQ_TEXT = (
    "Rate the image. A score from 0 to 10 for naturalness, and a second score for "
    'artifacts. Output {"score": [...], "reasoning": "..."}'
)
EDIT_TEXT = "Two images: the source and the edited one. Rate edit success and over-editing."
T2I_TEXT = "Rate how well the image follows the prompt: a red fox in snow."


def scores(answer: dict[str, Any]) -> list[int]:
    import json

    parsed = json.loads(answer["choices"][0]["message"]["content"])
    assert isinstance(parsed["reasoning"], str)
    return list(parsed["score"])


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


async def test_judge_scores_follow_content(http: aiohttp.ClientSession) -> None:
    sharp = render_t2i(768, 768, "a textured scene", 5)
    rgb = np.asarray(Image.open(io.BytesIO(sharp)).convert("RGB"))
    blurred = png(cv2.GaussianBlur(rgb, (0, 0), 6))
    flat = png(np.full((768, 768, 3), 128, np.uint8))
    noise = png(np.random.default_rng(0).integers(0, 256, (768, 768, 3), dtype=np.uint8))
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        pq = {}
        for name, img in (("sharp", sharp), ("blurred", blurred), ("flat", flat), ("noise", noise)):
            status, answer = await judge(http, emu, PQ_TEXT, img)
            assert status == 200 and answer["object"] == "chat.completion"
            pq[name] = scores(answer)
            assert len(pq[name]) == 2 and all(0 <= s <= 10 for s in pq[name])
        for worse in ("blurred", "flat", "noise"):
            assert min(pq["sharp"]) > min(pq[worse]), pq
        assert max(pq["flat"]) <= 1
        # Deterministic: the same picture gets the same scores.
        assert scores((await judge(http, emu, PQ_TEXT, sharp))[1]) == pq["sharp"]

        edited = render_edit(sharp, "tint a region", 0, "description_edit")
        restyled = render_edit(sharp, "restyle", 0, "stylization_all")
        unchanged = scores((await judge(http, emu, EDIT_TEXT, sharp, sharp))[1])
        good = scores((await judge(http, emu, EDIT_TEXT, sharp, edited))[1])
        over = scores((await judge(http, emu, EDIT_TEXT, sharp, restyled))[1])
        assert unchanged[0] <= 1 and good[0] >= 8
        assert good[1] > over[1] and over[1] <= 4

        t2i = scores((await judge(http, emu, T2I_TEXT, sharp))[1])
        t2i_flat = scores((await judge(http, emu, T2I_TEXT, flat))[1])
        assert len(t2i) == 1 and t2i[0] > t2i_flat[0]
        assert emu.stats.judge_calls["qwen-vl-max"] == 10


async def test_judge_errors_and_rate_limit(http: aiohttp.ClientSession) -> None:
    cfg = EmulatorConfig(time_scale=FAST)
    limited = cfg.models["qwen-vl-plus"].model_copy(update={"requests_per_min": 2})
    cfg = cfg.model_copy(update={"models": {**cfg.models, "qwen-vl-plus": limited}})
    img = render_t2i(512, 512, "x", 0)
    async with Emulator(cfg) as emu:
        status, answer = await judge(http, emu, T2I_TEXT, img, model="gpt-4o")
        assert status == 404 and answer["error"]["code"] == "model_not_found"
        results = [await judge(http, emu, T2I_TEXT, img, model="qwen-vl-plus") for _ in range(3)]
        assert [r[0] for r in results] == [200, 200, 429]
        assert results[2][1]["error"]["code"] == "limit_requests"
        emu.invalidate_keys()
        status, answer = await judge(http, emu, T2I_TEXT, img)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"


# --- misc ---------------------------------------------------------------------------------


async def test_seeded_latency_and_images_are_deterministic(http: aiohttp.ClientSession) -> None:
    latencies = []
    for _ in range(2):
        async with Emulator(EmulatorConfig(time_scale=1.0, seed=7)) as emu:
            info = emu.task_info(await submit(http, emu, t2i_body()))
            assert info is not None and 5.0 <= info.latency_s <= 9.0
            latencies.append(info.latency_s)
    assert latencies[0] == latencies[1]
    assert render_t2i(512, 512, "p", 1) == render_t2i(512, 512, "p", 1)
    assert render_t2i(512, 512, "p", 1) != render_t2i(512, 512, "p", 2)


def test_model_spec_table() -> None:
    models = EmulatorConfig().models
    assert models["wanx2.1-t2i-turbo"].max_in_flight == 2
    assert models["wanx-v1"].max_in_flight == 1
    assert models["wan2.2-t2i-flash"].max_in_flight == 2  # published now: 2 / 2
    assert models["qwen-image-edit"].max_in_flight is None  # sync: a rate, no in-flight cap
    assert models["qwen-image-edit"].submits_per_s == 2
    assert models["wanx2.1-imageedit"].regions == {"cn"}
    assert models["wan2.1-t2i-turbo"].regions == {"intl"}
    assert isinstance(models["qwen-vl-max"], ModelSpec)
    assert models["qwen-vl-max"].requests_per_min == 1200
    assert models["qwen-vl-max"].tokens_per_min == 1_000_000


def test_cli_serves_and_stops() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner.emulator",
            "--port",
            "0",
            "--time-scale",
            "0",
            "--faults",
            "0.2",
            "--no-quotas",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "base URL http://127.0.0.1:" in line and line.strip().endswith("/api/v1")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    bad = subprocess.run(
        [sys.executable, "-m", "runner.emulator", "--faults", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "--faults" in bad.stderr
