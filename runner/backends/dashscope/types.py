"""What the client returns, and the reading of the service's answers into it.

Everything here is pure: JSON (or an error body) in, a model or a tuple out. Words that come
from the network pass through a ``scrub`` function before they are kept, because they end up
in exceptions, logs and the run's files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from runner.errors import DownloadError, ServerError, Uncertain
from runner.logs import REDACTED, scrub_text

__all__ = [
    "DownloadTooLarge",
    "EventHook",
    "ListedTask",
    "Submitted",
    "SyncResult",
    "TaskState",
    "TaskStatus",
    "service_time",
]

# SUSPENDED: listed by the official SDK's task-status constants; not an end, polled on
TaskStatus = Literal[
    "PENDING", "RUNNING", "SUSPENDED", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
_TASK_STATUSES: frozenset[str] = frozenset(get_args(TaskStatus))

EventHook = Callable[[str, dict[str, Any]], None]
Scrub = Callable[[str], str]

_BEIJING = timezone(timedelta(hours=8))  # the service's clock: Beijing time, no zone sent

# The OpenAI-compatible endpoint answers with lower-case codes; translate the ones the error
# table knows so classify() sees DashScope's names (others fall back to the HTTP status).
_COMPAT_CODES: dict[str, str] = {
    "invalid_api_key": "InvalidApiKey",
    "data_inspection_failed": "DataInspectionFailed",
    "model_not_found": "ModelNotFound",
    "limit_requests": "Throttling.RateQuota",
    "insufficient_quota": "Throttling.AllocationQuota",
    "arrearage": "Arrearage",
}


class Submitted(BaseModel):
    """The answer to a submit: the async task the service made (the journal records it
    as ``Accepted``)."""

    task_id: str
    request_id: str | None = None
    model: str


class TaskState(BaseModel):
    """One poll of a task. FAILED/UNKNOWN are returned, not raised: the scheduler decides."""

    task_id: str
    status: TaskStatus
    urls: list[str] = Field(default_factory=list)  # successful result URLs, in order
    item_errors: list[tuple[str, str]] = Field(default_factory=list)  # failed items, n>1
    code: str | None = None  # FAILED (or UNKNOWN) task
    message: str | None = None
    actual_prompts: list[str] = Field(default_factory=list)  # when prompt_extend rewrote it
    orig_prompts: list[str] = Field(default_factory=list)  # the prompt as the service got it
    request_id: str | None = None
    # The service's own clock (epoch seconds): end_time - submit_time is the task's true
    # duration, free of the poller's delay. None when the answer does not carry them.
    submit_time: float | None = None
    scheduled_time: float | None = None
    end_time: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class SyncResult(BaseModel):
    """The answer of the sync multimodal-generation call."""

    urls: list[str]
    request_id: str | None = None
    model: str


class DownloadTooLarge(DownloadError):
    """The result is bigger than ``download_max_bytes``. A DownloadError for the scheduler,
    but not retried inside the client: fetching the same bytes again cannot help."""


# --------------------------------------------------------------------------- small readers


def service_time(value: object) -> float | None:
    """Epoch seconds of the service's "YYYY-MM-DD HH:MM:SS.fff" (Beijing time, UTC+8)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    for form in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            naive = datetime.strptime(text, form)
        except ValueError:
            continue
        return naive.replace(tzinfo=_BEIJING).timestamp()
    return None


