"""Sync multimodal generation (qwen-image-edit, qwen-image): the answer carries the image URL.

The call holds one of the model's in-flight slots for its whole latency.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from runner.emulator.context import async_requested, guard, read_json, stall_if_planned, state_of
from runner.emulator.faults import FaultKind
from runner.emulator.inputs import check_sides, load_image, probe_image
from runner.emulator.protocol import ApiError, json_answer, request_id
from runner.emulator.routes_tasks import admit, check_inspection, parse_size, task_fault
from runner.emulator.state import ResultFile


def _contents(inp: dict[str, Any]) -> tuple[list[object], list[str]]:
    """(image references, texts) of the user messages."""
    messages = inp.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("InvalidParameter", "input.messages must be a non-empty list.")
    images: list[object] = []
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            raise ApiError("InvalidParameter", "message content must be a list.")
        for part in content:
            if not isinstance(part, dict):
                raise ApiError("InvalidParameter", "content items must be objects.")
            if "image" in part:
                images.append(part["image"])
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
    return images, texts


async def generation(request: web.Request) -> web.Response:
    state = state_of(request)
    plan = await guard(request, "generation")
    if async_requested(request):
        raise ApiError("AccessDenied", "current user api does not support asynchronous calls")
    body = await read_json(request)
    spec = state.spec_for(body, "multimodal")
    inp = body.get("input")
    params = body.get("parameters") or {}
    if not isinstance(inp, dict) or not isinstance(params, dict):
        raise ApiError("InvalidParameter", "input (and parameters, if given) must be objects.")
    images, texts = _contents(inp)
    prompt = " ".join(t for t in texts if t.strip())
    if not prompt:
        raise ApiError("InvalidParameter", "A text item with the instruction is required.")
    if len(prompt) > state.config.max_prompt_chars:
        state.stats.prompts_truncated += 1
        prompt = prompt[: state.config.max_prompt_chars]
    n = params.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise ApiError("InvalidParameter", f"parameters.n must be 1 for {spec.name}.")
    negative = params.get("negative_prompt")
    source: bytes | None = None
    if spec.name == "qwen-image":
        if images:
            raise ApiError("InvalidParameter", "qwen-image takes text only.")
        width, height = parse_size(spec, params.get("size", spec.default_size))
    else:
        if len(images) != 1:
            raise ApiError("InvalidParameter", f"{spec.name} takes exactly one image.")
        source = await load_image(state, request, images[0])
        info = await probe_image(source)
        check_sides(info, spec.min_side, spec.max_side)
        width, height = info.width, info.height
    check_inspection(state, prompt, negative if isinstance(negative, str) else None)
    admit(state, spec)
    state.stats.sync_calls[spec.name] += 1
    try:
        _, latency_s = state.board.draw_latency(spec.name, spec.latency_s)
        await state.sleep(latency_s)
    finally:
        state.quotas.release(spec.name)
    if task_fault(state, plan) is FaultKind.TASK_FAILED:
        raise ApiError("InternalError.Algo")
    record = ResultFile(
        name=uuid.uuid4().hex,
        kind="t2i" if source is None else "edit",
        width=width,
        height=height,
        prompt=prompt,
        seed=int(params.get("seed", 0)) if isinstance(params.get("seed"), int) else 0,
        function="description_edit",
        source=source,
    )
    url = state.files.add(record)
    answer = {
        "output": {
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"image": url}]},
                }
            ]
        },
        "usage": {"width": width, "height": height, "image_count": 1},
        "request_id": request_id(),
    }
    await stall_if_planned(request, plan)
    return json_answer(answer)
