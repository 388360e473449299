"""``python -m runner doctor --live``: one smallest, cheapest request per configured model
and one judge call, against the service the settings name, to learn what the documents
cannot say about this account.

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

import asyncio
import base64
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from runner.backends.dashscope import DashScopeClient, SyncResult
from runner.backends.dashscope.client import send_image_request
from runner.cost import PriceBook, price_book
from runner.doctor_checks import Check
from runner.errors import DashScopeError, ModelNotServed, RunnerError, WrongRoute
from runner.images import result_to_jpeg
from runner.models import ModelCaps, caps
from runner.scheduling.learned import LEARNED_NAME, ModelCheck, save_checks
from runner.settings import Settings
from runner.startup import client_config

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
