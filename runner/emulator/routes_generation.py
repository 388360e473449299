"""Generation named by chat-style messages: the sync multimodal-generation call (the
qwen-image-edit family, the qwen-image family's text-to-image, qwen-image-2.0,
z-image-turbo; wan2.6/2.7 on their sync route), whose answer carries the image URLs, and
the newer async interface (image-generation/generation: wan2.6-t2i, wan2.6-image,
wan2.7-image), whose task's poll answers with ``choices``.

A sync call counts as in flight for its whole latency; most sync models have no in-flight
cap there (the reference), only a call rate. A model that does not take
``parameters.prompt_extend`` (qwen-image-edit) refuses it.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from aiohttp import web

from runner.emulator.config import ModelSpec
from runner.emulator.context import ImageCall, before_answer, open_image_call
from runner.emulator.faults import FaultKind
from runner.emulator.inputs import checked_image
from runner.emulator.protocol import ApiError, json_answer, request_id
from runner.emulator.routes_tasks import admit, check_inspection, parse_size, task_fault
from runner.emulator.state import ResultFile, Task, new_task_id

_MAX_SEED = 2_147_483_647


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


def _extend(spec: ModelSpec, params: dict[str, Any]) -> bool:
    """parameters.prompt_extend: a bool, refused by a model that does not take it."""
    if "prompt_extend" not in params:
        return spec.prompt_extend_default and spec.takes_prompt_extend
    if not spec.takes_prompt_extend:
        raise ApiError("InvalidParameter", f"{spec.name} does not take parameters.prompt_extend.")
    if not isinstance(params["prompt_extend"], bool):
        raise ApiError("InvalidParameter", "parameters.prompt_extend must be a boolean.")
    return params["prompt_extend"]


def _edit_params(spec: ModelSpec, params: dict[str, Any], t2i: bool) -> tuple[int, str | None]:
    """(n, size) of a call: n within the model's range; a text-to-image size is the
    model's own rule (_picture); an edit's size (qwen-image-edit-plus) only with n = 1,
    each side 512-2048."""
    n = params.get("n", spec.default_n)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= spec.max_n:
        raise ApiError(
            "InvalidParameter", f"parameters.n must be within [1, {spec.max_n}] for {spec.name}."
        )
    size = params.get("size")
    if size is None or t2i:
        return n, size
    if spec.max_n == 1:
        raise ApiError("InvalidParameter", f"{spec.name} does not take parameters.size.")
    if n != 1:
        raise ApiError("InvalidParameter", "parameters.size is only supported with n = 1.")
    width, height = parse_size(spec.model_copy(update={"min_side": 512, "max_side": 2048}), size)
    return n, f"{width}*{height}"


def _instruction(call: ImageCall, texts: list[str]) -> tuple[str, str]:
    """(the whole instruction, as billed; the part the model reads, cut to the limit)."""
    full_prompt = " ".join(t for t in texts if t.strip())
    if not full_prompt:
        raise ApiError("InvalidParameter", "A text item with the instruction is required.")
    limit = call.state.config.max_prompt_chars
    if len(full_prompt) > limit:
        call.state.stats.prompts_truncated += 1
    return full_prompt, full_prompt[:limit]


async def _picture(
    call: ImageCall, images: list[object], size: str | None
) -> tuple[bytes | None, int, int]:
    """(the first source image, None for text-to-image; the result's width and height)."""
    spec = call.spec
    if spec.t2i and not images:  # text only (qwen-image-2.0 also edits, with images)
        width, height = parse_size(spec, call.params.get("size", spec.default_size))
        return None, width, height
    if spec.t2i and spec.max_images < 1:
        raise ApiError("InvalidParameter", f"{spec.name} takes text only.")
    if not 1 <= len(images) <= spec.max_images:
        count = "exactly one image" if spec.max_images == 1 else f"1 to {spec.max_images} images"
        raise ApiError("InvalidParameter", f"{spec.name} takes {count}.")
    source: bytes | None = None
    width = height = 0
    for ref in images:
        data, info = await checked_image(
            call.state, call.request, ref, spec.min_side, spec.max_side
        )
        if source is None:
            source, width, height = data, info.width, info.height
    if size is not None:
        width, height = (int(side) for side in size.split("*"))
    return source, width, height


async def generation(request: web.Request) -> web.Response:
    call = await open_image_call(request, "generation", "multimodal", sync=True)
    state, spec, params = call.state, call.spec, call.params
    images, texts = _contents(call.inp)
    full_prompt, prompt = _instruction(call, texts)
    n, size = _edit_params(spec, params, t2i=spec.t2i and not images)
    _extend(spec, params)
    negative = params.get("negative_prompt")
    source, width, height = await _picture(call, images, size)
    check_inspection(state, prompt, negative if isinstance(negative, str) else None)
    admit(state, spec.model_copy(update={"max_in_flight": spec.sync_in_flight}))
    state.stats.sync_calls[spec.name] += 1
    try:
        _, latency_s = state.board.draw_latency(spec.name, spec.latency_s)
        await state.sleep(latency_s)
    finally:
        state.quotas.release(spec.name)
    if task_fault(state, call.faults) is FaultKind.TASK_FAILED:
        raise ApiError("InternalError.Algo")
    seed = params.get("seed") if isinstance(params.get("seed"), int) else 0
    kind: Literal["t2i", "edit"] = "t2i" if source is None else "edit"
    content = []
    for index in range(n):
        record = ResultFile(
            name=uuid.uuid4().hex, kind=kind, width=width, height=height, prompt=prompt,
            seed=int(seed) + index, function="description_edit", source=source,
        )
        content.append({"image": state.files.add(record)})
    rid = request_id()
    # Billed once answered: a stalled answer is still paid for, even if the client gives up.
    state.bill("sync", rid, spec.name, full_prompt, n, images=n)
    answer = {
        "output": {
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                }
            ]
        },
        "usage": {"width": width, "height": height, "image_count": n},
        "request_id": rid,
    }
    await before_answer(request, call.faults)
    return json_answer(answer)


