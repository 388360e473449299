"""The async DashScope client: what to ask DashScope (or the emulator), and how to read it.

It composes requests (paths, bodies, the async header) and reads the answers into
:mod:`runner.backends.dashscope.types`; sending, typed errors and retries belong to the
:class:`~runner.backends.dashscope.requester.Requester` it is built on. Only idempotent GETs
(task polls, result downloads) are retried; submits, the sync multimodal call and chat raise
once, because the scheduler owns job-level retries and must see every 429 to learn a model's
quota.

Secrets: the API key lives in a ``SecretStr`` and is only turned into a header at the moment
a request to the API host is sent. It never goes into a log line, an exception, an event or a
repr, and result downloads (pre-signed OSS URLs) never carry it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import structlog

from runner.backends.dashscope.config import (
    GENERATION_PATH,
    I2I_PATH,
    MULTIMODAL_PATH,
    T2I_PATH,
    ClientConfig,
)
from runner.backends.dashscope.requester import Requester
from runner.backends.dashscope.transport import AiohttpTransport, Transport
from runner.backends.dashscope.types import (
    EventHook,
    ListedTask,
    Submitted,
    SyncResult,
    TaskState,
    parse_chat,
    parse_submitted,
    parse_sync,
    parse_task,
    parse_task_list,
)
from runner.errors import RowFailed
from runner.models import caps

__all__ = ["DashScopeClient", "default_transport", "send_image_request"]

log = structlog.get_logger(__name__)
T = TypeVar("T")


def default_transport(
    config: ClientConfig, session: aiohttp.ClientSession | None = None
) -> Transport:
    """The transport of a client given none: aiohttp (on ``session`` when one is given).
    Looked up at each construction, so that code which builds its own client (``run_all``)
    can be served by another transport (tests/http_fakes.py swaps it inside a block)."""
    return AiohttpTransport(config, session=session)


class DashScopeClient:
    """Async DashScope client. Use as ``async with DashScopeClient(cfg) as client: ...``.

    ``transport``: how requests travel (default :class:`AiohttpTransport`, on ``session``
    when one is given; a given transport or session is the caller's to close).
    ``on_event(name, payload)`` lets the scheduler count things: ``request`` (every attempt,
    ``{"kind", "model"}``), ``throttled`` (every 429), ``retry`` (every in-client retry).
    Payloads never hold the key, headers or pre-signed URLs.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        if session is not None and transport is not None:
            raise ValueError("give a session or a transport, not both")
        self._config = config
        self._owns_transport = transport is None
        self._transport = default_transport(config, session) if transport is None else transport
        self._http = Requester(config, self._transport, on_event)

    def __repr__(self) -> str:
        return f"DashScopeClient(base_url={self._config.base_url!r})"

    @property
    def config(self) -> ClientConfig:
        return self._config

    # ---- lifecycle

    async def __aenter__(self) -> DashScopeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the transport if this client chose it (a given one is the caller's)."""
        if self._owns_transport:
            await self._transport.aclose()

    # ---- public API: async tasks

    async def submit_text2image(
        self,
        model: str,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        size: str = "1024*1024",
        n: int = 1,
        seed: int | None = None,
        prompt_extend: bool = True,
        watermark: bool = False,
    ) -> Submitted:
        """Submit a text-to-image task (async mode). Not retried here."""
        parameters = self._parameters(
            model, prompt, n, watermark, size=size, prompt_extend=prompt_extend, seed=seed
        )
        input_ = _present(prompt=prompt, negative_prompt=negative_prompt or None)
        return await self._submit(T2I_PATH, model, input_, parameters)

    async def submit_image_edit(
        self,
        model: str,
        prompt: str,
        image: str,
        *,
        function: str = "description_edit",
        strength: float = 0.5,
        n: int = 1,
        seed: int | None = None,
        watermark: bool = False,
    ) -> Submitted:
        """Submit an image-edit task (wanx2.1-imageedit) on the image2image path.
        ``image`` is a URL or a ``data:`` URI. Not retried here."""
        # Only these functions take a strength.
        takes_strength = function in ("description_edit", "stylization_all")
        parameters = self._parameters(
            model, prompt, n, watermark, strength=strength if takes_strength else None, seed=seed
        )
        input_ = {"function": function, "prompt": prompt, "base_image_url": image}
        return await self._submit(I2I_PATH, model, input_, parameters)

    async def submit_images_edit(
        self,
        model: str,
        prompt: str,
        images: list[str],
        *,
        n: int = 1,
        size: str | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        watermark: bool = False,
        prompt_extend: bool = False,
    ) -> Submitted:
        """Submit an edit that names its sources as ``input.images`` (wan2.5-i2i-preview) on
        the image2image path. Not retried here."""
        parameters = self._parameters(
            model, prompt, n, watermark, size=size, seed=seed, prompt_extend=prompt_extend
        )
        if not images:
            raise ValueError("images is empty")
        input_ = _present(
            prompt=prompt, images=list(images), negative_prompt=negative_prompt or None
        )
        return await self._submit(I2I_PATH, model, input_, parameters)

    async def submit_generation(
        self,
        model: str,
        prompt: str,
        images: list[str] | None = None,
        *,
        n: int = 1,
        size: str | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        prompt_extend: bool = False,
        watermark: bool = False,
    ) -> Submitted:
        """Submit a task on the newer interface (wan2.6-t2i, wan2.6-image, wan2.7-image):
        ``input.messages`` with the text and any source ``images``; its poll answers with
        ``choices``. Not retried here."""
        parameters = self._parameters(
            model,
            prompt,
            n,
            watermark,
            size=size,
            negative_prompt=negative_prompt or None,
            seed=seed,
            prompt_extend=prompt_extend,
        )
        input_ = {"messages": [{"role": "user", "content": _content(prompt, images or [])}]}
        return await self._submit(GENERATION_PATH, model, input_, parameters)

    async def fetch_task(self, task_id: str, *, max_retries: int | None = None) -> TaskState:
        """Poll a task (GET, retried on Retryable errors, a malformed answer included;
        ``max_retries`` None: the config's). FAILED/UNKNOWN are returned."""
        return await self._http.call(
            "GET",
            self._task_url(task_id),
            kind="poll",
            parse=lambda data: parse_task(task_id, data, self._http.redact),
            max_retries=max_retries,
        )

    async def list_tasks(
        self, model: str, start: float, end: float, *, page_no: int = 1, page_size: int = 50
    ) -> tuple[list[ListedTask], int | None]:
        """The account's tasks of ``model`` submitted between ``start`` and ``end`` (epoch
        seconds; a window of at most 24 h), one page, and the total when the answer says it
        (GET, retried). How a submit whose answer was lost is found again."""
        query = urlencode(
            {
                "start_time": _list_stamp(start),
                "end_time": _list_stamp(end),
                "model_name": model,
                "page_no": page_no,
                "page_size": page_size,
            }
        )
        return await self._http.call(
            "GET",
            f"{self._config.base_url}/tasks?{query}",
            kind="list",
            parse=parse_task_list,
            model=model,
        )

    # ---- public API: sync calls

    async def multimodal(
        self,
        model: str,
        prompt: str,
        images: list[str],
        *,
        n: int = 1,
        negative_prompt: str | None = None,
        seed: int | None = None,
        watermark: bool = False,
        size: str | None = None,
        prompt_extend: bool | None = None,
    ) -> SyncResult:
        """The sync multimodal-generation call: text-to-image with no ``images`` (the
        qwen-image family, qwen-image-2.0, z-image-turbo; wan2.6-t2i on its sync route), an
        edit of ``images`` (the qwen-image-edit family; qwen-image-edit-plus returns n = 1-6
        images in one call). No async header, not retried."""
        parameters = self._parameters(
            model,
            prompt,
            n,
            watermark,
            negative_prompt=negative_prompt or None,
            seed=seed,
            size=size,
            prompt_extend=prompt_extend,
        )
        return await self._generate(
            "sync",
            MULTIMODAL_PATH,
            model,
            {"messages": [{"role": "user", "content": _content(prompt, images)}]},
            parameters,
            lambda data: parse_sync(data, model),
        )

    async def chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        temperature: float = 0.0,
        max_completion_tokens: int = 512,
    ) -> str:
        """OpenAI-compatible chat/completions (Qwen-VL judge); returns the message text.
        The answer's length is capped by ``max_completion_tokens`` (the endpoint's
        ``max_tokens`` is deprecated by 2026-05-30)."""
        body = {
            "model": model,
            "messages": messages,
            "temperature": temperature,
            "max_completion_tokens": max_completion_tokens,
        }
        base = self._config.compatible_base_url or ""  # always set by the config validator
        return await self._http.call(
            "POST",
            base + "/chat/completions",
            kind="chat",
            parse=lambda data: parse_chat(data, model),
            model=model,
            body=body,
        )

    # ---- public API: downloads

    async def download(self, url: str, *, max_retries: int | None = None) -> bytes:
        """Fetch a result URL (GET, retried; ``max_retries`` None: the config's) with a size
        cap. No Authorization header: result hosts are pre-signed OSS URLs. The bytes are not
        decoded here."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https") or not urlsplit(url).netloc:
            # Do not echo the URL: it may be a multi-megabyte data: URI.
            raise RowFailed(f"refusing to download a non-http(s) URL (scheme {scheme or 'none'!r})")
        return await self._http.download(url, max_retries=max_retries)

    # ---- internals

    def _task_url(self, task_id: str) -> str:
        if not task_id:
            raise ValueError("task_id is empty")
        return f"{self._config.base_url}/tasks/{quote(task_id, safe='')}"

    async def _submit(
        self, path: str, model: str, input_: dict[str, Any], parameters: dict[str, Any]
    ) -> Submitted:
        return await self._generate(
            "submit", path, model, input_, parameters, lambda data: parse_submitted(data, model)
        )

    async def _generate(
        self,
        kind: Literal["submit", "sync"],
        path: str,
        model: str,
        input_: dict[str, Any],
        parameters: dict[str, Any],
        parse: Callable[[dict[str, Any]], T],
    ) -> T:
        """POST a generation request; never retried here (the scheduler owns those retries).
        A submit starts an async task; the sync call waits for the images, for longer."""
        submit = kind == "submit"
        return await self._http.call(
            "POST",
            self._config.base_url + path,
            kind=kind,
            parse=parse,
            model=model,
            body={"model": model, "input": input_, "parameters": parameters},
            async_task=submit,
            timeout_s=None if submit else self._config.sync_timeout_s,
        )

    @staticmethod
    def _parameters(
        model: str, prompt: str, n: int, watermark: bool, **optional: object
    ) -> dict[str, Any]:
        """Checks ``n`` and the prompt's length, then the parameters of a call: ``n`` always
        (the server's default is 4 images: 4x the cost and quota), ``watermark``,
        ``prompt_extend`` always for a model that takes it (false when not given: the
        service's default rewrites the prompt) and never for one that does not
        (qwen-image-edit), and the other ``optional`` ones that are not None (None: left to
        the server)."""
        # A wrong n is the caller's mistake, not the service's: the capability table says
        # what one request may return (qwen-image: 1, qwen-image-edit-plus: 6, wanx: 4).
        spec = caps(model)
        if not 1 <= n <= spec.n_max:
            raise ValueError(f"n must be 1 to {spec.n_max} for {model}, got {n}")
        if len(prompt) > spec.prompt_limit:
            log.warning(
                "dashscope.prompt_truncated_by_server",
                model=model,
                chars=len(prompt),
                limit=spec.prompt_limit,
            )
        extend = optional.pop("prompt_extend", None)
        fixed: dict[str, Any] = {"n": n, "watermark": watermark}
        if spec.prompt_extend:
            fixed["prompt_extend"] = bool(extend)
        return fixed | _present(**optional)


async def send_image_request(
    client: Any,
    model: str,
    prompt: str,
    *,
    sync: bool,
    input_style: str,
    source: str | None = None,
    size: str | None = None,
    n: int = 1,
    seed: int | None = None,
    negative: str | None = None,
    strength: float = 0.5,
    prompt_extend: bool = False,
) -> Submitted | SyncResult:
    """One generation request on a route (runner.models: ``sync`` and ``input_style``),
    through ``client``'s method for it: the sync call (t2i or edit), the image-generation
    interface (messages), an images-list edit, a function edit, or a text2image task.
    ``source``: an edit's image (URL or data URI); ``prompt_extend`` is sent to the models
    that take it."""
    common: dict[str, Any] = {"n": n, "seed": seed}
    extend = {"prompt_extend": prompt_extend}
    images = [source] if source is not None else []
    if sync or input_style == "messages":  # messages async: image-generation (wan2.6, 2.7)
        send = client.multimodal if sync else client.submit_generation
        return await send(
            model,
            prompt,
            images,
            negative_prompt=negative,
            size=size if source is None else None,
            **extend,
            **common,
        )
    if input_style == "images":
        if source is None:
            raise ValueError(f"{model} edits an image: source is missing")
        return await client.submit_images_edit(
            model, prompt, [source], negative_prompt=negative, **extend, **common
        )
    if source is not None:
        edit = {"function": "description_edit", "strength": strength}
        return await client.submit_image_edit(model, prompt, source, **edit, **common)
    return await client.submit_text2image(
        model,
        prompt,
        negative_prompt=negative,
        size=size or "1024*1024",
        **extend,
        **common,
    )


def _content(prompt: str, images: list[str]) -> list[dict[str, str]]:
    """A user message's content: the source images, then the text."""
    return [{"image": image} for image in images] + [{"text": prompt}]


def _list_stamp(epoch: float) -> str:
    """A task-list time bound: YYYYMMDDhhmmss on the service's clock (Beijing time)."""
    return datetime.fromtimestamp(epoch, timezone(timedelta(hours=8))).strftime("%Y%m%d%H%M%S")


def _present(**fields: object) -> dict[str, Any]:
    """The fields that are set (not None), in order."""
    return {k: v for k, v in fields.items() if v is not None}
