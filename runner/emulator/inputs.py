"""Input images named by requests: data URIs, the emulator's own URLs, oss:// uploads.

There is no network: besides data URIs and uploads, only loopback URLs can be fetched,
and the emulator's own result URLs are resolved without a round trip.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from runner.emulator.context import EmulatorState
from runner.emulator.images import ImageProbe, UnsupportedImage, parse_data_uri, probe
from runner.emulator.protocol import ApiError

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=20)


def _download_failed(url: str, why: str) -> ApiError:
    shown = url if len(url) <= 120 else url[:117] + "..."
    return ApiError(
        "BadRequest.InputDownloadFailed",
        f"Download the media resource timed out or failed: {shown} ({why})",
    )


async def _own_file(state: EmulatorState, path: str, query: dict[str, str], url: str) -> bytes:
    name = path.removeprefix("/files/").removesuffix(".png")
    record = state.files.files.get(name)
    try:
        expires = int(query.get("Expires", ""))
    except ValueError:
        expires = 0
    valid = query.get("Signature") == state.files.signature(name, expires)
    if record is None or not valid or state.clock.wall() > expires:
        raise _download_failed(url, "the URL answers 403/404")
    return await state.files.render(record)


async def _fetch(state: EmulatorState, url: str, cap: int) -> bytes:
    try:
        async with state.client().get(url, timeout=_FETCH_TIMEOUT) as resp:
            if resp.status != 200:
                raise _download_failed(url, f"HTTP {resp.status}")
            data = await resp.content.read(cap + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _download_failed(url, type(exc).__name__) from exc
    return data


async def load_image(state: EmulatorState, request: web.Request, ref: object) -> bytes:
    """The bytes behind an image reference, or the ApiError the service would answer."""
    if not isinstance(ref, str) or not ref:
        raise ApiError("InvalidParameter", "The image URL is missing or not a string.")
    cap = state.config.max_input_image_bytes
    if ref.startswith("data:"):
        try:
            data = await asyncio.to_thread(parse_data_uri, ref)
        except UnsupportedImage as exc:
            raise ApiError("BadRequest.UnsupportedFileFormat", str(exc)) from exc
        except ValueError as exc:
            raise ApiError("InvalidParameter", f"Invalid data URI: {exc}") from exc
    elif ref.startswith("oss://"):
        if request.headers.get("X-DashScope-OssResourceResolve", "").lower() != "enable":
            raise _download_failed(ref, "oss:// needs X-DashScope-OssResourceResolve: enable")
        stored = state.files.uploads.get(ref.removeprefix("oss://"))
        if stored is None:
            raise _download_failed(ref, "no such upload")
        data = stored
    else:
        parts = urlsplit(ref)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError("InvalidParameter", f"Unsupported image URL: {ref[:80]}")
        if parts.hostname not in _LOOPBACK:
            raise _download_failed(ref, "the emulator has no network")
        own = state.files.root_url
        if own and ref.startswith(own + "/files/"):
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            data = await _own_file(state, parts.path, query, ref)
        else:
            data = await _fetch(state, ref, cap)
    if len(data) > cap:
        raise ApiError("InvalidParameter", f"The image exceeds {cap // (1024 * 1024)} MB.")
    return data


async def probe_image(data: bytes) -> ImageProbe:
    try:
        return await asyncio.to_thread(probe, data)
    except UnsupportedImage as exc:
        raise ApiError("BadRequest.UnsupportedFileFormat", str(exc)) from exc


def check_sides(info: ImageProbe, low: int, high: int, what: str = "image") -> None:
    for side in (info.width, info.height):
        if not low <= side <= high:
            raise ApiError(
                "InvalidParameter",
                f"The {what} resolution {info.width}x{info.height} is out of range: "
                f"each side must be within [{low}, {high}] pixels.",
            )


async def checked_image(
    state: EmulatorState, request: web.Request, ref: object, low: int, high: int
) -> tuple[bytes, ImageProbe]:
    """An input image's bytes and probe, each side checked against [low, high]."""
    data = await load_image(state, request, ref)
    info = await probe_image(data)
    check_sides(info, low, high)
    return data, info
