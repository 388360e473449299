"""``python -m runner doctor``: is this machine ready for a run? One line per check.

    ok    key: DASHSCOPE_API_KEY is set
    FAIL  base URL: https://dashscope.aliyuncs.com/api/v1 unreachable (timeout after 3 s)
          -> check the network / proxy, or set DASHSCOPE_HTTP_BASE_URL

Checks: the API key (present or not, never shown: not even its length or tail), the base URL
(one cheap GET with a short timeout; offline it says "unreachable", it never hangs; an
answer that is not DashScope's, such as a 404 page, is red), the region and whether it
serves each configured model (and what else it serves), the settings, each model's list
price, the face-swap models folder, onnxruntime's providers, and free disk under --out.
``--live`` also sends one smallest request per model and the judge, saying the cost first
(below).
Exit status: 0 when nothing is red, 1 when any check FAILs.

In this file, in order: ``Check`` (one line of the report) and the account's checks (the
key, the base URL, the region's models, the settings, the judge, the prices); ``--live``;
the machine's checks (face-swap models, onnxruntime, local devices, disk); the command.

Wiring (``runner/cli.py``): ``_extra_commands()`` returns ``{"doctor": doctor.command}`` and
``build_parser`` adds ``doctor.add_arguments(sub.add_parser("doctor", help=...))``.

``--live``: one smallest, cheapest request per configured model and one judge call, against
the service the settings name, to learn what the documents cannot say about this account.

It says what it will cost before anything is sent (one image per model at its list price,
a judge call of a few dozen tokens), then, per model: served or not, the route that took the
request (sync or async: a route the service refuses is tried the other way, as a run does),
its latency and its cost. What it learned (served, route, latency) goes into
``--out/learned_quotas.json``, which the next run in that folder reads
(``runner.scheduling.learned``). Opt-in: it spends money; it needs a key.

The smallest request: n = 1 at the model's smallest allowed size, prompt_extend false, a
short prompt; an edit sends a 512 x 512 picture it draws itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import io
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from PIL import Image, ImageDraw
from pydantic import SecretStr

from runner.backends.dashscope import DashScopeClient, SyncResult
from runner.backends.dashscope.client import send_image_request
from runner.cost import PriceBook, price_book
from runner.errors import DashScopeError, ModelNotServed, RunnerError, SettingsError, WrongRoute
from runner.images import result_to_jpeg
from runner.models import (
    BASE_URLS,
    PRICES_READ,
    ModelCaps,
    caps,
    default_models,
    region_of_url,
    served_for,
)
from runner.scheduling.learned import LEARNED_NAME, ModelCheck, save_checks
from runner.settings import DEFAULT_BASE_URL, Settings, load_settings
from runner.startup import client_config

__all__ = [
    "PROBE_TIMEOUT_S",
    "Check",
    "Level",
    "add_arguments",
    "check_base_url",
    "check_disk",
    "check_judge",
    "check_key",
    "check_local",
    "check_models",
    "check_onnxruntime",
    "check_prices",
    "check_region",
    "check_settings",
    "command",
    "diagnose",
    "main",
    "run_doctor",
]


Level = Literal["ok", "warn", "FAIL"]
PROBE_TIMEOUT_S = 3.0


@dataclass
class Check:
    """One line of the report: what was checked, the verdict, and what to do when not ok."""

    name: str
    level: Level
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.level != "FAIL"

    def line(self) -> str:
        text = f"{self.level:<5} {self.name}: {self.detail}"
        if self.fix and self.level != "ok":
            text += f" -> {self.fix}"
        return text


def check_key(settings: Settings) -> Check:
    """Present or not, and where from. The key itself is never part of the line."""
    try:
        key = settings.key()
    except SettingsError as exc:
        return Check("key", "FAIL", str(exc), "fix api_key_file, or set DASHSCOPE_API_KEY")
    if key is None:
        return Check(
            "key",
            "warn",
            "not set: runs use the embedded emulator (placeholder images, nothing real)",
            "export DASHSCOPE_API_KEY=... (or name a file in the settings' api_key_file)",
        )
    has_env = settings.api_key is not None and bool(settings.api_key.get_secret_value().strip())
    where = "DASHSCOPE_API_KEY" if has_env else f"api_key_file {settings.api_key_file}"
    if any(ch.isspace() for ch in key) or not key.isprintable():
        return Check(
            "key",
            "FAIL",
            f"set ({where}) but it contains spaces or control characters",
            "paste the key again, exactly as the console shows it",
        )
    return Check("key", "ok", f"set ({where})")


async def _probe(url: str, key: str | None, timeout_s: float) -> tuple[int | None, str, bool]:
    """(HTTP status, code of the error body, whether the answer is DashScope's) of one GET,
    or (None, why, False) when unreachable."""
    import aiohttp

    headers = {"Accept": "application/json", "User-Agent": "runner-doctor"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers, allow_redirects=False) as resp,
        ):
            code = ""
            try:
                body = await resp.json(content_type=None)
            except Exception:
                body = None
            if not isinstance(body, dict):
                return resp.status, "", False
            if resp.status >= 400:
                code = str(body.get("code") or "")
            # A task query on an API root is answered {"output": ..., "request_id": ...}, or
            # refused with {"code": ..., "request_id": ...}; a 404 page is neither.
            shaped = resp.status != 404 and ("output" in body or bool(code))
            return resp.status, code, shaped
    except TimeoutError:
        return None, f"no answer within {timeout_s:g} s", False
    except aiohttp.ClientError as exc:
        # Only the exception's type: its text may repeat the URL, never the key, but keep
        # the line short.
        return None, type(exc).__name__, False


def check_base_url(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> Check:
    """One GET of an unknown task: any HTTP answer proves the host is there; with a key,
    401 InvalidApiKey says the key is refused. Never hangs longer than ``timeout_s``."""
    base = (settings.base_url or "").strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return Check(
            "base URL",
            "FAIL",
            f"{base!r} is not an http(s) URL",
            f"set DASHSCOPE_HTTP_BASE_URL to e.g. {DEFAULT_BASE_URL}",
        )
    try:
        key = settings.key()
    except SettingsError:
        key = None
    url = f"{base}/tasks/doctor-{uuid.uuid4().hex[:12]}"
    try:
        status, code, shaped = asyncio.run(
            asyncio.wait_for(_probe(url, key, timeout_s), timeout_s + 1.0)
        )
    except TimeoutError:
        status, code, shaped = None, f"no answer within {timeout_s:g} s", False
    except Exception as exc:  # a broken resolver and the like: still one line
        status, code, shaped = None, type(exc).__name__, False
    needed = key is not None
    if status is None:
        return Check(
            "base URL",
            "FAIL" if needed else "warn",
            f"{base} unreachable ({code})"
            + ("" if needed else "; not needed now: without a key the emulator runs"),
            "check the network or proxy, or set DASHSCOPE_HTTP_BASE_URL "
            "(international: https://dashscope-intl.aliyuncs.com/api/v1)",
        )
    if key is not None and (status == 401 or code == "InvalidApiKey"):
        return Check(
            "base URL",
            "FAIL",
            f"{base} reachable, but it refuses the key (HTTP {status} {code})".rstrip(),
            "check DASHSCOPE_API_KEY; a mainland key needs the mainland URL, an international "
            "key the -intl one",
        )
    if key is not None and code == "Arrearage":
        return Check(
            "base URL",
            "FAIL",
            f"{base} reachable, but the account is in arrears (Arrearage)",
            "top up the Alibaba Cloud account",
        )
    if not shaped:
        # Any HTTP answer used to count as "ok": a 404 page means requests go nowhere useful.
        return Check(
            "base URL",
            "FAIL",
            f"{base} answers a task query with HTTP {status}, not as DashScope does: "
            "not a DashScope API root",
            f"the base URL ends in /api/v1, e.g. {BASE_URLS['cn']} or {BASE_URLS['intl']}",
        )
    what = "key accepted" if key is not None and status < 400 else f"HTTP {status}"
    return Check("base URL", "ok", f"{base} reachable ({what})")


def check_region(settings: Settings) -> Check:
    """The region, and for each configured model whether the region is documented to serve
    it (runner.models): a model it does not serve answers "Model not exist."."""
    base = (settings.base_url or "").strip()
    by_url = region_of_url(base)
    region = settings.region if settings.region in ("cn", "intl") else by_url
    names = {"cn": "cn (Beijing)", "intl": "intl (Singapore)"}
    models = settings.models or default_models(region)
    served: list[str] = []
    notes: list[str] = []
    level: Level = "ok"
    for task_type, listed in models.items():
        usable = 0
        for model in listed:
            found = caps(model)
            if found.endpoint == "local":
                usable += 1
                continue
            if not found.documented:
                notes.append(f"{model} ({task_type}) is not in the reference: served or not")
                usable += 1
            elif found.served_in(region):
                served.append(model)
                usable += 1
            else:
                level = "warn"
                notes.append(f"{model} ({task_type}) is not served in {region}")
        if not usable:
            level = "FAIL"
            notes.append(f"no {task_type} model is served in {region}")
    host = urlsplit(base).netloc.lower()
    if host.startswith(("dashscope.", "dashscope-intl.", "dashscope-us.")) and by_url != region:
        level = "FAIL"
        notes.append(f"the base URL {base} is in {by_url}")
    detail = f"{names[region]}; served: {', '.join(dict.fromkeys(served)) or 'none'}"
    if notes:
        detail += "; " + "; ".join(notes)
    listed = {m for names_ in models.values() for m in names_}
    more = {
        kind: [m for m in served_for(region, kind) if m not in listed] for kind in ("t2i", "edit")
    }
    if any(more.values()):
        detail += "; also served here (more lanes in [models]): " + "; ".join(
            f"{kind} {', '.join(names_)}" for kind, names_ in more.items() if names_
        )
    fix = (
        f"use the region's models (settings.toml lists both), or set region = "
        f'"{"intl" if region == "cn" else "cn"}" with its base URL'
    )
    return Check("region", level, detail, fix if level != "ok" else "")


def check_settings(
    settings: Settings | None, problem: str | None = None, files: list[Path] | None = None
) -> Check:
    if settings is None:
        return Check(
            "settings",
            "FAIL",
            problem or "cannot be read",
            "fix the file or variable named (see settings.toml for every key)",
        )
    notes: list[str] = []
    level: Level = "ok"
    if settings.faceswap.backend not in ("auto", "inswapper", "classic"):
        return Check(
            "settings",
            "FAIL",
            f"faceswap.backend {settings.faceswap.backend!r} is not auto, inswapper or classic",
            'set [faceswap] backend = "auto"',
        )
    if settings.poll_qps > 20:
        level = "warn"
        notes.append(f"poll_qps {settings.poll_qps:g} is over the account's 20 task queries/s")
    for task_type, models in settings.models.items():
        for model in models:
            if model not in settings.quotas:
                notes.append(f"{model} ({task_type}) has no quota entry: its limit is learned")
    if settings.max_attempts < 2:
        level = "warn"
        notes.append("max_attempts 1: a single 5xx fails a row")
    used = ", ".join(str(f) for f in files) if files else "built-in defaults and environment"
    detail = f"valid (from {used})"
    if notes:
        detail += "; " + "; ".join(notes)
    return Check(
        "settings",
        level,
        detail,
        "see settings.toml: poll_qps at most 20, max_attempts 3 or more" if level != "ok" else "",
    )


def check_judge(settings: Settings) -> Check:
    """The judge model and its pace, and whether the reference's own VIEScore texts and
    parser (lmms-eval's files) are in use or the built-in stand-ins."""
    from runner.backends.judge.pacing import judge_quota, pace
    from runner.backends.judge.reference import reference

    ref = reference()
    quota = judge_quota(settings.judge.model, settings.region)
    rpm, tpm = pace(settings.judge, settings.region)
    detail = (
        f"{settings.judge.model}, {rpm:g} requests and {tpm:,.0f} tokens a minute "
        f"(published: {quota.requests_per_minute:g} / {quota.tokens_per_minute:,.0f}"
        + ("" if quota.published else ", assumed: not in the judge table")
        + f"); texts and parser: {ref.source}"
    )
    if not settings.judge.enabled and max(settings.candidate_counts().values()) <= 1:
        detail = "off (one candidate a row); " + detail
    if not ref.official:
        return Check("judge", "warn", detail, "make install (it adds the lmms-eval wheel)")
    if not quota.published:
        return Check("judge", "warn", detail, "set [judge] requests_per_minute, tokens_per_minute")
    return Check("judge", "ok", detail)


def check_prices(settings: Settings) -> Check:
    """Every configured API model's list price in the region (the settings' over the
    built-in ones of runner.models): a model without one is named, --dry-run cannot price
    it and --budget refuses to start."""
    from runner.cost import price_book

    book = price_book(settings)
    models = sorted(
        {m for ms in settings.models.values() for m in ms if not m.startswith("local:")}
    )
    missing = [m for m in models if book.price(m) is None]
    priced = ", ".join(f"{m} {book.price(m):g}" for m in models if m not in missing)
    detail = f"{book.currency or 'no currency'} per image: {priced or 'none'}"
    detail += f" (built-in list prices read {PRICES_READ})"
    if missing:
        return Check(
            "prices",
            "warn",
            f"{', '.join(missing)} ha{'s' if len(missing) == 1 else 've'} no price in "
            f"[prices.{book.region}]; {detail}",
            f'add [prices.{book.region}] "<model>" = <price of one image> (the console\'s '
            "price page)",
        )
    return Check("prices", "ok", detail)


PROMPT = "a red circle on a white background"
INSTRUCTION = "make the circle blue"
SOURCE_SIDE = 512  # within every edit model's side limits
WAIT_S = 600.0  # the longest an async probe is polled
_POLL_FIRST_S, _POLL_MAX_S = 1.0, 5.0  # the official SDK's wait: 1 s, doubling, at most 5 s


@dataclass(frozen=True)
class Probe:
    """One model to try: as t2i or as an edit."""

    model: str
    edit: bool


@dataclass
class Outcome:
    probe: Probe
    served: bool | None  # None: the request failed for another reason (see note)
    route: str | None = None
    latency_s: float | None = None
    images: int = 0
    note: str = ""


def probes(settings: Settings) -> list[Probe]:
    """Every configured API model once (local ones excepted): as t2i when a t2i list names
    it, else as an edit."""
    t2i = set(settings.models.get("t2i", []))
    names = sorted({m for ms in settings.models.values() for m in ms if not m.startswith("local:")})
    return [Probe(m, edit=m not in t2i) for m in names]


def cost_line(settings: Settings) -> str:
    """What the live check will cost, said before anything is sent."""
    book = price_book(settings)
    plan = probes(settings)
    known = [p for p in plan if book.price(p.model) is not None]
    total = sum(book.price(p.model) or 0.0 for p in known)
    unknown = sorted(p.model for p in plan if book.price(p.model) is None)
    line = (
        f"doctor --live: {len(plan)} request(s), one image each, at most "
        f"{book.money(total)} at list prices"
    )
    if unknown:
        line += f" + {', '.join(unknown)} (no price in [prices.{book.region}])"
    if settings.judge.enabled:
        line += f"; one {settings.judge.model} call of a few dozen tokens"
    return line


def smallest_size(found: ModelCaps) -> str:
    """The model's smallest allowed output size."""
    if found.sizes:
        return min(found.sizes, key=lambda s: int(s.split("*")[0]) * int(s.split("*")[1]))
    if found.area is not None:
        side = -(-int(found.area[0] ** 0.5) // 16) * 16
        return f"{side}*{side}"
    return f"{found.min_side}*{found.min_side}"


def source_uri() -> str:
    """A small picture to edit, as a data URI."""
    img = Image.new("RGB", (SOURCE_SIDE, SOURCE_SIDE), "white")
    ImageDraw.Draw(img).ellipse((128, 128, 384, 384), fill="red")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def _send(client: DashScopeClient, probe: Probe, found: ModelCaps) -> Outcome:
    started = time.monotonic()
    answer = await send_image_request(
        client,
        probe.model,
        INSTRUCTION if probe.edit else PROMPT,
        sync=found.sync,
        input_style=found.input_style,
        source=source_uri() if probe.edit else None,
        size=None if probe.edit else smallest_size(found),
        prompt_extend=False,
    )
    route = "sync" if found.sync else "async"
    if isinstance(answer, SyncResult):
        urls, latency = list(answer.urls), time.monotonic() - started
    else:
        urls, latency = await _wait(client, answer.task_id, started)
    if not urls:
        return Outcome(probe, True, route, latency, note="answered without an image")
    await asyncio.to_thread(result_to_jpeg, await client.download(urls[0]))
    return Outcome(probe, True, route, latency, images=len(urls))


async def _wait(client: DashScopeClient, task_id: str, started: float) -> tuple[list[str], float]:
    """Poll like the official SDK until the task ends: (image URLs, its latency: the
    service's own end - submit when it says them)."""
    delay, polls = _POLL_FIRST_S, 0
    while time.monotonic() - started < WAIT_S:
        state = await client.fetch_task(task_id)
        if state.terminal:
            if state.status != "SUCCEEDED":
                raise RunnerError(f"task {task_id} ended {state.status} ({state.code or ''})")
            if state.submit_time is not None and state.end_time is not None:
                return list(state.urls), state.end_time - state.submit_time
            return list(state.urls), time.monotonic() - started
        polls += 1
        await asyncio.sleep(delay)
        if polls % 3 == 0:
            delay = min(_POLL_MAX_S, delay * 2)
    raise RunnerError(f"task {task_id} did not end within {WAIT_S:.0f} s")


async def try_model(client: DashScopeClient, probe: Probe) -> Outcome:
    """One request to ``probe.model`` on its table route, then its other route when the
    service says the first is the wrong one."""
    found = caps(probe.model)
    try:
        return await _send(client, probe, found)
    except WrongRoute as exc:
        other = found.on_other_route()
        if other is None:
            return Outcome(probe, False, note=f"refuses its only route: {exc}")
        try:
            outcome = await _send(client, probe, other)
        except WrongRoute as again:
            return Outcome(probe, False, note=f"refuses both routes: {again}")
        outcome.note = f"the table's route was refused ({exc})"
        return outcome
    except ModelNotServed as exc:
        return Outcome(probe, False, note=str(exc))
    except (DashScopeError, RunnerError, ValueError) as exc:
        return Outcome(probe, None, note=str(exc))


async def try_judge(client: DashScopeClient, model: str) -> Outcome:
    probe = Probe(model, edit=False)
    started = time.monotonic()
    try:
        await client.chat(model, [{"role": "user", "content": "Reply with the word OK."}])
    except ModelNotServed as exc:
        return Outcome(probe, False, note=str(exc))
    except (DashScopeError, RunnerError) as exc:
        return Outcome(probe, None, note=str(exc))
    return Outcome(probe, True, "sync", time.monotonic() - started)


async def run_live(settings: Settings, key: str) -> list[Outcome]:
    """Every probe, one after another (the cheapest way through every quota)."""
    out: list[Outcome] = []
    async with DashScopeClient(client_config(settings, settings.base_url, key)) as client:
        for probe in probes(settings):
            out.append(await try_model(client, probe))
        if settings.judge.enabled:
            out.append(await try_judge(client, settings.judge.model))
    return out


def as_check(outcome: Outcome, book: PriceBook) -> Check:
    name = f"live {outcome.probe.model}"
    if outcome.served is False:
        return Check(name, "FAIL", f"not served: {outcome.note}", "take it out of [models]")
    if outcome.served is None:
        return Check(name, "warn", f"failed: {outcome.note}", "see run.log of a real run")
    parts = [f"served {outcome.route}"]
    if outcome.latency_s is not None:
        parts.append(f"{outcome.latency_s:.1f} s")
    if outcome.images:
        parts.append(f"{outcome.images} image(s), {book.money(book.cost(outcome.probe.model, 1))}")
    if outcome.note:
        parts.append(outcome.note)
    return Check(name, "ok", ", ".join(parts))


def live_checks(settings: Settings, out_dir: Path, say: Callable[[str], None]) -> list[Check]:
    """Say the cost, probe every model and the judge, write what was learned under
    ``out_dir``; one Check per model. ``say(line)`` prints a line before the requests."""
    try:
        key = settings.key()
    except RunnerError as exc:
        return [Check("live", "FAIL", str(exc), "fix the key first")]
    if key is None:
        return [
            Check(
                "live",
                "FAIL",
                "needs DASHSCOPE_API_KEY: it asks the service itself (the emulator has nothing "
                "to learn)",
                "export DASHSCOPE_API_KEY=...",
            )
        ]
    say(cost_line(settings))
    outcomes = asyncio.run(run_live(settings, key))
    now = time.time()
    learned = {
        o.probe.model: ModelCheck(
            served=o.served, route=o.route, latency_s=o.latency_s, checked_at=now, note=o.note
        )
        for o in outcomes
        if o.served is not None
    }
    save_checks(learned, Path(out_dir) / LEARNED_NAME)
    book = price_book(settings)
    return [as_check(o, book) for o in outcomes]


MiB = 1024 * 1024
GiB = 1024 * MiB
DISK_FAIL_BYTES = 200 * MiB  # a few hundred results at most
DISK_WARN_BYTES = 2 * GiB  # a full task list with candidates and the zip
_ORT_DISTS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-silicon",
)


# --------------------------------------------------------------------------- this machine


def check_models(settings: Settings) -> Check:
    """What the inswapper backend finds under models_dir, and what the classic one has."""
    models_dir = Path(settings.faceswap.models_dir).expanduser()
    backend = settings.faceswap.backend
    try:
        from runner.backends.faceswap.models import dlib_model_dir, find_models
    except Exception as exc:  # the face-swap stack is optional
        return Check(
            "models",
            "warn",
            f"face swap unavailable ({type(exc).__name__}: {exc})",
            "pip install -e . (insightface, onnxruntime, dlib-bin, face-recognition-models)",
        )
    found = find_models(models_dir)
    dlib_dir = dlib_model_dir()
    classic = "classic (dlib) ready" if dlib_dir is not None else "classic (dlib) models missing"
    if found.inswapper_ready:
        extra = f", enhancer {found.enhancer.name}" if found.enhancer is not None else ""
        return Check(
            "models",
            "ok",
            f"inswapper ready in {models_dir} (buffalo_l in {found.buffalo_dir}{extra}); {classic}",
        )
    fix = "put those files there (insightface's buffalo_l.zip and inswapper_128.onnx)"
    if backend == "inswapper":
        return Check("models", "FAIL", f"backend inswapper, but {found.missing_text()}", fix)
    if dlib_dir is None:
        return Check(
            "models",
            "FAIL" if backend == "classic" else "warn",
            f"{found.missing_text()}; and {classic}: deepfake rows will fail",
            fix + "; or pip install face-recognition-models dlib-bin for the classic backend",
        )
    return Check(
        "models",
        "warn",
        f"{found.missing_text()}: deepfake rows use the weaker classic (dlib) backend",
        fix,
    )


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_onnxruntime() -> Check:
    dists = {d: v for d in _ORT_DISTS if (v := _installed(d)) is not None}
    if len(dists) > 1:
        names = ", ".join(f"{d} {v}" for d, v in dists.items())
        return Check(
            "onnxruntime",
            "warn",
            f"{names} are all installed: they overwrite one another's module",
            "pip uninstall -y " + " ".join(dists) + " && pip install onnxruntime-gpu "
            "(on a GPU machine; onnxruntime otherwise)",
        )
    if importlib.util.find_spec("onnxruntime") is None:
        return Check(
            "onnxruntime",
            "warn",
            "not installed: the inswapper backend cannot run",
            "pip install onnxruntime (or onnxruntime-gpu with CUDA)",
        )
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except Exception as exc:
        return Check(
            "onnxruntime",
            "FAIL",
            f"installed but broken ({type(exc).__name__}: {exc})",
            "pip install --force-reinstall onnxruntime",
        )
    version = getattr(onnxruntime, "__version__", "?")
    gpu = [p for p in providers if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    detail = f"{version}, providers {', '.join(providers) or 'none'}"
    if not providers:
        return Check("onnxruntime", "FAIL", detail, "pip install --force-reinstall onnxruntime")
    if not gpu:
        return Check("onnxruntime", "ok", detail + " (CPU only: face swap is slower)")
    return Check("onnxruntime", "ok", detail)


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk(out_dir: Path) -> Check:
    where = _existing_parent(Path(out_dir))
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return Check("disk", "FAIL", f"cannot read free space of {where}: {exc.strerror}", "")
    free = usage.free
    text = f"{free / GiB:.1f} GiB free under {out_dir}"
    if not os.access(where, os.W_OK):
        return Check(
            "disk", "FAIL", f"{where} is not writable ({text})", "choose another --out folder"
        )
    if free < DISK_FAIL_BYTES:
        return Check(
            "disk", "FAIL", text, "free some space or choose --out on another disk (1 GiB+)"
        )
    if free < DISK_WARN_BYTES:
        return Check("disk", "warn", text, "a full run may need 1-2 GiB: free some space")
    return Check("disk", "ok", text)


# --------------------------------------------------------------------------- entry points


def run_doctor(
    settings: Settings,
    out_dir: Path,
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
    settings_files: list[Path] | None = None,
) -> list[Check]:
    """Every check, in report order. Blocking (it runs its own short event loop for the
    base-URL probe): call it from a thread inside a running loop."""
    return [
        check_key(settings),
        check_base_url(settings, timeout_s),
        check_region(settings),
        check_settings(settings, files=settings_files),
        check_prices(settings),
        check_judge(settings),
        check_models(settings),
        check_onnxruntime(),
        *check_local(settings),
        check_disk(Path(out_dir)),
    ]


def check_local(settings: Settings) -> list[Check]:
    """The devices local models would run on, and each local model's folder."""
    from runner.backends.local.checks import local_lines

    return [Check(name, level, detail, fix) for level, name, detail, fix in local_lines(settings)]


def _defaults() -> Settings:
    """Settings without any file, for the checks that still make sense when the files are
    broken (the environment's key and base URL are kept)."""
    key = os.environ.get("DASHSCOPE_API_KEY")
    base = (
        os.environ.get("DASHSCOPE_HTTP_BASE_URL")
        or os.environ.get("DASHSCOPE_BASE_URL")
        or DEFAULT_BASE_URL
    )
    return Settings.model_construct(
        api_key=SecretStr(key) if key and key.strip() else None, base_url=base
    )


def diagnose(
    settings_file: Path | None, out_dir: Path, *, timeout_s: float = PROBE_TIMEOUT_S
) -> list[Check]:
    """Load the settings as a run would, then run every check."""
    files = [p for p in (settings_file, Path("settings.toml")) if p is not None and p.is_file()]
    try:
        settings = load_settings(settings_file)
    except SettingsError as exc:
        broken = check_settings(None, str(exc))
        fallback = _defaults()
        return [
            check_key(fallback),
            check_base_url(fallback, timeout_s),
            check_region(fallback),
            broken,
            check_models(fallback),
            check_onnxruntime(),
            check_disk(Path(out_dir)),
        ]
    return run_doctor(settings, out_dir, timeout_s=timeout_s, settings_files=files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The doctor's options (the CLI's ``doctor`` sub-parser)."""
    parser.add_argument(
        "--out", type=Path, default=Path("outputs"), help="output folder to check (free disk)"
    )
    parser.add_argument("--settings", type=Path, help="a settings TOML file over ./settings.toml")
    parser.add_argument(
        "--timeout",
        type=float,
        default=PROBE_TIMEOUT_S,
        help=f"seconds to wait for the base URL (default {PROBE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="also send one smallest request per configured model and the judge (it costs "
        "money: the cost is said first) and keep what it learns in --out for the next run",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="also list a Ray cluster's nodes and devices (RAY_ADDRESS when none is given)",
    )


def command(args: argparse.Namespace, console: Any) -> int:
    """The CLI handler: ``handler(args, console) -> exit status`` (0: nothing red, 1: a FAIL).

    ``console`` is a rich Console (anything with ``print`` works)."""
    checks = diagnose(
        getattr(args, "settings", None),
        Path(getattr(args, "out", None) or "outputs"),
        timeout_s=float(getattr(args, "timeout", None) or PROBE_TIMEOUT_S),
    )
    if getattr(args, "ray", None) is not None:  # only then is ray imported
        from runner.backends.local.checks import ray_lines
        from runner.backends.raycluster import ray_address

        address = ray_address(args.ray) or "auto"
        checks += [Check(n, lvl, d, f) for lvl, n, d, f in ray_lines(address)]
    styles = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}

    def say(line: str, level: Level | None = None) -> None:
        try:
            style = styles[level] if level else None
            console.print(line, style=style, highlight=False, markup=False)
        except TypeError:  # a plain printer
            console.print(line)

    for check in checks:
        say(check.line(), check.level)
    if getattr(args, "live", False):
        live = _live(args, say)
        for check in live:
            say(check.line(), check.level)
        checks += live
    failed = [c for c in checks if not c.ok]
    say(f"{len(failed)} check(s) FAILED: fix those first" if failed else "ready to run")
    return 1 if failed else 0


def _live(args: argparse.Namespace, say: Any) -> list[Check]:
    """``--live`` (``live_checks``), with the settings a run would use."""
    try:
        settings = load_settings(getattr(args, "settings", None))
    except SettingsError as exc:
        return [Check("live", "FAIL", f"not run: {exc}", "fix the settings first")]
    return live_checks(settings, Path(getattr(args, "out", None) or "outputs"), say)


class _Plain:
    def print(self, text: str, **_: Any) -> None:
        print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m runner.doctor [--out DIR] [--settings FILE] [--timeout S]``."""
    parser = argparse.ArgumentParser(prog="python -m runner doctor", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return command(args, _Plain())


if __name__ == "__main__":
    sys.exit(main())
