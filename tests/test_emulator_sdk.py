"""The official dashscope SDK, unchanged, against the emulator: the emulator's referee."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import dashscope
import pytest
import requests
from dashscope import ImageSynthesis, MultiModalConversation
from dashscope.aigc.image_synthesis import AioImageSynthesis
from dashscope.aigc.multimodal_conversation import AioMultiModalConversation
from dashscope.api_entities.aio_session import close_shared_aio_session
from PIL import Image

from runner.emulator import Emulator, EmulatorConfig, EmulatorThread
from runner.emulator.images import render_t2i

KEY = "sk-emulator"


def _check_png(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    assert img.format == "PNG" and img.info["Software"] == "runner-emulator"
    return img


def _download_png(url: str) -> Image.Image:
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/png"
    return _check_png(resp.content)


async def _adownload_png(url: str) -> Image.Image:
    # Not requests: a blocking call would freeze the loop the emulator runs on.
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        return _check_png(await resp.read())


def _data_uri(width: int, height: int) -> str:
    png = render_t2i(width, height, "a shop front", 3)
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture
def sdk_base_url() -> Iterator[None]:
    """Restores the SDK global the tests point at the emulator."""
    saved = dashscope.base_http_api_url
    yield
    dashscope.base_http_api_url = saved


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorThread]:
    cfg = EmulatorConfig(time_scale=0.01, quotas_enabled=False, api_keys=frozenset({KEY}))
    with EmulatorThread(cfg) as running:
        yield running


@pytest.fixture
def sdk(emu: EmulatorThread, sdk_base_url: None) -> EmulatorThread:
    dashscope.base_http_api_url = emu.base_url
    return emu


def test_sync_t2i_async_call_and_wait(sdk: EmulatorThread) -> None:
    rsp = ImageSynthesis.async_call(
        model="wanx2.1-t2i-turbo",
        prompt="a red fox in snow",
        n=1,
        size="1024*768",
        prompt_extend=True,
        api_key=KEY,
    )
    assert rsp.status_code == 200 and rsp.output.task_status == "PENDING"
    done = ImageSynthesis.wait(rsp, api_key=KEY)
    assert done.status_code == 200 and done.output.task_status == "SUCCEEDED"
    assert done.usage.image_count == 1
    result = done.output.results[0]
    assert result.actual_prompt.startswith("a red fox in snow")
    assert _download_png(result.url).size == (1024, 768)


def test_sync_image_edit_with_data_uri(sdk: EmulatorThread) -> None:
    rsp = ImageSynthesis.async_call(
        model=ImageSynthesis.Models.wanx_2_1_imageedit,
        function="description_edit",
        prompt="paint the door blue",
        base_image_url=_data_uri(700, 560),
        n=1,
        api_key=KEY,
    )
    assert rsp.status_code == 200, rsp
    done = ImageSynthesis.wait(rsp, api_key=KEY)
    assert done.output.task_status == "SUCCEEDED"
    assert _download_png(done.output.results[0].url).size == (700, 560)


def test_sync_image_edit_uploads_local_file(sdk: EmulatorThread, tmp_path: Path) -> None:
    # A local path makes the SDK fetch an upload policy, post the file, and send oss://.
    src = tmp_path / "source.png"
    src.write_bytes(render_t2i(600, 600, "local", 1))
    done = ImageSynthesis.call(
        model="wanx2.1-imageedit",
        function="description_edit",
        prompt="add a hat",
        base_image_url=str(src),
        n=1,
        api_key=KEY,
    )
    assert done.output.task_status == "SUCCEEDED", done
    assert _download_png(done.output.results[0].url).size == (600, 600)
    assert sdk.stats.uploads >= 1


def test_multimodal_conversation_qwen_image_edit(sdk: EmulatorThread) -> None:
    messages = [
        {
            "role": "user",
            "content": [{"image": _data_uri(640, 640)}, {"text": "把招牌文字改为“OPEN”"}],
        }
    ]
    rsp = MultiModalConversation.call(
        model="qwen-image-edit", messages=messages, api_key=KEY, watermark=False
    )
    assert rsp.status_code == 200, rsp
    url = rsp.output.choices[0].message.content[0]["image"]
    assert _download_png(url).size == (640, 640)


def test_sdk_sees_errors_and_cancel(sdk: EmulatorThread) -> None:
    rsp = ImageSynthesis.async_call(model="wanx2.1-t2i-turbo", prompt="x", n=1, api_key="sk-wrong")
    assert rsp.status_code == 401 and rsp.code == "InvalidApiKey"
    rsp = ImageSynthesis.async_call(model="no-such-model", prompt="x", n=1, api_key=KEY)
    assert (rsp.status_code, rsp.code, rsp.message) == (400, "InvalidParameter", "Model not exist.")
    gone = ImageSynthesis.fetch("no-such-task", api_key=KEY)
    assert gone.status_code == 200 and gone.output.task_status == "UNKNOWN"


def test_sdk_cancel_pending(sdk_base_url: None) -> None:
    with EmulatorThread(EmulatorConfig(time_scale=1.0)) as slow:
        dashscope.base_http_api_url = slow.base_url
        rsp = ImageSynthesis.async_call(model="wanx2.1-t2i-plus", prompt="x", n=1, api_key=KEY)
        assert ImageSynthesis.cancel(rsp, api_key=KEY).status_code == 200
        assert ImageSynthesis.fetch(rsp, api_key=KEY).output.task_status == "CANCELED"


@pytest.fixture
async def aio_emu(sdk_base_url: None) -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(time_scale=0.01)) as running:
        dashscope.base_http_api_url = running.base_url
        yield running
        await close_shared_aio_session()  # the SDK keeps one session per loop


async def test_aio_image_synthesis(aio_emu: Emulator) -> None:
    rsp = await AioImageSynthesis.async_call(
        model="wan2.2-t2i-flash", prompt="a lighthouse", n=2, size="768*1024", api_key=KEY
    )
    assert rsp.status_code == 200 and rsp.output.task_status == "PENDING"
    done = await AioImageSynthesis.wait(rsp, api_key=KEY)
    assert done.status_code == 200 and done.output.task_status == "SUCCEEDED", done
    assert len(done.output.results) == 2
    assert (await _adownload_png(done.output.results[1].url)).size == (768, 1024)


async def test_aio_multimodal_conversation(aio_emu: Emulator) -> None:
    messages = [
        {
            "role": "user",
            "content": [{"image": _data_uri(512, 768)}, {"text": "make the sky orange"}],
        }
    ]
    rsp = await AioMultiModalConversation.call(
        model="qwen-image-edit", messages=messages, api_key=KEY
    )
    assert rsp.status_code == 200, rsp
    url = rsp.output.choices[0].message.content[0]["image"]
    assert (await _adownload_png(url)).size == (512, 768)


async def test_aio_cancel_pending(sdk_base_url: None) -> None:
    async with Emulator(EmulatorConfig(time_scale=1.0)) as slow:
        dashscope.base_http_api_url = slow.base_url
        try:
            rsp = await AioImageSynthesis.async_call(
                model="wanx2.1-t2i-plus", prompt="x", n=1, api_key=KEY
            )
            assert (await AioImageSynthesis.cancel(rsp, api_key=KEY)).status_code == 200
            fetched = await AioImageSynthesis.fetch(rsp, api_key=KEY)
            assert fetched.output.task_status == "CANCELED"
        finally:
            await close_shared_aio_session()


def test_sdk_qwen_image_edit_plus_candidates_and_ledger(sdk: EmulatorThread) -> None:
    messages = [
        {"role": "user", "content": [{"image": _data_uri(512, 512)}, {"text": "add a red hat"}]}
    ]
    rsp = MultiModalConversation.call(
        model="qwen-image-edit-plus", messages=messages, api_key=KEY, n=3, seed=11
    )
    assert rsp.status_code == 200, rsp
    urls = [part["image"] for part in rsp.output.choices[0].message.content]
    assert len(set(urls)) == 3
    billed = [b for b in sdk.billed() if b["prompt"] == "add a red hat"]
    assert [(b["kind"], b["model"], b["n"]) for b in billed] == [
        ("sync", "qwen-image-edit-plus", 3)
    ]


def test_sdk_qwen_image_t2i_timestamps_and_advance(sdk: EmulatorThread) -> None:
    rsp = ImageSynthesis.async_call(model="qwen-image", prompt="a poster", n=1, api_key=KEY)
    assert rsp.status_code == 200, rsp
    done = ImageSynthesis.wait(rsp, api_key=KEY)
    assert done.output.task_status == "SUCCEEDED", done
    assert _download_png(done.output.results[0].url).size == (1664, 928)
    assert done.output.submit_time <= done.output.end_time  # same-format strings sort
    sdk.advance(25 * 3600)  # past the 24 h the service keeps tasks
    assert ImageSynthesis.fetch(rsp, api_key=KEY).output.task_status == "UNKNOWN"


def test_sdk_intl_region(sdk_base_url: None) -> None:
    with EmulatorThread(EmulatorConfig(time_scale=0, region="intl")) as intl:
        dashscope.base_http_api_url = intl.base_url
        rsp = ImageSynthesis.async_call(model="wanx2.1-t2i-turbo", prompt="x", n=1, api_key=KEY)
        assert (rsp.status_code, rsp.message) == (400, "Model not exist.")
        rsp = ImageSynthesis.async_call(model="wan2.1-t2i-turbo", prompt="x", n=1, api_key=KEY)
        assert rsp.status_code == 200, rsp