def safe_where(url: str) -> str:
    """scheme://host/path: result URLs carry pre-signed query strings, never log those."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def str_or_none(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def snippet(raw: bytes, limit: int = 200) -> str:
    """The start of a body, whitespace collapsed: enough to explain an odd answer."""
    text = raw[: limit * 4].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def redact(text: str, key: str) -> str:
    """Belt and braces: a server echoing the key (ours or any ``sk-...``) must not put it
    into our exceptions or logs."""
    if key and key in text:
        text = text.replace(key, REDACTED)
    text = scrub_text(text)  # any sk-... key, Bearer tokens, keys given to logging
    text = re.sub(r"(?i)bearer\s+\S+", "Bearer " + REDACTED, text)
    # Pre-signed query strings (Signature=...) stay out of messages too.
    return re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", r"\1?...", text)


def parse_error_body(raw: bytes) -> tuple[str | None, str, str | None]:
    """(code, message, request_id) of an error answer; tolerates HTML/XML/empty bodies."""
    try:
        data = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        code = str_or_none(data.get("code"))
        message = str_or_none(data.get("message")) or ""
        err = data.get("error")
        if isinstance(err, dict):  # OpenAI-compatible shape
            code = code or str_or_none(err.get("code")) or str_or_none(err.get("type"))
            message = message or str_or_none(err.get("message")) or ""
        if code is not None:
            code = _COMPAT_CODES.get(code, code)
        return code, message, str_or_none(data.get("request_id"))
    # OSS answers in XML: keep its <Code> for the log, the rest as a short snippet.
    match = re.search(rb"<Code>([^<]{1,100})</Code>", raw or b"")
    code = match.group(1).decode("utf-8", errors="replace") if match else None
    return code, snippet(raw) if raw else "", None


def header_request_id(headers: Mapping[str, str]) -> str | None:
    for name in ("x-request-id", "x-dashscope-request-id", "x-oss-request-id"):
        value = headers.get(name)
        if value:
            return value
    return None


# --------------------------------------------------------------------------- whole answers


def parse_submitted(data: dict[str, Any], model: str) -> Submitted:
    output = data.get("output")
    task_id = output.get("task_id") if isinstance(output, dict) else None
    request_id = str_or_none(data.get("request_id"))
    if not isinstance(task_id, str) or not task_id:
        raise Uncertain(
            "submit: HTTP 200 answer has no output.task_id; the task MAY have been "
            "accepted (and billed)",
            request_id=request_id,
            model=model,
        )
    return Submitted(task_id=task_id, request_id=request_id, model=model)


def _task_output(task_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """The ``output`` object of a poll answer, checked to be about ``task_id``: an answer
    that names no task, or another one, is malformed (polled again), never taken as this
    task's result."""
    request_id = str_or_none(data.get("request_id"))
    output = data.get("output")
    if not isinstance(output, dict):
        raise ServerError("task answer has no output object", request_id=request_id)
    status = output.get("task_status")
    if status not in _TASK_STATUSES:
        raise ServerError(
            f"task answer has an unknown output.task_status {status!r}", request_id=request_id
        )
    answered_id = output.get("task_id")
    if not isinstance(answered_id, str) or not answered_id:
        raise ServerError(
            f"asked for task {task_id!r}, the answer names no output.task_id",
            request_id=request_id,
        )
    if answered_id != task_id:
        raise ServerError(
            f"asked for task {task_id!r}, the answer is about {answered_id!r}",
            request_id=request_id,
        )
    return output


def _choice_images(choices: object) -> list[str]:
    """The image URLs of a ``choices`` answer: ``choices[].message.content[].image`` (the
    sync endpoint's answer, and the newer interface's finished task)."""
    urls: list[str] = []
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and isinstance(part.get("image"), str) and part["image"]:
                urls.append(part["image"])
    return urls


def _task_results(
    results: object, scrub: Scrub
) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(urls, item_errors, actual_prompts) of ``output.results``."""
    urls: list[str] = []
    item_errors: list[tuple[str, str]] = []
    actual_prompts: list[str] = []
    for item in results if isinstance(results, list) else []:
        if not isinstance(item, dict):
            continue
        url = item.get("url")
        if isinstance(url, str) and url:
            urls.append(url)
            prompt = item.get("actual_prompt")
            if isinstance(prompt, str) and prompt:
                actual_prompts.append(scrub_text(prompt))
        elif item.get("code") or item.get("message"):
            item_errors.append(
                (scrub(str(item.get("code") or "")), scrub(str(item.get("message") or "")))
            )
    return urls, item_errors, actual_prompts


def _orig_prompts(results: object) -> list[str]:
    """``results[].orig_prompt``: the prompt a t2i task was given (how a submit whose answer
    was lost is recognised)."""
    items = results if isinstance(results, list) else []
    return [
        item["orig_prompt"]
        for item in items
        if isinstance(item, dict) and isinstance(item.get("orig_prompt"), str)
    ]


class ListedTask(BaseModel):
    """One task of the account's task list (``GET /tasks``)."""

    task_id: str
    status: str | None = None
    model: str | None = None
    submit_time: float | None = None  # the service's clock, epoch seconds
    prompt: str | None = None  # when the listing carries it


