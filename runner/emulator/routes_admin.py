"""Control endpoints under /_emulator (no auth, not counted in the stats).

GET  /_emulator/stats              the EmulatorStats snapshot
POST /_emulator/stats/reset        zero the counters
GET  /_emulator/faults             the current FaultConfig
POST /_emulator/faults[?merge=1]   replace (or merge into) the FaultConfig; JSON body, e.g.
                                   {"internal_error": 0.1, "task_failed": {"every_n": 3}}
POST /_emulator/keys/invalidate    every key is refused from now on (401 InvalidApiKey)
POST /_emulator/keys/restore       undo the above
POST /_emulator/quotas             {"enabled": bool}
GET  /_emulator/tasks/{task_id}    TaskInfo (prompt, truncation, fault, latency, ...)
GET  /_emulator/billed             what the account pays for: [{"kind": "task"|"sync", "id",
                                   "model", "prompt", "n", "t"}], accepted submits and
                                   answered sync calls, oldest first
POST /_emulator/advance?seconds=N  move the emulator's clock forward N seconds (tasks age,
                                   finish, expire after 24 h; result URLs expire)
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from runner.emulator.context import state_of
from runner.emulator.faults import FaultConfig


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(payload), status=status, content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    return _json(state_of(request).stats.snapshot().model_dump(mode="json"))


async def reset_stats(request: web.Request) -> web.Response:
    state = state_of(request)
    in_flight = dict(state.stats.in_flight)
    state.stats.reset()
    state.stats.in_flight.update(in_flight)  # live tasks still hold their slots
    return _json({"ok": True})


async def get_faults(request: web.Request) -> web.Response:
    return _json(state_of(request).config.faults.model_dump(mode="json"))


async def set_faults(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body: dict[str, Any] = await request.json()
        if request.query.get("merge") in ("1", "true"):
            merged = state.config.faults.model_dump(exclude_defaults=True)
            merged.update(body)
            body = merged
        faults = FaultConfig.model_validate(body)
    except (ValueError, ValidationError) as exc:
        return _json({"code": "InvalidParameter", "message": str(exc)}, 400)
    state.set_faults(faults)
    return _json(faults.model_dump(mode="json"))


async def invalidate_keys(request: web.Request) -> web.Response:
    state_of(request).keys_revoked = True
    return _json({"ok": True})


async def restore_keys(request: web.Request) -> web.Response:
    state_of(request).keys_revoked = False
    return _json({"ok": True})


async def quotas(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
        return _json({"code": "InvalidParameter", "message": 'need {"enabled": bool}'}, 400)
    state.config.quotas_enabled = body["enabled"]
    return _json({"enabled": state.config.quotas_enabled})


async def task_info(request: web.Request) -> web.Response:
    task = state_of(request).board.get(request.match_info["task_id"])
    if task is None:
        return _json({"code": "NotFound", "message": "no such task"}, 404)
    return _json(task.info().model_dump(mode="json"))


async def billed(request: web.Request) -> web.Response:
    return _json(list(state_of(request).billed))


async def advance(request: web.Request) -> web.Response:
    try:
        seconds = float(request.query.get("seconds", ""))
        if not seconds >= 0:  # also refuses NaN
            raise ValueError
    except ValueError:
        return _json({"code": "InvalidParameter", "message": "seconds must be a number >= 0"}, 400)
    state = state_of(request)
    state.advance(seconds)
    return _json({"offset_s": state.clock.offset})
