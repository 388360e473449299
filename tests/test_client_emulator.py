"""The client against the emulator (which follows the reference, not the client): regions,
"Model not exist.", the newer models, the service's timestamps, the judge's token limit."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from pydantic import SecretStr

from runner.backends.dashscope import ClientConfig, DashScopeClient, TaskState
from runner.emulator import Emulator, EmulatorConfig
from runner.emulator.images import render_t2i
from runner.errors import ModelNotServed, RateLimited, TokensThrottled

KEY = "sk-emulated-000000"


def client_for(emu: Emulator) -> DashScopeClient:
    config = ClientConfig(base_url=emu.base_url, api_key=SecretStr(KEY), max_retries=0)
    return DashScopeClient(config)


def data_uri(width: int = 512, height: int = 512) -> str:
    return "data:image/png;base64," + base64.b64encode(render_t2i(width, height, "x", 0)).decode()


async def wait_done(client: DashScopeClient, task_id: str) -> TaskState:
    for _ in range(200):
        state = await client.fetch_task(task_id)
        if state.terminal:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError("task never finished")


async def test_model_not_served_in_the_region() -> None:
    async with Emulator(EmulatorConfig(time_scale=0, region="intl")) as emu:
        async with client_for(emu) as client:
            with pytest.raises(ModelNotServed, match="Model not exist"):
                await client.submit_text2image("wanx2.1-t2i-turbo", "a fox")
            with pytest.raises(ModelNotServed):
                await client.submit_image_edit("wanx2.1-imageedit", "p", data_uri())
            sub = await client.submit_text2image("wan2.1-t2i-turbo", "a fox")
            assert sub.task_id


async def test_timestamps_are_the_service_clock() -> None:
    async with Emulator(EmulatorConfig(time_scale=1.0, latency="uniform:0.3:0.3")) as emu:
        async with client_for(emu) as client:
            before = time.time()
            sub = await client.submit_text2image("wanx2.1-t2i-turbo", "a fox")
            state = await wait_done(client, sub.task_id)
            assert state.status == "SUCCEEDED"
            submit_t, end_t = state.submit_time, state.end_time
            assert submit_t is not None and end_t is not None
            assert before - 1 <= submit_t <= end_t <= time.time() + 1
            assert end_t - submit_t == pytest.approx(0.3, abs=0.15)


async def test_newer_models_with_correct_requests() -> None:
    async with Emulator(EmulatorConfig(time_scale=0, quotas_enabled=False)) as emu:
        async with client_for(emu) as client:
            plus = await client.multimodal(
                "qwen-image-edit-plus", "add a hat", [data_uri()], n=4, seed=1
            )
            assert len(set(plus.urls)) == 4
            sub = await client.submit_text2image(
                "qwen-image", "海报，16:9", size="1664*928", n=1, prompt_extend=False
            )
            assert (await wait_done(client, sub.task_id)).status == "SUCCEEDED"
            sub = await client.submit_text2image("wan2.2-t2i-plus", "a fox", n=2)
            assert len((await wait_done(client, sub.task_id)).urls) == 2
            sub = await client.submit_images_edit("wan2.5-i2i-preview", "paint", [data_uri()])
            assert (await wait_done(client, sub.task_id)).status == "SUCCEEDED"
        billed = emu.billed()
        assert [(b["model"], b["n"]) for b in billed] == [
            ("qwen-image-edit-plus", 4),
            ("qwen-image", 1),
            ("wan2.2-t2i-plus", 2),
            ("wan2.5-i2i-preview", 1),
        ]


async def test_judge_token_throttle_is_a_pause() -> None:
    cfg = EmulatorConfig(time_scale=0)
    small = cfg.models["qwen-vl-max"].model_copy(update={"tokens_per_min": 2000})
    cfg = cfg.model_copy(update={"models": {**cfg.models, "qwen-vl-max": small}})
    image = {"type": "image_url", "image_url": {"url": data_uri(1024, 1024)}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "rate"}, image]}]
    async with Emulator(cfg) as emu:
        async with client_for(emu) as client:
            await client.chat("qwen-vl-max", messages)
            with pytest.raises(TokensThrottled) as info:
                await client.chat("qwen-vl-max", messages)
            assert isinstance(info.value, RateLimited)  # retried, never a refusal
            assert info.value.retry_after is not None and 10 <= info.value.retry_after <= 60
            emu.advance(60)
            await client.chat("qwen-vl-max", messages)
