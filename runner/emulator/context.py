"""Per-instance state shared by the route handlers, plus the checks every API call makes."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from runner.emulator.clock import Clock
from runner.emulator.config import (
    ASYNC_ENDPOINTS,
    EmulatorConfig,
    Endpoint,
    ModelSpec,
    Region,
)
from runner.emulator.faults import REQUEST_KINDS, FaultConfig, FaultInjector, FaultKind, FiredFaults
from runner.emulator.protocol import ApiError
from runner.emulator.quotas import QuotaBook
from runner.emulator.state import FileStore, TaskBoard
from runner.emulator.stats import StatsRecorder

# Bodies above this are parsed off the loop: base64 images make them large.
_BIG_BODY = 256 * 1024


class ConnectionReset(Exception):
    """Raised by a handler to drop the connection with a TCP RST instead of answering."""


@dataclass
class EmulatorState:
    config: EmulatorConfig
    stats: StatsRecorder = field(init=False)
    quotas: QuotaBook = field(init=False)
    files: FileStore = field(init=False)
    board: TaskBoard = field(init=False)
    injector: FaultInjector = field(init=False)
    clock: Clock = field(default_factory=Clock)
    billed: deque[dict[str, Any]] = field(init=False)
    keys_revoked: bool = False
    _moved: asyncio.Event = field(default_factory=asyncio.Event)
    upload_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _client: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self.stats = StatsRecorder(self.config.timeline_cap)
        self.quotas = QuotaBook(self.config, self.stats)
        self.files = FileStore(self.config, secrets.token_bytes(16), self.clock)
        self.board = TaskBoard(self.config, self.stats, self.quotas, self.files, self.clock)
        self.billed = deque(maxlen=self.config.billed_cap)
        self.injector = FaultInjector(self.config.faults, self.config.seed)

    def set_faults(self, faults: FaultConfig) -> None:
        self.config.faults = faults
        self.injector = FaultInjector(faults, self.config.seed)

    def client(self) -> aiohttp.ClientSession:
        """For fetching loopback input URLs that the emulator does not serve itself."""
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(trust_env=False)
        return self._client

    async def close(self) -> None:
        self.stopping.set()
        self.board.close()
        if self._client is not None:
            await self._client.close()

    async def sleep(self, seconds: float) -> None:
        """Sleeps on the emulator's clock: wakes at once when the emulator stops, and early
        when advance() moves the clock past the end (a sync call's latency)."""
        deadline = self.clock.mono() + seconds
        while not self.stopping.is_set():
            remaining = deadline - self.clock.mono()
            if remaining <= 0:
                return
            moved = self._moved
            stop = asyncio.ensure_future(self.stopping.wait())
            jump = asyncio.ensure_future(moved.wait())
            try:
                await asyncio.wait({stop, jump}, timeout=remaining, return_when="FIRST_COMPLETED")
            finally:
                stop.cancel()
                jump.cancel()

    def advance(self, seconds: float) -> None:
        """Moves the clock forward: tasks finish, age and expire, sleepers wake."""
        self.board.advance(seconds)
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()  # every sleeper waits on this one: they all look at the clock again

    def bill(
        self, kind: str, ident: str, model: str, prompt: str, n: int, images: int | None = None
    ) -> dict[str, Any]:
        """Records what the account pays for: an accepted task or an answered sync call.
        ``images`` is settled when the work ends (failed images are not billed); a task's
        entry has None until then."""
        entry = {
            "kind": kind,
            "id": ident,
            "model": model,
            "prompt": prompt,
            "n": n,
            "images": images,
            "t": self.clock.wall(),
        }
        self.billed.append(entry)
        return entry

    def spec_for(self, body: dict[str, Any], endpoint: Endpoint, region: Region) -> ModelSpec:
        """The model a request names, as the region serves it.

        A model the region does not serve (or not on this endpoint) answers 400
        InvalidParameter "Model not exist." on the native API (the reference); the
        OpenAI-compatible endpoint answers 404 model_not_found instead. A model the region
        serves in the other mode only (qwen-image-max on the async text2image endpoint, an
        async-only model on the sync one) answers 403 AccessDenied "current user api does
        not support asynchronous (synchronous) calls", as the service does."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError("InvalidParameter", "Model is required.")
        spec = self.config.models.get(model)
        if spec is not None and region in spec.regions and endpoint not in spec.endpoints:
            asked_sync = endpoint == "multimodal"
            if asked_sync and spec.endpoints & ASYNC_ENDPOINTS:
                raise ApiError(
                    "AccessDenied", "current user api does not support synchronous calls"
                )
            if not asked_sync and endpoint != "chat" and "multimodal" in spec.endpoints:
                raise ApiError(
                    "AccessDenied", "current user api does not support asynchronous calls"
                )
        if spec is None or endpoint not in spec.endpoints or region not in spec.regions:
            if endpoint == "chat":
                raise ApiError(
                    "ModelNotFound",
                    f"The model `{model}` does not exist or you do not have access to it.",
                )
            raise ApiError("InvalidParameter", "Model not exist.")
        return spec


STATE_KEY: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)


def state_of(request: web.Request) -> EmulatorState:
    return request.app[STATE_KEY]


def region_of(request: web.Request) -> Region:
    """The region a request reached: by host name as on the real service (dashscope-intl...,
    dashscope.aliyuncs...), else the configured one (loopback has no name to go by)."""
    host = request.host.lower()
    if host.startswith("dashscope-intl.") or host.startswith("dashscope-us."):
        return "intl"
    if host.startswith("dashscope."):
        return "cn"
    return state_of(request).config.region


def bearer_key(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


async def guard(request: web.Request, endpoint: str) -> FiredFaults:
    """Authenticates, then draws this answer's faults and applies the request-level one."""
    state = state_of(request)
    key = bearer_key(request)
    allowed = state.config.api_keys
    if not key or (allowed is not None and key not in allowed):
        raise ApiError("InvalidApiKey")
    if state.keys_revoked or state.injector.key_revoked():
        raise ApiError("InvalidApiKey")
    faults = state.injector.draw(endpoint)
    kind = faults.first(REQUEST_KINDS)
    if kind is not None:
        state.stats.faults_injected[kind.value] += 1
        raise_request_fault(kind, state.config.faults)
    return faults


def raise_request_fault(kind: FaultKind, faults: FaultConfig) -> None:
    if kind is FaultKind.CONNECTION_RESET:
        raise ConnectionReset
    if kind is FaultKind.ARREARAGE:
        raise ApiError("Arrearage")
    if kind is FaultKind.RATE_LIMIT_RETRY_AFTER:
        raise ApiError("Throttling.RateQuota", headers={"Retry-After": str(faults.retry_after_s)})
    if kind is FaultKind.RATE_LIMIT:
        raise ApiError("Throttling.RateQuota")
    if kind is FaultKind.INTERNAL_ERROR:
        raise ApiError("InternalError")
    raise ApiError("ModelUnavailable")


class CutAnswer(Exception):
    """Raised by a handler to answer 200 with a Content-Length the body never reaches."""


async def before_answer(request: web.Request, faults: FiredFaults) -> None:
    """The faults of an answer whose work is done (a submitted task exists, a sync call's
    images are made, and billed): it comes late (stall), never (the connection is reset:
    answer_lost) or cut after its status line (answer_cut)."""
    state = state_of(request)
    if faults.has(FaultKind.STALL):
        state.stats.faults_injected[FaultKind.STALL.value] += 1
        await state.sleep(state.config.faults.stall_s)
    lost = ((FaultKind.ANSWER_LOST, ConnectionReset), (FaultKind.ANSWER_CUT, CutAnswer))
    for kind, error in lost:
        if faults.has(kind):
            state.stats.faults_injected[kind.value] += 1
            raise error


async def cut_answer(request: web.Request) -> web.StreamResponse:
    """200 and the start of a JSON body, then the connection closes short of its length."""
    head = b'{"output": {"task_id": "'
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(head) + 64
    await resp.prepare(request)
    await resp.write(head)
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp


def reset_connection(request: web.Request) -> web.Response:
    """Closes the socket with RST (SO_LINGER 0); the returned answer is never written."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        if len(raw) > _BIG_BODY:
            body = await asyncio.to_thread(json.loads, raw)
        else:
            body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("InvalidParameter", f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError("InvalidParameter", "Request body must be a JSON object.")
    return body


def async_requested(request: web.Request) -> bool:
    return request.headers.get("X-DashScope-Async", "").strip().lower() == "enable"


@dataclass
class ImageCall:
    """What an image-generation request names, read and checked the same way for async
    submits and sync calls."""

    request: web.Request
    state: EmulatorState
    faults: FiredFaults
    spec: ModelSpec
    inp: dict[str, Any]
    params: dict[str, Any]


async def open_image_call(
    request: web.Request, fault_endpoint: str, endpoint: Endpoint, *, sync: bool
) -> ImageCall:
    """Authenticates, applies request faults, refuses the wrong call mode (an async header on
    a sync call, or none on an async submit), then reads the model, input and parameters."""
    state = state_of(request)
    faults = await guard(request, fault_endpoint)
    if async_requested(request) == sync:
        mode = "asynchronous" if sync else "synchronous"
        raise ApiError("AccessDenied", f"current user api does not support {mode} calls")
    body = await read_json(request)
    spec = state.spec_for(body, endpoint, region_of(request))
    inp = body.get("input")
    params = body.get("parameters") or {}
    if not isinstance(inp, dict) or not isinstance(params, dict):
        raise ApiError("InvalidParameter", "input (and parameters, if given) must be objects.")
    return ImageCall(request, state, faults, spec, inp, params)