def parse_task_list(data: dict[str, Any]) -> tuple[list[ListedTask], int | None]:
    """(tasks, total) of a task-list answer. Its fields are not on the reference's page, so
    the reading is tolerant: the first list of objects with a ``task_id`` under ``data``,
    ``tasks``, ``output`` or ``output.data``/``output.tasks``; status, model, submit time and
    prompt under the names the task answers use. A shape it cannot read is a ServerError."""
    output = data.get("output")
    places: list[object] = [data.get("data"), data.get("tasks"), output]
    if isinstance(output, dict):
        places += [output.get("data"), output.get("tasks")]
    for place in places:
        if not isinstance(place, list):
            continue
        tasks = [_listed(item) for item in place if isinstance(item, dict)]
        found = [t for t in tasks if t is not None]
        if found or not place:
            total = data.get("total")
            if total is None and isinstance(output, dict):
                total = output.get("total")
            return found, total if isinstance(total, int) else None
    raise ServerError(
        "task list answer has no list of tasks", request_id=str_or_none(data.get("request_id"))
    )


def _listed(item: dict[str, Any]) -> ListedTask | None:
    task_id = item.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        return None
    inner = item.get("input") if isinstance(item.get("input"), dict) else {}
    prompt = item.get("orig_prompt") or item.get("prompt") or inner.get("prompt")
    status = item.get("task_status") or item.get("status")
    model = item.get("model_name") or item.get("model")
    return ListedTask(
        task_id=task_id,
        status=str(status) if status else None,
        model=str(model) if model else None,
        submit_time=service_time(item.get("submit_time")),
        prompt=prompt if isinstance(prompt, str) else None,
    )


def parse_task(task_id: str, data: dict[str, Any], scrub: Scrub) -> TaskState:
    """A poll answer as a TaskState; a malformed one is a ServerError (polled again)."""
    output = _task_output(task_id, data)
    urls, item_errors, actual_prompts = _task_results(output.get("results"), scrub)
    urls += _choice_images(output.get("choices"))
    request_id = str_or_none(data.get("request_id"))
    if output["task_status"] == "SUCCEEDED" and not urls:
        # SUCCEEDED means at least one image: an answer without one is malformed.
        raise ServerError(
            f"task {task_id} SUCCEEDED without any result URL", request_id=request_id
        )
    # A FAILED task's words come from the network: scrubbed like an error answer's, since
    # they become the row's reason (failed.csv, summary, console).
    code, message = (str_or_none(scrub(str(output.get(k) or ""))) for k in ("code", "message"))
    return TaskState(
        task_id=task_id,
        status=output["task_status"],
        urls=urls,
        item_errors=item_errors,
        code=code,
        message=message,
        actual_prompts=actual_prompts,
        orig_prompts=_orig_prompts(output.get("results")),
        request_id=request_id,
        submit_time=service_time(output.get("submit_time")),
        scheduled_time=service_time(output.get("scheduled_time")),
        end_time=service_time(output.get("end_time")),
    )


def parse_sync(data: dict[str, Any], model: str) -> SyncResult:
    """The image URLs of a multimodal-generation answer."""
    output = data.get("output")
    urls = _choice_images(output.get("choices") if isinstance(output, dict) else None)
    request_id = str_or_none(data.get("request_id"))
    if not urls:
        raise ServerError(
            "multimodal-generation answer has no output.choices[].message.content[].image",
            request_id=request_id,
            model=model,
        )
    return SyncResult(urls=urls, request_id=request_id, model=model)


def parse_chat(data: dict[str, Any], model: str) -> str:
    """The message text of a chat/completions answer (text parts joined)."""
    request_id = str_or_none(data.get("request_id") or data.get("id"))
    choices = data.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts: keep the text ones
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        content = "".join(t for t in texts if isinstance(t, str))
    if not isinstance(content, str):
        raise ServerError(
            "chat answer has no choices[0].message.content", request_id=request_id, model=model
        )
    return content
