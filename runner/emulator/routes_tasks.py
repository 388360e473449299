"""Async image tasks: submit (text2image, image2image), poll, list, cancel."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web

from runner.emulator.config import IMAGE_EDIT_FUNCTIONS, ModelSpec
from runner.emulator.context import (
    EmulatorState,
    ImageCall,
    before_answer,
    guard,
    open_image_call,
    state_of,
)
from runner.emulator.faults import TASK_KINDS, FaultKind, FiredFaults
from runner.emulator.inputs import checked_image, load_image, probe_image
from runner.emulator.protocol import BEIJING, ApiError, json_answer, request_id, wall_time
from runner.emulator.state import Task, new_task_id

_SIZE = re.compile(r"^\s*(\d+)\s*\*\s*(\d+)\s*$")
_MAX_SEED = 2_147_483_647


def _int_param(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(
            "InvalidParameter", f"parameters.{name} must be an integer in [{low}, {high}]."
        )
    return value


def _bool_param(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise ApiError("InvalidParameter", f"parameters.{name} must be a boolean.")
    return value


def parse_size(spec: ModelSpec, raw: object) -> tuple[int, int]:
    if not isinstance(raw, str) or (match := _SIZE.match(raw)) is None:
        raise ApiError("InvalidParameter", "parameters.size must look like 1024*1024.")
    width, height = int(match.group(1)), int(match.group(2))
    if spec.sizes is not None:
        if f"{width}*{height}" not in spec.sizes:
            allowed = ", ".join(spec.sizes)
            raise ApiError("InvalidParameter", f"size must be one of: {allowed}.")
    elif spec.area is not None:  # a total-area rule, 1:4-4:1, no per-side limit
        low, high = spec.area
        if not (low <= width * height <= high and 0.25 <= width / height <= 4):
            raise ApiError(
                "InvalidParameter",
                f"size {width}*{height} is out of range: the total pixels must be within "
                f"[{low}, {high}] and the aspect ratio within [1:4, 4:1].",
            )
    elif not (spec.min_side <= width <= spec.max_side and spec.min_side <= height <= spec.max_side):
        raise ApiError(
            "InvalidParameter",
            f"size {width}*{height} is out of range: each side must be within "
            f"[{spec.min_side}, {spec.max_side}].",
        )
    return width, height


def prompts(
    state: EmulatorState, container: dict[str, Any], spec: ModelSpec
) -> tuple[str, int, str | None]:
    """(prompt cut to the limit, original length, negative prompt cut to its limit)."""
    prompt = container.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError("InvalidParameter", "input.prompt is required.")
    negative = container.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ApiError("InvalidParameter", "negative_prompt must be a string.")
    limit = spec.prompt_limit or state.config.max_prompt_chars
    if len(prompt) > limit:
        state.stats.prompts_truncated += 1
    if negative is not None:
        negative = negative[: state.config.max_negative_prompt_chars]
    return prompt[:limit], len(prompt), negative


def check_inspection(state: EmulatorState, *texts: str | None) -> None:
    if state.injector.inspection_hit(*(t for t in texts if t)):
        raise ApiError("DataInspectionFailed")


def admit(state: EmulatorState, spec: ModelSpec) -> None:
    if not state.quotas.admit(spec, state.clock.mono()):
        raise ApiError("Throttling.RateQuota")


def task_fault(state: EmulatorState, faults: FiredFaults) -> FaultKind | None:
    kind = faults.first(TASK_KINDS)
    if kind is not None:
        state.stats.faults_injected[kind.value] += 1
    return kind


async def submit(request: web.Request) -> web.Response:
    endpoint = "image2image" if request.match_info["task"] == "image2image" else "text2image"
    call = await open_image_call(request, "submit", endpoint, sync=False)
    state, spec, inp, params = call.state, call.spec, call.inp, call.params
    prompt, prompt_chars, negative = prompts(state, inp, spec)
    n = _int_param(params, "n", spec.default_n, 1, spec.max_n)
    seed = _int_param(params, "seed", 0, 0, _MAX_SEED)
    extend = _bool_param(params, "prompt_extend", spec.prompt_extend_default)
    _bool_param(params, "watermark", False)
    function: str | None = None
    source: bytes | None = None
    if endpoint == "text2image":
        width, height = parse_size(spec, params.get("size", spec.default_size))
    elif spec.max_images > 1:
        source, (width, height) = await _images_input(call)
    else:
        function, source, (width, height) = await _edit_input(call)
    check_inspection(state, prompt, negative)
    admit(state, spec)
    pending_s, latency_s = state.board.draw_latency(spec.name, spec.latency_s)
    task = Task(
        task_id=new_task_id(), model=spec.name, n=n, parameters=params,
        kind="t2i" if endpoint == "text2image" else "edit",
        prompt=prompt, orig_prompt_chars=prompt_chars, negative_prompt=negative,
        prompt_extend=extend and endpoint == "text2image",
        width=width, height=height, seed=seed, function=function, source=source,
        fault=task_fault(state, call.faults), latency_s=latency_s,
        submit_wall=state.clock.wall(), submit_mono=state.clock.mono(),
    )
    task.billing = state.bill("task", task.task_id, spec.name, inp["prompt"], n)
    told = task.task_id
    if call.faults.has(FaultKind.DUPLICATE_TASK_ID) and state.board.tasks:
        state.stats.faults_injected[FaultKind.DUPLICATE_TASK_ID.value] += 1
        told = next(reversed(state.board.tasks))  # the task is made, another's id is told
    state.board.add(task, pending_s)
    state.stats.submits[spec.name] += 1
    answer = {
        "output": {"task_id": told, "task_status": "PENDING"},
        "request_id": request_id(),
    }
    await before_answer(request, call.faults)
    return json_answer(answer)


async def _edit_input(call: ImageCall) -> tuple[str, bytes, tuple[int, int]]:
    """wanx2.1-imageedit style: one ``base_image_url``, a ``function``, maybe a mask."""
    inp, spec = call.inp, call.spec
    function = inp.get("function")
    if function not in IMAGE_EDIT_FUNCTIONS:
        raise ApiError(
            "InvalidParameter",
            f"input.function {function!r} is not supported; use one of "
            + ", ".join(sorted(IMAGE_EDIT_FUNCTIONS)),
        )
    strength = call.params.get("strength", 0.5)
    if (
        isinstance(strength, bool)
        or not isinstance(strength, int | float)
        or not (0.0 <= strength <= 1.0)
    ):
        raise ApiError("InvalidParameter", "parameters.strength must be within [0, 1].")
    if "base_image_url" not in inp:
        raise ApiError("InvalidParameter", "input.base_image_url is required.")
    source, info = await checked_image(
        call.state, call.request, inp["base_image_url"], spec.min_side, spec.max_side
    )
    if function == "description_edit_with_mask":
        if "mask_image_url" not in inp:
            raise ApiError("InvalidParameter", "input.mask_image_url is required.")
        mask = await probe_image(await load_image(call.state, call.request, inp["mask_image_url"]))
        if (mask.width, mask.height) != (info.width, info.height):
            raise ApiError("InvalidParameter", "The mask must have the base image's size.")
    return function, source, (info.width, info.height)


async def _images_input(call: ImageCall) -> tuple[bytes, tuple[int, int]]:
    """wan2.5-i2i-preview style: ``input.images`` lists 1..max_images sources, no function."""
    spec = call.spec
    refs = call.inp.get("images")
    if not isinstance(refs, list) or not 1 <= len(refs) <= spec.max_images:
        raise ApiError(
            "InvalidParameter", f"input.images must list 1 to {spec.max_images} image URLs."
        )
    first: bytes | None = None
    size = (0, 0)
    for ref in refs:
        data, info = await checked_image(
            call.state, call.request, ref, spec.min_side, spec.max_side
        )
        if first is None:
            first, size = data, (info.width, info.height)
    assert first is not None  # refs is non-empty
    if "size" in call.params:
        size = parse_size(spec, call.params["size"])
    return first, size


def task_output(
    task: Task, timestamps: bool = True
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(output, usage) of a known task, as GET /tasks answers it."""
    output: dict[str, Any] = {"task_id": task.task_id, "task_status": task.status}
    if timestamps:
        output["submit_time"] = wall_time(task.submit_wall)
        if task.scheduled_wall is not None:
            output["scheduled_time"] = wall_time(task.scheduled_wall)
        if task.end_wall is not None:
            output["end_time"] = wall_time(task.end_wall)
    usage = None
    if task.status == "SUCCEEDED":
        ok = sum(1 for r in task.results if "url" in r)
        if task.choices:  # the newer interface: output.choices[].message.content[].image
            images = [{"image": r["url"], "type": "image"} for r in task.results if "url" in r]
            message = {"role": "assistant", "content": images}
            output["choices"] = [{"finish_reason": "stop", "message": message}]
            output["finished"] = True
        else:
            output["results"] = task.results
        output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": ok, "FAILED": task.n - ok}
        usage = {"image_count": ok}
    elif task.status == "FAILED":
        output["code"] = task.code
        output["message"] = task.message
        output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": 0, "FAILED": task.n}
    elif task.status in ("PENDING", "RUNNING"):
        output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": 0, "FAILED": 0}
    return output, usage


