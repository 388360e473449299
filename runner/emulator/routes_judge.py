"""OpenAI-compatible chat completions for the Qwen-VL judge (see judge.py for the scoring)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

from aiohttp import web

from runner.emulator.context import before_answer, guard, read_json, region_of, state_of
from runner.emulator.images import ImageProbe
from runner.emulator.inputs import load_image, probe_image
from runner.emulator.judge import judge
from runner.emulator.protocol import ApiError, json_answer


def image_token_count(info: ImageProbe) -> int:
    """Qwen-VL counts one token per 28x28 patch: about 1.3k for a 1024x1024 image."""
    return max(4, math.ceil(info.width / 28) * math.ceil(info.height / 28)) + 2


def _parts(messages: object) -> tuple[list[str], list[object]]:
    """(texts, image references) over all messages, in order."""
    if not isinstance(messages, list) or not messages:
        raise ApiError("InvalidParameter", "messages must be a non-empty list.")
    texts: list[str] = []
    images: list[object] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError("InvalidParameter", "each message must be an object.")
        content = message.get("content")
        if message.get("role") == "assistant":
            continue  # earlier answers: the question is in the other turns
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise ApiError("InvalidParameter", "message content must be a string or a list.")
        for part in content:
            if not isinstance(part, dict):
                raise ApiError("InvalidParameter", "content parts must be objects.")
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                ref = part.get("image_url")
                images.append(ref.get("url") if isinstance(ref, dict) else ref)
    return texts, images


async def chat_completions(request: web.Request) -> web.Response:
    state = state_of(request)
    faults = await guard(request, "judge")
    body = await read_json(request)
    spec = state.spec_for(body, "chat", region_of(request))
    if body.get("stream"):
        raise ApiError("InvalidParameter", "The emulator answers stream=false only.")
    now = state.clock.mono()
    if not state.quotas.judge_allowed(spec, now):
        raise ApiError("Throttling.RateQuota")
    texts, refs = _parts(body.get("messages"))
    images = [await load_image(state, request, ref) for ref in refs]
    image_tokens = [image_token_count(await probe_image(data)) for data in images]
    text = "\n".join(texts)
    prompt_tokens = len(text) // 3 + sum(image_tokens)
    if not state.quotas.judge_tokens_allowed(spec, now, prompt_tokens):
        # The tokens-a-minute throttle (the reference): clears within about a minute.
        raise ApiError("Throttling.AllocationQuota")
    state.stats.judge_calls[spec.name] += 1
    _, latency_s = state.board.draw_latency(spec.name, spec.latency_s)
    await state.sleep(latency_s)
    try:
        verdict = await asyncio.to_thread(judge, text, images)
    except ValueError as exc:
        raise ApiError("InvalidParameter", str(exc)) from exc
    content = verdict.as_content(state.config.judge_answers)
    completion_tokens = len(content) // 3
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": spec.name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
    }
    await before_answer(request, faults)
    return json_answer(answer)
