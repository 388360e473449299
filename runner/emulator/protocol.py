"""Wire formats: error bodies (DashScope and OpenAI-compatible), ids, timestamps."""

from __future__ import annotations

import json
import uuid
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

_REQ = "invalid_request_error"  # the OpenAI type of most refusals

# DashScope code: (HTTP status, default message, how the OpenAI-compatible endpoint names
# it as (code, type); None where that endpoint never answers it), after the reference's
# error table. Input errors are 400 in the current docs (older docs said 415).
_ERROR_TABLE: dict[str, tuple[int, str, tuple[str, str] | None]] = {
    "InvalidParameter": (400, "Invalid parameter.", ("invalid_parameter_error", _REQ)),
    "DataInspectionFailed": (
        400,
        "Input data may contain inappropriate content.",
        ("data_inspection_failed", "data_inspection_failed"),
    ),
    "Arrearage": (
        400,
        "Access denied, please make sure your account is in good standing.",
        ("Arrearage", "Arrearage"),
    ),
    "InvalidApiKey": (401, "Invalid API-key provided.", ("invalid_api_key", _REQ)),
    "AccessDenied": (403, "Access denied.", None),
    "ModelNotFound": (404, "Model not exist.", ("model_not_found", _REQ)),
    "BadRequest.InputDownloadFailed": (
        400, "Failed to download the input file.", ("invalid_parameter_error", _REQ)
    ),
    "BadRequest.UnsupportedFileFormat": (
        400, "The input file format is not supported.", ("invalid_parameter_error", _REQ)
    ),
    "Throttling": (429, "Requests throttling triggered.", ("limit_requests", "limit_requests")),
    "Throttling.RateQuota": (
        429,
        "Requests rate limit exceeded, please try again later.",
        ("limit_requests", "limit_requests"),
    ),
    "Throttling.AllocationQuota": (
        429,
        "Allocated quota exceeded, please increase your quota limit.",
        ("insufficient_quota", "insufficient_quota"),
    ),
    "InternalError": (
        500,
        "An internal error has occured, please try again later.",
        ("internal_error", "internal_error"),
    ),
    "InternalError.Algo": (500, "An internal error occured in the algorithm service.", None),
    "ModelUnavailable": (
        503,
        "Model is unavailable, please try again later.",
        ("ServiceUnavailable", "ServiceUnavailable"),
    ),
    "UnsupportedOperation": (
        400,
        "Failed to cancel the task, please confirm if the task is in PENDING status.",
        None,
    ),
}


class ApiError(Exception):
    """Raised by handlers; the error middleware turns it into the wire answer."""

    def __init__(
        self, code: str, message: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        status, default, _ = _ERROR_TABLE[code]
        super().__init__(message or default)
        self.status = status
        self.code = code
        self.message = message or default
        self.headers = headers or {}


# Set by the middleware for each request; aiohttp runs each request in its own task.
_REQUEST_ID: ContextVar[str] = ContextVar("emulator_request_id", default="")


def new_request_id() -> str:
    """A fresh id, also made the current request's id."""
    rid = str(uuid.uuid4())
    _REQUEST_ID.set(rid)
    return rid


def request_id() -> str:
    return _REQUEST_ID.get() or new_request_id()


BEIJING = timezone(timedelta(hours=8))


def wall_time(ts: float | None) -> str | None:
    """The service's timestamp: Beijing time without a zone, e.g. 2025-01-01 12:00:00.123."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, BEIJING).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def json_answer(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(payload, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def dashscope_error(err: ApiError, request_id: str) -> web.Response:
    body = {"request_id": request_id, "code": err.code, "message": err.message}
    return json_answer(body, err.status, err.headers)


def openai_error(err: ApiError, request_id: str) -> web.Response:
    code, kind = _ERROR_TABLE[err.code][2] or (err.code, _REQ)
    body = {
        "error": {"message": err.message, "type": kind, "param": None, "code": code},
        "request_id": request_id,
    }
    return json_answer(body, err.status, err.headers)


def oss_error(status: int, code: str, message: str, request_id: str) -> web.Response:
    """OSS answers signed-URL failures in XML."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
        f"  <Code>{code}</Code>\n  <Message>{message}</Message>\n"
        f"  <RequestId>{request_id}</RequestId>\n"
        "  <HostId>emulator-results.oss.local</HostId>\n</Error>\n"
    )
    return web.Response(text=xml, status=status, content_type="application/xml")