async def poll(request: web.Request) -> web.Response:
    state = state_of(request)
    faults = await guard(request, "poll")
    if not state.quotas.poll_allowed(state.clock.mono()):
        raise ApiError("Throttling", "Requests rate limit exceeded, please try again later.")
    state.stats.polls += 1
    task_id = request.match_info["task_id"]
    task = state.board.get(task_id)
    answer: dict[str, Any] = {"request_id": request_id()}
    if task is None or task.expired:
        answer["output"] = {"task_id": task_id, "task_status": "UNKNOWN"}
    else:
        output, usage = task_output(task, state.config.timestamps)
        answer["output"] = output
        if usage is not None:
            answer["usage"] = usage
    if faults.has(FaultKind.POLL_OTHER_TASK):
        state.stats.faults_injected[FaultKind.POLL_OTHER_TASK.value] += 1
        others = [t for t in state.board.tasks.values() if t.task_id != task_id]
        if others:
            answer["output"] = task_output(others[-1], state.config.timestamps)[0]
    if faults.has(FaultKind.POLL_NO_TASK_ID):
        state.stats.faults_injected[FaultKind.POLL_NO_TASK_ID.value] += 1
        answer["output"].pop("task_id", None)
    await before_answer(request, faults)
    return json_answer(answer)


_STAMP = "%Y%m%d%H%M%S"


