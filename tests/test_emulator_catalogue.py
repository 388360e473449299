"""The emulator after the 2026 catalogue (issue 23): routes (sync-only models refuse the
async endpoint the documented way), the image-generation interface and its ``choices``
polls, the 2026 quotas per region, the total-area rule, prompt_extend, list prices."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runner import run_all
from runner.emulator import Emulator, EmulatorConfig
from runner.emulator.images import render_t2i
from runner.settings import Settings
from tests.emulator_helpers import (
    ASYNC,
    AUTH,
    GEN,
    T2I,
    data_uri,
    gen_body,
    judge,
    post,
    submit,
    t2i_body,
    wait,
)

TASK_GEN = "/services/aigc/image-generation/generation"  # the newer async interface
FAST = 0.01


def messages_body(model: str, text: str, *images: str, **params: object) -> dict[str, object]:
    content = [{"image": i} for i in images] + [{"text": text}]
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": {"n": 1, **params},
    }


async def test_sync_only_models_refuse_the_async_endpoint_the_documented_way(
    http: aiohttp.ClientSession,
) -> None:
    body = t2i_body(model="qwen-image-max", size="1328*1328")
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        for model in ("qwen-image-max", "qwen-image-plus-2026-01-09", "qwen-image-2.0"):
            status, answer, _ = await post(http, emu.base_url + T2I, {**body, "model": model})
            assert (status, answer["code"]) == (403, "AccessDenied"), model
            assert answer["message"] == "current user api does not support asynchronous calls"
        # the same models on the sync endpoint are served
        status, answer, _ = await post(
            http, emu.base_url + GEN, gen_body(None, "a poster", "qwen-image-max"), AUTH
        )
        assert status == 200, answer
        # an async-only model on the sync endpoint: the mirror refusal
        status, answer, _ = await post(
            http, emu.base_url + GEN, gen_body(None, "a fox", "wan2.2-t2i-flash"), AUTH
        )
        assert (status, answer["message"]) == (
            403,
            "current user api does not support synchronous calls",
        )
        # qwen-image and qwen-image-plus take both routes
        for model in ("qwen-image", "qwen-image-plus"):
            await submit(http, emu, t2i_body(model=model, size="1328*1328"))
        assert emu.billed()[-1]["model"] == "qwen-image-plus"


async def test_sync_qwen_image_has_a_rate_but_no_in_flight_cap(
    http: aiohttp.ClientSession,
) -> None:
    # the async route's 2 in flight does not hold on the sync route: 4 calls at once, paced
    # at 2 a second, all run together
    async with Emulator(EmulatorConfig(time_scale=0.3)) as emu:  # calls of 2.4-4.2 s
        url = emu.base_url + GEN
        first = [
            asyncio.create_task(post(http, url, gen_body(None, "a fox", "qwen-image-plus"), AUTH))
            for _ in range(2)
        ]
        await asyncio.sleep(1.1)
        later = [
            asyncio.create_task(post(http, url, gen_body(None, "a fox", "qwen-image-plus"), AUTH))
            for _ in range(2)
        ]
        answers = await asyncio.gather(*first, *later)
        assert [a[0] for a in answers] == [200] * 4
        assert emu.stats.max_in_flight["qwen-image-plus"] == 4


async def test_image_generation_interface_answers_polls_with_choices(
    http: aiohttp.ClientSession,
) -> None:
    src = data_uri(render_t2i(640, 480, "sign", 0))
    async with Emulator(EmulatorConfig(time_scale=FAST, region="intl")) as emu:
        t2i = await submit(
            http, emu, messages_body("wan2.6-t2i", "a lighthouse", size="1280*1280"), TASK_GEN
        )
        edit = await submit(
            http, emu, messages_body("wan2.6-image", "paint it blue", src), TASK_GEN
        )
        for task_id in (t2i, edit):
            output = (await wait(http, emu, task_id))["output"]
            assert output["task_status"] == "SUCCEEDED" and output["finished"] is True
            assert "results" not in output
            (image,) = output["choices"][0]["message"]["content"]
            assert image["image"].startswith(emu.root_url)
        # no async header: refused as the other endpoints are
        status, _, _ = await post(
            http, emu.base_url + TASK_GEN, messages_body("wan2.6-t2i", "x"), AUTH
        )
        assert status == 403
        # the same models are served sync too
        status, answer, _ = await post(
            http, emu.base_url + GEN, messages_body("wan2.6-image", "paint it blue", src), AUTH
        )
        assert status == 200, answer


async def test_2026_quotas_follow_the_region(http: aiohttp.ClientSession) -> None:
    body = messages_body("wan2.6-t2i", "a lighthouse", size="1280*1280")
    for region, admitted in (("cn", 1), ("intl", 5)):  # 1 a second in Beijing, 5 in Singapore
        async with Emulator(EmulatorConfig(time_scale=1.0, region=region)) as emu:
            answers = await asyncio.gather(
                *[post(http, emu.base_url + TASK_GEN, body, ASYNC) for _ in range(6)]
            )
            assert sum(1 for a in answers if a[0] == 200) == admitted, region
    specs = EmulatorConfig().models
    assert (
        specs["wan2.5-t2i-preview"].max_in_flight,
        specs["wan2.5-t2i-preview"].submits_per_s,
    ) == (
        5,
        5,
    )
    assert specs["wan2.5-t2i-preview"].quota_published
    assert (specs["wan2.5-i2i-preview"].max_in_flight, specs["wan2.6-image"].max_in_flight) == (
        5,
        5,
    )
    assert specs["qwen-image-2.0-pro"].submits_per_min == 2


async def test_wan25_size_is_a_total_area_not_a_side_limit(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST, quotas_enabled=False)) as emu:
        for size, status in (
            ("768*768", 200),
            ("2700*768", 200),  # 2.07 Mpx at 3.5:1: the sides are no limit
            ("1500*1500", 400),  # over 1440 x 1440 in all
            ("700*700", 400),  # under 768 x 768
            ("3200*640", 400),  # 5:1 is past 4:1
        ):
            got, answer, _ = await post(
                http, emu.base_url + T2I, t2i_body(model="wan2.5-t2i-preview", size=size)
            )
            assert got == status, (size, answer)


async def test_prompt_extend_refused_where_not_taken(http: aiohttp.ClientSession) -> None:
    src = data_uri(render_t2i(512, 512, "sign", 0))
    async with Emulator(EmulatorConfig(time_scale=FAST, quotas_enabled=False)) as emu:
        url = emu.base_url + GEN
        status, answer, _ = await post(
            http, url, gen_body(src, prompt_extend=False), AUTH
        )  # qwen-image-edit does not take it
        assert (status, answer["code"]) == (400, "InvalidParameter")
        assert "prompt_extend" in answer["message"]
        for model in ("qwen-image-edit-plus", "qwen-image-edit-max-2026-01-16"):
            status, answer, _ = await post(
                http, url, gen_body(src, model=model, prompt_extend=False), AUTH
            )
            assert status == 200, (model, answer)


async def test_qwen_image_2_generates_and_edits(http: aiohttp.ClientSession) -> None:
    src = data_uri(render_t2i(600, 400, "sign", 0))
    async with Emulator(EmulatorConfig(time_scale=FAST, quotas_enabled=False)) as emu:
        url = emu.base_url + GEN
        t2i = await post(http, url, gen_body(None, "a poster", "qwen-image-2.0"), AUTH)
        edit = await post(http, url, gen_body(src, "make it red", "qwen-image-2.0"), AUTH)
        assert (t2i[0], edit[0]) == (200, 200)
        assert (edit[1]["usage"]["width"], edit[1]["usage"]["height"]) == (600, 400)
        assert [b["model"] for b in emu.billed()] == ["qwen-image-2.0", "qwen-image-2.0"]


def test_list_prices_follow_the_reference() -> None:
    cn, intl = EmulatorConfig().models, EmulatorConfig(region="intl").models
    assert cn["qwen-image-edit"].prices == {"cn": 0.3, "intl": 0.330}
    assert cn["qwen-image-edit-plus"].prices["cn"] == 0.2
    assert (cn["qwen-image"].prices["cn"], cn["qwen-image-plus"].prices["cn"]) == (0.25, 0.20)
    assert intl["wan2.5-t2i-preview"].prices == {"intl": 0.220}
    assert "cn" not in intl["wan2.1-t2i-plus"].prices


async def test_judge_quotas_2026(http: aiohttp.ClientSession) -> None:
    png = render_t2i(64, 64, "x", 0)
    cn, intl = EmulatorConfig().models, EmulatorConfig(region="intl").models
    assert (cn["qwen3-vl-plus"].requests_per_min, intl["qwen3-vl-plus"].requests_per_min) == (
        3000,
        1200,
    )
    assert cn["qwen-vl-plus"].quota_published
    slow = cn["qwen2.5-vl-72b-instruct"]
    assert (slow.requests_per_min, slow.tokens_per_min) == (60, 100_000)
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        status, _ = await judge(http, emu, "Rate this image.", png, model="qwen2.5-vl-72b-instruct")
        assert status == 200


async def test_route_refusals_are_not_billed(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu:
        started = time.monotonic()
        await post(http, emu.base_url + T2I, t2i_body(model="qwen-image-max", size="1328*1328"))
        assert emu.billed() == [] and time.monotonic() - started < 5


@pytest.mark.parametrize("region", ["cn", "intl"])
def test_every_default_region_table_is_consistent(region: str) -> None:
    models = EmulatorConfig(region=region).models  # type: ignore[arg-type]
    for spec in models.values():
        if "chat" in spec.endpoints:
            continue
        assert spec.t2i or spec.max_images >= 1, spec.name
        if spec.area is not None:
            low, high = spec.area
            w, h = (int(x) for x in spec.default_size.split("*"))
            assert low <= w * h <= high, spec.name


# --------------------------------------------------------------------------- whole runs


def _rows(t2i: int, edits: int) -> list[tuple[str, ...]]:
    rows = [(str(i), "t2i", f"a lighthouse number {i}", "", "") for i in range(1, t2i + 1)]
    for i in range(t2i + 1, t2i + edits + 1):
        kind = "tie" if i % 2 else "vttie"
        rows.append((str(i), kind, "change the word OPEN to SHUT", f"src{i}.png", ""))
    return rows


def _settings(emu: Emulator, **kw: object) -> Settings:
    return Settings(
        api_key="sk-test-catalogue-0001",
        base_url=emu.base_url,
        poll_first_s=0.02,
        backoff_max_s=0.2,
        judge={"enabled": False},
        **kw,
    )


async def test_a_default_beijing_run_sends_every_model_on_its_route(
    job: Any, tmp_path: Path
) -> None:
    tasks = job(_rows(6, 6))
    async with Emulator(EmulatorConfig(time_scale=0.01)) as emu:
        summary = await run_all(tasks, out=tmp_path / "out", settings=_settings(emu))
        assert summary.exit_code == 0, [r.reason for r in summary.failed]
        # t2i on qwen-image-plus, edits on qwen-image-edit-plus (and qwen-image-2.0): every
        # one a sync call, nothing on an async endpoint
        calls = emu.stats.sync_calls
        assert calls["qwen-image-plus"] == 6 and not emu.stats.submits
        assert calls["qwen-image-edit-plus"] + calls.get("qwen-image-2.0", 0) == 6


async def test_a_default_singapore_run(job: Any, tmp_path: Path) -> None:
    tasks = job(_rows(4, 2))
    async with Emulator(EmulatorConfig(time_scale=0.01, region="intl")) as emu:
        settings = _settings(emu, region="intl")
        summary = await run_all(tasks, out=tmp_path / "out", settings=settings)
        assert summary.exit_code == 0, [r.reason for r in summary.failed]
        assert dict(emu.stats.submits) == {"wan2.5-t2i-preview": 4}  # async, on the area rule
        assert dict(emu.stats.sync_calls) == {"qwen-image-edit-plus": 2}


async def test_a_wan26_run_reads_the_choices_answers(job: Any, tmp_path: Path) -> None:
    tasks = job(_rows(3, 2))
    models = {"t2i": ["wan2.6-t2i"], "tie": ["wan2.6-image"], "vttie": ["wan2.6-image"]}
    async with Emulator(EmulatorConfig(time_scale=0.01, region="intl")) as emu:
        settings = _settings(emu, region="intl", models=models)
        summary = await run_all(tasks, out=tmp_path / "out", settings=settings)
        assert summary.exit_code == 0, [r.reason for r in summary.failed]
        assert dict(emu.stats.submits) == {"wan2.6-t2i": 3, "wan2.6-image": 2}
        assert all((tmp_path / "out" / "imgs" / f"{i}.jpg").is_file() for i in range(1, 6))


async def test_a_route_the_account_refuses_is_fixed_and_the_rows_are_done(
    job: Any, tmp_path: Path
) -> None:
    # qwen-image-plus served async only here: its first sync call is refused (not billed),
    # the run sends it async from then on; no row fails, the model is not set aside
    config = EmulatorConfig(time_scale=0.01)
    spec = config.models["qwen-image-plus"]
    config.models["qwen-image-plus"] = spec.model_copy(
        update={"endpoints": frozenset({"text2image"})}
    )
    tasks = job(_rows(5, 0))
    async with Emulator(config) as emu:
        settings = _settings(emu, models={"t2i": ["qwen-image-plus"]})
        summary = await run_all(tasks, out=tmp_path / "out", settings=settings)
        assert summary.exit_code == 0, [r.reason for r in summary.failed]
        assert dict(emu.stats.submits) == {"qwen-image-plus": 5}
        assert emu.stats.errors["AccessDenied"] >= 1
        assert len(emu.billed()) == 5