async def generation_task(request: web.Request) -> web.Response:
    """POST image-generation/generation (async header): a task named by messages, polled
    like any other; its finished poll answers with ``output.choices`` and ``finished``."""
    call = await open_image_call(request, "submit", "generation", sync=False)
    state, spec, params = call.state, call.spec, call.params
    images, texts = _contents(call.inp)
    full_prompt, prompt = _instruction(call, texts)
    t2i = spec.t2i and not images
    n, size = _edit_params(spec, params, t2i=t2i)
    extend = _extend(spec, params)
    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise ApiError("InvalidParameter", f"parameters.seed must be in [0, {_MAX_SEED}].")
    negative = params.get("negative_prompt")
    negative = negative if isinstance(negative, str) else None
    source, width, height = await _picture(call, images, size)
    check_inspection(state, prompt, negative)
    admit(state, spec)
    pending_s, latency_s = state.board.draw_latency(spec.name, spec.latency_s)
    task = Task(
        task_id=new_task_id(), model=spec.name, n=n, parameters=params,
        kind="t2i" if t2i else "edit", prompt=prompt, orig_prompt_chars=len(full_prompt),
        negative_prompt=negative, prompt_extend=extend and t2i, width=width, height=height,
        seed=seed, function=None if t2i else "description_edit", source=source,
        fault=task_fault(state, call.faults), latency_s=latency_s,
        submit_wall=state.clock.wall(), submit_mono=state.clock.mono(), choices=True,
    )
    task.billing = state.bill("task", task.task_id, spec.name, full_prompt, n)
    state.board.add(task, pending_s)
    state.stats.submits[spec.name] += 1
    answer = {
        "output": {"task_id": task.task_id, "task_status": "PENDING"},
        "request_id": request_id(),
    }
    await before_answer(request, call.faults)
    return json_answer(answer)
