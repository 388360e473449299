"""HTTP helpers of the emulator tests (test_emulator, test_emulator_reference): headers,
paths, request bodies, submit / poll / wait, the judge call."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp

from runner.emulator import Emulator

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
ASYNC = {**AUTH, "X-DashScope-Async": "enable"}
T2I = "/services/aigc/text2image/image-synthesis"
I2I = "/services/aigc/image2image/image-synthesis"
GEN = "/services/aigc/multimodal-generation/generation"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def t2i_body(
    model: str = "wanx2.1-t2i-turbo", prompt: str = "a red fox", **params: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "input": {"prompt": prompt},
        "parameters": {"n": 1, "size": "1024*1024", **params},
    }


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str] = ASYNC
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def submit(
    http: aiohttp.ClientSession, emu: Emulator, body: dict[str, Any], path: str = T2I
) -> str:
    status, answer, _ = await post(http, emu.base_url + path, body)
    assert status == 200, answer
    assert answer["output"]["task_status"] == "PENDING"
    return str(answer["output"]["task_id"])


async def fetch(http: aiohttp.ClientSession, emu: Emulator, task_id: str) -> dict[str, Any]:
    async with http.get(f"{emu.base_url}/tasks/{task_id}", headers=AUTH) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


async def wait(http: aiohttp.ClientSession, emu: Emulator, task_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            answer = await fetch(http, emu, task_id)
            if answer["output"]["task_status"] not in ("PENDING", "RUNNING"):
                return answer
            await asyncio.sleep(0.06)  # stays under the 20 QPS poll budget


def gen_body(
    image: str | None,
    text: str = "change the sign to OPEN",
    model: str = "qwen-image-edit",
    **params: Any,
) -> dict[str, Any]:
    content: list[dict[str, str]] = [{"image": image}] if image else []
    content.append({"text": text})
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": {"n": 1, "watermark": False, **params},
    }


async def judge(
    http: aiohttp.ClientSession,
    emu: Emulator,
    text: str,
    *images: bytes,
    model: str = "qwen-vl-max",
) -> tuple[int, dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": data_uri(img)}} for img in images]
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a professional digital artist."},
            {"role": "user", "content": content},
        ],
    }
    async with http.post(
        f"{emu.root_url}/compatible-mode/v1/chat/completions", json=body, headers=AUTH
    ) as resp:
        return resp.status, await resp.json()
