"""The doctor's checks of the account side: the key, the base URL (one short probe), the
region's models and the settings. ``Check`` is one line of the report (runner.doctor).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from runner.errors import SettingsError
from runner.models import BASE_URLS, PRICES_READ, caps, default_models, region_of_url, served_for
from runner.settings import DEFAULT_BASE_URL, Settings

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
    from runner.backends.judge.models import judge_quota, pace
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
