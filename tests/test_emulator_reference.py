"""The emulator against the corrected protocol reference (issue 10), and the test hooks
other tests and benchmarks build on: the billing ledger, the movable clock, latency profiles."""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from pydantic import ValidationError

from runner.emulator import Emulator, EmulatorConfig
from runner.emulator.images import render_t2i
from runner.emulator.latency import parse_profile
from tests.emulator_helpers import (
    ASYNC,
    AUTH,
    GEN,
    I2I,
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

DAY = 86400.0


def beijing(text: str) -> float:
    """The service's "YYYY-MM-DD HH:MM:SS.fff" (Beijing time, no zone) as epoch seconds."""
    naive = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")
    return naive.replace(tzinfo=timezone(timedelta(hours=8))).timestamp()


# --- billing ledger -------------------------------------------------------------------------


async def test_ledger_counts_accepted_submits_and_answered_sync_calls(
    http: aiohttp.ClientSession,
) -> None:
    src = data_uri(render_t2i(512, 512, "sign", 0))
    async with Emulator(EmulatorConfig(time_scale=0)) as emu:
        task_id = await submit(http, emu, t2i_body(prompt="row 1", n=2))
        status, _, _ = await post(http, emu.base_url + T2I, t2i_body(model="nope"))
        assert status == 400  # refused: not billed
        status, answer, _ = await post(
            http, emu.base_url + GEN, gen_body(src, "row 2", "qwen-image-edit-plus", n=3), AUTH
        )
        assert status == 200, answer
        billed = emu.billed()
        assert [(b["kind"], b["model"], b["prompt"], b["n"]) for b in billed] == [
            ("task", "wanx2.1-t2i-turbo", "row 1", 2),
            ("sync", "qwen-image-edit-plus", "row 2", 3),
        ]
        assert billed[0]["id"] == task_id and billed[1]["id"] == answer["request_id"]
        assert abs(billed[0]["t"] - time.time()) < 5
        async with http.get(f"{emu.root_url}/_emulator/billed") as resp:
            assert await resp.json() == billed


async def test_ledger_skips_quota_refusals(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=1.0)) as emu:
        for i in range(3):
            await post(http, emu.base_url + T2I, t2i_body(prompt=f"p{i}"))
        assert emu.stats.http_429 == {"Throttling.RateQuota": 1}
        assert [b["prompt"] for b in emu.billed()] == ["p0", "p1"]


# --- movable clock --------------------------------------------------------------------------


async def test_advance_finishes_ages_and_expires_tasks(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=1.0, latency="uniform:30:30")) as emu:
        task_id = await submit(http, emu, t2i_body())
        assert (await fetch(http, emu, task_id))["output"]["task_status"] in ("PENDING", "RUNNING")
        emu.advance(31)  # past its latency: done without waiting
        answer = await fetch(http, emu, task_id)
        assert answer["output"]["task_status"] == "SUCCEEDED"
        url = answer["output"]["results"][0]["url"]
        emu.advance(23 * 3600)  # 23 h later: still served, the URL still valid
        assert (await fetch(http, emu, task_id))["output"]["task_status"] == "SUCCEEDED"
        async with http.get(url) as resp:
            assert resp.status == 200
        # Past 24 h since the task ended (and its URL was signed).
        async with http.post(f"{emu.root_url}/_emulator/advance?seconds=3660") as resp:
            assert resp.status == 200 and (await resp.json())["offset_s"] > DAY
        assert (await fetch(http, emu, task_id))["output"]["task_status"] == "UNKNOWN"
        async with http.get(url) as resp:
            assert resp.status == 403 and b"Request has expired" in await resp.read()
        async with http.post(f"{emu.root_url}/_emulator/advance?seconds=-1") as resp:
            assert resp.status == 400


async def test_advance_moves_quota_windows(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=0)) as emu:
        body = t2i_body(model="wan2.2-t2i-flash")
        await submit(http, emu, body)
        await submit(http, emu, body)
        status, _, _ = await post(http, emu.base_url + T2I, body)
        assert status == 429  # 2 submits a second
        emu.advance(1.0)
        await submit(http, emu, body)


async def test_advance_ends_a_sync_call_early(http: aiohttp.ClientSession) -> None:
    src = data_uri(render_t2i(512, 512, "sign", 0))
    async with Emulator(EmulatorConfig(time_scale=1.0, latency="uniform:100:100")) as emu:
        call = asyncio.create_task(post(http, emu.base_url + GEN, gen_body(src), AUTH))
        await asyncio.sleep(0.3)
        assert not call.done()  # a 100 s call
        started = time.monotonic()
        async with http.post(f"{emu.root_url}/_emulator/advance?seconds=100") as resp:
            assert resp.status == 200
        status, _, _ = await asyncio.wait_for(call, 5)
        assert status == 200 and time.monotonic() - started < 5
        assert [b["kind"] for b in emu.billed()] == ["sync"]