def _stamp(raw: str | None, name: str) -> float | None:
    """A list query's time bound: YYYYMMDDhhmmss on the service's clock (Beijing time)."""
    if raw is None:
        return None
    try:
        return datetime.strptime(raw, _STAMP).replace(tzinfo=BEIJING).timestamp()
    except ValueError:
        raise ApiError("InvalidParameter", f"{name} must look like 20250108160359.") from None


async def list_tasks(request: web.Request) -> web.Response:
    """GET /tasks: the account's tasks in a window (at most 24 h), newest first, paged; on the
    task-query budget. Items name the task, its status, model and times, not its prompt
    (a poll of the task tells that)."""
    state = state_of(request)
    faults = await guard(request, "poll")
    if not state.quotas.poll_allowed(state.clock.mono()):
        raise ApiError("Throttling", "Requests rate limit exceeded, please try again later.")
    q = request.query
    start = _stamp(q.get("start_time"), "start_time")
    end = _stamp(q.get("end_time"), "end_time")
    if start is not None and end is not None and not 0 <= end - start <= 24 * 3600:
        raise ApiError("InvalidParameter", "The time window must be within 24 hours.")
    try:
        page_no = max(1, int(q.get("page_no", "1")))
        page_size = min(100, max(1, int(q.get("page_size", "10"))))
    except ValueError:
        raise ApiError("InvalidParameter", "page_no and page_size must be integers.") from None
    model, status = q.get("model_name"), q.get("status")
    found = [
        t
        for t in reversed(state.board.tasks.values())
        if (model is None or t.model == model)
        and (status is None or t.status == status)
        and (start is None or t.submit_wall >= start)
        and (end is None or t.submit_wall <= end)
    ]
    page = found[(page_no - 1) * page_size : page_no * page_size]
    items = []
    for t in page:
        item = {
            "task_id": t.task_id,
            "task_status": "UNKNOWN" if t.expired else t.status,
            "model_name": t.model,
            "submit_time": wall_time(t.submit_wall),
        }
        if t.end_wall is not None:
            item["end_time"] = wall_time(t.end_wall)
        items.append(item)
    state.stats.polls += 1
    answer = {
        "request_id": request_id(),
        "data": items,
        "total": len(found),
        "page_no": page_no,
        "page_size": page_size,
    }
    await before_answer(request, faults)
    return json_answer(answer)


async def cancel(request: web.Request) -> web.Response:
    state = state_of(request)
    faults = await guard(request, "cancel")
    task = state.board.get(request.match_info["task_id"])
    if task is None or not state.board.cancel(task):
        raise ApiError("UnsupportedOperation")
    await before_answer(request, faults)
    return json_answer({"request_id": request_id()})
