"""Result downloads behind signed, expiring URLs (OSS-like), and temporary uploads.

Upload flow (as the SDK's oss_utils does it): GET {base}/uploads?action=getPolicy&model=M
returns a policy whose upload_host is this emulator's /_oss/upload; a multipart POST there
stores the file; requests then name oss://<key> with X-DashScope-OssResourceResolve: enable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

from aiohttp import BodyPartReader, web

from runner.emulator.context import (
    ConnectionReset,
    EmulatorState,
    before_answer,
    guard,
    region_of,
    state_of,
)
from runner.emulator.faults import DOWNLOAD_KINDS, FaultKind, FiredFaults
from runner.emulator.images import corrupt_png
from runner.emulator.protocol import ApiError, json_answer, oss_error, request_id

_HTML = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    "<h1>502 Bad Gateway</h1><p>The proxy server received an invalid response.</p>"
    "</body></html>"
)
_CHUNK = 1024 * 1024
_STORAGE_FAULTS = (
    (FaultKind.INTERNAL_ERROR, 500, "InternalError"),
    (FaultKind.MODEL_UNAVAILABLE, 503, "ServiceUnavailable"),
    (FaultKind.RATE_LIMIT, 429, "SlowDown"),
    (FaultKind.RATE_LIMIT_RETRY_AFTER, 429, "SlowDown"),
)


def _host_fault(state: EmulatorState, faults: FiredFaults, rid: str) -> web.Response | None:
    """A fault of the storage host itself, whatever the URL: a reset, a 5xx, or a 429
    throttle of the bucket (only when a rule names the download endpoint); the object
    itself is fine and a later GET gets it."""
    if faults.has(FaultKind.CONNECTION_RESET):
        state.stats.faults_injected[FaultKind.CONNECTION_RESET.value] += 1
        raise ConnectionReset
    for kind, status, code in _STORAGE_FAULTS:
        if faults.has(kind):
            state.stats.faults_injected[kind.value] += 1
            return oss_error(status, code, "Please reduce your request rate or retry.", rid)
    return None


def _signed_expiry(request: web.Request, name: str, rid: str) -> int | web.Response:
    """The URL's expiry time when its signature holds, else OSS's 403 answer."""
    query = request.query
    try:
        expires = int(query.get("Expires", ""))
    except ValueError:
        return oss_error(403, "AccessDenied", "You have no right to access this object.", rid)
    expected = state_of(request).files.signature(name, expires)
    if not hmac.compare_digest(query.get("Signature", ""), expected):
        return oss_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
            rid,
        )
    return expires


async def download(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    rid = request_id()
    faults = state.injector.draw("download")
    refused = _host_fault(state, faults, rid)
    if refused is not None:
        return refused
    name = request.match_info["name"].removesuffix(".png")
    expires = _signed_expiry(request, name, rid)
    if isinstance(expires, web.Response):
        return expires
    kind = faults.first(DOWNLOAD_KINDS)
    if kind is not None:
        state.stats.faults_injected[kind.value] += 1
    if state.clock.wall() > expires or kind is FaultKind.URL_EXPIRED:
        return oss_error(403, "AccessDenied", "Request has expired.", rid)
    record = state.files.files.get(name)
    if record is None or kind is FaultKind.URL_NOT_FOUND:
        return oss_error(404, "NoSuchKey", "The specified key does not exist.", rid)
    await before_answer(request, faults)
    headers = {"x-oss-request-id": rid, "x-oss-object-type": "Normal"}
    if kind is FaultKind.HTML_BODY:
        return _count(state, web.Response(text=_HTML, content_type="text/html", headers=headers))
    if kind is FaultKind.HUGE_BODY:
        return await _huge(request, state.config.faults.huge_body_bytes, headers)
    data = await state.files.render(record)
    if kind is FaultKind.CORRUPT_IMAGE:
        data = corrupt_png(data)
    headers["ETag"] = '"' + hashlib.md5(data).hexdigest().upper() + '"'
    if kind is FaultKind.TRUNCATED_DOWNLOAD:
        return await _truncated(request, data, headers)
    return _count(state, web.Response(body=data, content_type="image/png", headers=headers))


def _count(state: EmulatorState, response: web.Response) -> web.Response:
    state.stats.downloads += 1
    state.stats.download_bytes += response.content_length or 0
    return response


async def _truncated(
    request: web.Request, data: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """Promises the full Content-Length, sends half, then drops the connection."""
    response = web.StreamResponse(headers=headers)
    response.content_type = "image/png"
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    state = state_of(request)
    state.stats.downloads += 1
    state.stats.download_bytes += len(data) // 2
    if request.transport is not None:
        request.transport.abort()
    return response


async def _huge(request: web.Request, size: int, headers: dict[str, str]) -> web.StreamResponse:
    """A PNG-looking body of `size` bytes, chunked (no Content-Length): clients must cap."""
    response = web.StreamResponse(headers=headers)
    response.content_type = "image/png"
    response.enable_chunked_encoding()
    await response.prepare(request)
    state = state_of(request)
    state.stats.downloads += 1
    chunk = bytes(_CHUNK)
    sent = 0
    try:
        await response.write(b"\x89PNG\r\n\x1a\n")
        while sent < size and not state.stopping.is_set():
            piece = chunk[: min(_CHUNK, size - sent)]
            await response.write(piece)
            sent += len(piece)
            state.stats.download_bytes += len(piece)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client hung up once it hit its cap: that is the point
    return response


def _policy_signature(secret: str, policy: str) -> str:
    digest = hmac.new(secret.encode(), policy.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


async def upload_policy(request: web.Request) -> web.Response:
    state = state_of(request)
    faults = await guard(request, "upload")
    if request.query.get("action") != "getPolicy":
        raise ApiError("InvalidParameter", "action must be getPolicy.")
    model = request.query.get("model", "")
    spec = state.config.models.get(model)
    if spec is None or region_of(request) not in spec.regions:
        raise ApiError("InvalidParameter", "Model not exist.")
    expires = int(state.clock.wall()) + 300
    policy = base64.b64encode(
        json.dumps(
            {"expiration": expires, "conditions": [["content-length-range", 0, 104857600]]}
        ).encode()
    ).decode()
    data = {
        "policy": policy,
        "signature": _policy_signature(state.upload_secret, policy),
        "upload_dir": f"dashscope-instant/{uuid.uuid4().hex}/{time.strftime('%Y-%m-%d')}",
        "upload_host": f"{state.files.root_url}/_oss/upload",
        "expire_in_seconds": 300,
        "max_file_size_mb": 100,
        "capacity_limit_mb": 999999,
        "oss_access_key_id": "EMULATOR",
        "x_oss_object_acl": "private",
        "x_oss_forbid_overwrite": "true",
    }
    await before_answer(request, faults)
    return json_answer({"request_id": request_id(), "data": data})


async def oss_upload(request: web.Request) -> web.Response:
    """The OSS PostObject side of an upload; answers like OSS, in XML on errors."""
    state = state_of(request)
    rid = request_id()
    fields: dict[str, str] = {}
    payload: bytes | None = None
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "file":
            payload = bytes(await part.read())
        elif part.name:
            fields[part.name] = (await part.read()).decode()
    policy = fields.get("policy", "")
    if fields.get("Signature") != _policy_signature(state.upload_secret, policy):
        return oss_error(403, "SignatureDoesNotMatch", "The policy signature is invalid.", rid)
    key = fields.get("key", "")
    if not key or payload is None:
        return oss_error(400, "InvalidArgument", "key and file are required.", rid)
    if key in state.files.uploads and fields.get("x-oss-forbid-overwrite") == "true":
        return oss_error(409, "FileAlreadyExists", "The object you specified already exists.", rid)
    state.files.store_upload(key, payload)
    state.stats.uploads += 1
    status = int(fields.get("success_action_status", "204"))
    return web.Response(
        status=status if status in (200, 201, 204) else 204, headers={"x-oss-request-id": rid}
    )