# --- latency profiles and timestamps --------------------------------------------------------


def test_latency_profiles_parse_and_draw() -> None:
    rng = random.Random(1)
    uniform = [parse_profile("uniform:2:3").draw(rng) for _ in range(2000)]
    assert 2 <= min(uniform) and max(uniform) <= 3
    tail = sorted(parse_profile("lognormal:8:60").draw(rng) for _ in range(20000))
    assert statistics.median(tail) == pytest.approx(8, rel=0.06)
    assert tail[int(0.99 * len(tail))] == pytest.approx(60, rel=0.15)
    for bad in ("uniform:3:2", "lognormal:0:5", "gauss:1:2", "uniform:a:b", "uniform:1"):
        with pytest.raises(ValidationError):
            EmulatorConfig(latency=bad)
    with pytest.raises(ValidationError):
        EmulatorConfig(latency={"qwen-image-edit": "uniform:9"})


async def test_latency_profile_per_model_scaled(http: aiohttp.ClientSession) -> None:
    cfg = EmulatorConfig(
        time_scale=0.5, latency={"wanx2.1-t2i-turbo": "uniform:10:12", "*": "uniform:2:2"}
    )
    async with Emulator(cfg) as emu:
        turbo = emu.task_info(await submit(http, emu, t2i_body()))
        flash = emu.task_info(await submit(http, emu, t2i_body(model="wan2.2-t2i-flash")))
        assert turbo is not None and 5.0 <= turbo.latency_s <= 6.0
        assert flash is not None and flash.latency_s == pytest.approx(1.0)


async def test_poll_carries_beijing_timestamps(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=0.02)) as emu:
        before = time.time()
        output = (await wait(http, emu, await submit(http, emu, t2i_body())))["output"]
        submitted, scheduled, ended = (
            beijing(output[k]) for k in ("submit_time", "scheduled_time", "end_time")
        )
        assert before - 1 <= submitted <= scheduled <= ended <= time.time() + 1
    async with Emulator(EmulatorConfig(time_scale=0, timestamps=False)) as emu:
        output = (await wait(http, emu, await submit(http, emu, t2i_body())))["output"]
        assert not {"submit_time", "scheduled_time", "end_time"} & set(output)


# --- regions --------------------------------------------------------------------------------


async def test_regions_serve_only_their_models(http: aiohttp.ClientSession) -> None:
    src = data_uri(render_t2i(600, 600, "x", 0))
    edit = {
        "model": "wanx2.1-imageedit",
        "input": {"function": "description_edit", "prompt": "p", "base_image_url": src},
        "parameters": {"n": 1},
    }
    async with Emulator(EmulatorConfig(time_scale=0, region="intl")) as emu:
        await submit(http, emu, t2i_body(model="wan2.1-t2i-turbo"))
        for body, path in ((t2i_body(), T2I), (edit, I2I)):
            status, answer, _ = await post(http, emu.base_url + path, body)
            assert (status, answer["code"], answer["message"]) == (
                400,
                "InvalidParameter",
                "Model not exist.",
            )
        status, _, _ = await post(http, emu.base_url + GEN, gen_body(src), AUTH)
        assert status == 200  # the qwen-image-edit family is served in Singapore too
    async with Emulator(EmulatorConfig(time_scale=0)) as emu:  # cn by default
        # The host name decides where the real service is: dashscope-intl... is Singapore.
        headers = {**ASYNC, "Host": "dashscope-intl.aliyuncs.com"}
        status, _, _ = await post(http, emu.base_url + T2I, t2i_body(), headers)
        assert status == 400
        status, _, _ = await post(
            http, emu.base_url + T2I, t2i_body(model="wan2.1-t2i-turbo"), headers
        )
        assert status == 200


# --- documented quotas and newer models -----------------------------------------------------


async def test_qwen_image_edit_has_a_rate_but_no_in_flight_cap(
    http: aiohttp.ClientSession,
) -> None:
    src = data_uri(render_t2i(512, 512, "sign", 0))
    async with Emulator(EmulatorConfig(time_scale=1.0, latency="uniform:10:10")) as emu:
        url = emu.base_url + GEN
        calls = []
        for second in range(3):  # 2 calls in each second: the rate allows it
            calls += [asyncio.create_task(post(http, url, gen_body(src), AUTH)) for _ in range(2)]
            await asyncio.sleep(0.2)
            if second == 0:  # a 3rd call within the same second is over the rate
                status, answer, _ = await post(http, url, gen_body(src), AUTH)
                assert (status, answer["code"]) == (429, "Throttling.RateQuota")
            emu.advance(1.0)
        assert emu.stats.in_flight["qwen-image-edit"] == 6
        emu.advance(10)  # the calls' latency, without waiting for it
        answers = await asyncio.gather(*calls)
        assert [a[0] for a in answers] == [200] * 6
        assert emu.stats.max_in_flight["qwen-image-edit"] == 6


