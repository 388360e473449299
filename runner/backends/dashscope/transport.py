"""The wire: one request sent once, over a swappable :class:`Transport`.

httpx style: the client is given a transport (by default :class:`AiohttpTransport`; tests
give an in-memory one that scripts answers and records what was sent). A transport neither
retries nor interprets an answer; :mod:`runner.backends.dashscope.requester` does both.
A failed exchange raises what aiohttp raises (a ``ClientError`` subclass or ``TimeoutError``),
whatever the transport, so that one classification serves them all.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from runner.backends.dashscope.config import (
    CONNECTION_LIMIT,
    CONNECTION_LIMIT_PER_HOST,
    ClientConfig,
)
from runner.logs import REDACTED

__all__ = ["NETWORK_ERRORS", "AiohttpTransport", "Request", "Response", "Transport"]

# Network-level failures: nothing wrong with the request, so they are ServerError (retryable).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,  # includes ServerDisconnectedError, ServerTimeoutError
    aiohttp.ClientPayloadError,
    TimeoutError,  # asyncio.TimeoutError is the builtin since 3.11
)


# --------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class Request:
    """One request as it goes on the wire (headers included, so tests can read them)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    timeout_s: float = 60.0  # the whole exchange, connect + read

    def json(self) -> Any:
        return None if self.body is None else json.loads(self.body)

    def __repr__(self) -> str:
        # Never the Authorization value (a Request may end up in a traceback's locals);
        # a result URL's pre-signed query string stays out too.
        shown = {
            k: REDACTED if k.lower() == "authorization" else v for k, v in self.headers.items()
        }
        where = self.url.split("?", 1)[0]
        return f"Request({self.method} {where}, headers={shown}, timeout_s={self.timeout_s:g})"


class Response(Protocol):
    """An answer whose headers have arrived; the body is read on demand."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_length(self) -> int | None: ...
    async def read(self, limit: int | None = None) -> bytes: ...
    def iter_chunks(self, size: int) -> AsyncIterator[bytes]: ...


class Transport(Protocol):
    """Sends one request once. A failed exchange raises an ``aiohttp.ClientError`` subclass
    or ``TimeoutError``, as aiohttp itself does; answers are never interpreted here."""

    def send(self, request: Request) -> AbstractAsyncContextManager[Response]: ...
    async def aclose(self) -> None: ...


class _AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    @property
    def content_length(self) -> int | None:
        return self._resp.content_length

    async def read(self, limit: int | None = None) -> bytes:
        if limit is None:
            return await self._resp.read()
        return await self._resp.content.read(limit)

    def iter_chunks(self, size: int) -> AsyncIterator[bytes]:
        return self._resp.content.iter_chunked(size)


class AiohttpTransport:
    """The real transport: one aiohttp session, created lazily inside the running loop."""

    def __init__(self, config: ClientConfig, session: aiohttp.ClientSession | None = None) -> None:
        self._default_timeout_s = config.timeout_s
        self._connect_timeout_s = config.connect_timeout_s
        self._session = session
        self._owns_session = session is None

    @asynccontextmanager
    async def send(self, request: Request) -> AsyncIterator[Response]:
        # A separate connect limit, so that a host that never answers the SYN is told apart
        # from a slow answer (the circuit breaker counts only the former).
        timeout = aiohttp.ClientTimeout(
            total=request.timeout_s,
            sock_connect=min(self._connect_timeout_s, request.timeout_s),
        )
        async with self._get_session().request(
            request.method,
            request.url,
            data=request.body,
            headers=dict(request.headers),
            timeout=timeout,
        ) as resp:
            yield _AiohttpResponse(resp)

    async def aclose(self) -> None:
        """Close the session if this transport created it (a given session is the caller's)."""
        if self._owns_session and self._session is not None:
            # A later request would lazily open a fresh session.
            session, self._session = self._session, None
            if not session.closed:
                await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=CONNECTION_LIMIT, limit_per_host=CONNECTION_LIMIT_PER_HOST, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self._default_timeout_s)
            )
            self._owns_session = True
        return self._session
