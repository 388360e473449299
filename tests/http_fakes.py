"""An in-memory transport for the DashScope client: scripted answers, recorded requests.

No socket and no patching of aiohttp: a test scripts what each request gets (a status,
headers and a body, or a connection error to raise) and reads back what the client sent.
Hand it to a client (``DashScopeClient(cfg, transport=fake)``), or, for code that builds its
own client (``run_all``), use it as a context manager: inside the block it is the transport
every new client gets.

Routes match on method and the exact URL (query string included), first scripted first; an
answer is used once unless ``repeat=True``. A request nothing matches fails like a refused
connection (nothing sent), and is recorded like every other.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy

from runner.backends.dashscope import ClientConfig, Request, Response
from runner.backends.dashscope import client as client_module


@dataclass
class Answer:
    """What one request gets: an answer, or ``exception`` raised instead of one."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    exception: BaseException | None = None


def answer(
    status: int = 200,
    *,
    payload: Any = None,
    body: str | bytes = b"",
    headers: Mapping[str, str] | None = None,
    content_type: str | None = None,
    exception: BaseException | None = None,
) -> Answer:
    """An answer: ``payload`` is sent as JSON, else ``body`` as it is."""
    all_headers = CIMultiDict(headers or {})
    if payload is not None:
        body = json.dumps(payload).encode()
        content_type = content_type or "application/json"
    if content_type:
        all_headers.setdefault("Content-Type", content_type)
    raw = body.encode() if isinstance(body, str) else body
    return Answer(status, raw, CIMultiDictProxy(all_headers), exception)


Script = Answer | Callable[[Request], Answer]


def refused(url: str) -> aiohttp.ClientConnectorError:
    """What aiohttp raises when nothing listens: a connect-phase failure, nothing was sent."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    key = ConnectionKey(
        parts.hostname or "", port, parts.scheme == "https", True, None, None, None, None
    )
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


@dataclass
class _Route:
    method: str
    url: str
    script: Script
    repeat: bool


class FakeResponse:
    """The answer as the client reads it; Content-Length only when the script sets it."""

    def __init__(self, scripted: Answer) -> None:
        self.status = scripted.status
        self.headers: Mapping[str, str] = scripted.headers
        length = scripted.headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None
        self._body = scripted.body

    async def read(self, limit: int | None = None) -> bytes:
        return self._body if limit is None else self._body[:limit]

    async def iter_chunks(self, size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(self._body), size):
            yield self._body[start : start + size]


class FakeTransport:
    """A :class:`runner.backends.dashscope.Transport` that answers from a script."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._routes: list[_Route] = []
        self._previous: Any = None

    # ---- scripting

    def add(
        self,
        method: str,
        url: str,
        *,
        callback: Callable[[Request], Answer] | None = None,
        repeat: bool = False,
        **answer_kw: Any,
    ) -> None:
        """Script the next answer to ``method url``: ``answer(**answer_kw)``, or what
        ``callback(request)`` returns at the time of the request."""
        script: Script = callback if callback is not None else answer(**answer_kw)
        self._routes.append(_Route(method.upper(), url, script, repeat))

    def get(self, url: str, **kw: Any) -> None:
        self.add("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> None:
        self.add("POST", url, **kw)

    def calls(self, method: str, url: str) -> list[Request]:
        """The requests sent to ``method url``, in order."""
        return [r for r in self.requests if r.method == method.upper() and r.url == url]

    # ---- the Transport protocol

    @asynccontextmanager
    async def send(self, request: Request) -> AsyncIterator[Response]:
        self.requests.append(request)
        scripted = self._answer_for(request)
        if scripted.exception is not None:
            raise scripted.exception
        yield FakeResponse(scripted)

    async def aclose(self) -> None:
        """Nothing to close: the script outlives every client that used it."""

    def _answer_for(self, request: Request) -> Answer:
        for route in self._routes:
            if route.method == request.method and route.url == request.url:
                if not route.repeat:
                    self._routes.remove(route)
                script = route.script
                return script(request) if callable(script) else script
        raise refused(request.url)

    # ---- the default transport of new clients, inside a ``with`` block

    def __enter__(self) -> FakeTransport:
        self._previous = client_module.default_transport
        client_module.default_transport = self._as_default
        return self

    def __exit__(self, *exc_info: object) -> None:
        client_module.default_transport = self._previous

    def _as_default(self, config: ClientConfig, session: object = None) -> FakeTransport:
        return self