async def test_qwen_image_edit_plus_n_and_limits(http: aiohttp.ClientSession) -> None:
    src = data_uri(render_t2i(512, 512, "sign", 0))
    async with Emulator(EmulatorConfig(time_scale=0, quotas_enabled=False)) as emu:
        url = emu.base_url + GEN
        status, answer, _ = await post(
            http, url, gen_body(src, model="qwen-image-edit-plus", n=4, seed=3), AUTH
        )
        assert status == 200, answer
        content = answer["output"]["choices"][0]["message"]["content"]
        assert len({c["image"] for c in content}) == 4 and answer["usage"]["image_count"] == 4
        for body in (
            gen_body(src, model="qwen-image-edit-plus", n=7),
            gen_body(src, model="qwen-image-edit", n=2),
            gen_body(src, model="qwen-image-edit-plus", n=2, size="1024*1024"),
        ):
            status, answer, _ = await post(http, url, body, AUTH)
            assert (status, answer["code"]) == (400, "InvalidParameter"), body


async def test_qwen_image_defaults_to_1664x928(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=0)) as emu:
        body = {"model": "qwen-image", "input": {"prompt": "a poster"}, "parameters": {"n": 1}}
        task_id = await submit(http, emu, body)
        info = emu.task_info(task_id)
        assert info is not None and info.size == "1664*928"


async def test_wan25_i2i_preview_takes_images_list(http: aiohttp.ClientSession) -> None:
    src = data_uri(render_t2i(640, 480, "room", 0))
    async with Emulator(EmulatorConfig(time_scale=0)) as emu:
        body = {
            "model": "wan2.5-i2i-preview",
            "input": {"prompt": "paint the wall blue", "images": [src]},
            "parameters": {"n": 1},
        }
        answer = await wait(http, emu, await submit(http, emu, body, I2I))
        assert answer["output"]["task_status"] == "SUCCEEDED"
        body["input"] = {"prompt": "p", "images": [src] * 4}
        status, answer, _ = await post(http, emu.base_url + I2I, body)
        assert (status, answer["code"]) == (400, "InvalidParameter")


async def test_judge_tokens_per_minute_throttle(http: aiohttp.ClientSession) -> None:
    cfg = EmulatorConfig(time_scale=0)
    small = cfg.models["qwen-vl-max"].model_copy(update={"tokens_per_min": 3000})
    cfg = cfg.model_copy(update={"models": {**cfg.models, "qwen-vl-max": small}})
    img = render_t2i(1024, 1024, "x", 0)
    async with Emulator(cfg) as emu:
        first = await judge(http, emu, "Rate it.", img)
        assert first[0] == 200
        assert 1300 <= first[1]["usage"]["prompt_tokens"] <= 1400  # ~1.3k for 1024x1024
        assert (await judge(http, emu, "Rate it.", img))[0] == 200
        status, answer = await judge(http, emu, "Rate it.", img)
        assert status == 429 and answer["error"]["code"] == "insufficient_quota"
        emu.advance(60)  # clears within a minute
        assert (await judge(http, emu, "Rate it.", img))[0] == 200
        assert emu.stats.http_429 == {"Throttling.AllocationQuota": 1}


async def test_upload_policy_for_unknown_model(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=0)) as emu:
        url = f"{emu.base_url}/uploads?action=getPolicy&model=nope"
        async with http.get(url, headers=AUTH) as resp:
            assert resp.status == 400 and (await resp.json())["message"] == "Model not exist."


def test_cli_rejects_a_bad_latency_profile() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "runner.emulator", "--latency", "lognormal:8"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "lognormal:8" in bad.stderr


def test_cli_region_latency_and_timestamps_flags() -> None:
    from runner.emulator.__main__ import parse_args

    args = parse_args(
        [
            "--region",
            "intl",
            "--latency",
            "qwen-image-edit=uniform:5:15",
            "--latency",
            "lognormal:8:60",
            "--no-timestamps",
        ]
    )
    assert args.region == "intl" and args.no_timestamps
    assert args.latency == {"qwen-image-edit": "uniform:5:15", "*": "lognormal:8:60"}
    assert parse_args(["--latency", "uniform:2:3"]).latency == "uniform:2:3"
    assert parse_args([]).latency is None
