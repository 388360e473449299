"""What was learned of the models, kept between runs: the limits a run learned of
unpublished quotas, and what ``doctor --live`` found (served or not, the route that took the
request, its latency), for the next run.

The file lives under ``--out`` (``learned_quotas.json``), written atomically; models this
run did not use keep what earlier runs learned of them, and a model's entry keeps what the
other writer put there.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from runner.scheduling.model_lane import ModelLane

log = structlog.get_logger(__name__)

LEARNED_NAME = "learned_quotas.json"


@dataclass(frozen=True)
class ModelCheck:
    """What ``doctor --live`` found of one model: one request's outcome."""

    served: bool
    route: str | None = None  # "sync" or "async": the route that took the request
    latency_s: float | None = None
    checked_at: float | None = None  # epoch seconds
    note: str = ""


@dataclass(frozen=True)
class Learned:
    """The file's content: learned in-flight limits, and doctor's checks, per model."""

    limits: dict[str, int] = field(default_factory=dict)
    checks: dict[str, ModelCheck] = field(default_factory=dict)


def _read(path: Path) -> dict[str, Any]:
    """The file's ``models`` table ({} when there is no usable file)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    models = raw.get("models") if isinstance(raw, dict) else None
    return dict(models) if isinstance(models, dict) else {}


def _write(path: Path, models: Mapping[str, Any]) -> None:
    body = json.dumps({"version": 1, "models": models}, indent=1, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_learned(
    lanes: Mapping[str, ModelLane] | Iterable[ModelLane], path: Path
) -> dict[str, int]:
    """Write the learned limits (learned quotas only) to ``path`` atomically; log them."""
    items = lanes.values() if isinstance(lanes, Mapping) else lanes
    learned = {lane.name: lane for lane in items if lane.learned and lane.limit is not None}
    data = _read(path)  # keep what other runs learned of models this run did not use
    for name, lane in learned.items():
        old = data.get(name)
        if lane.stats.submits == 0 and isinstance(old, dict) and "limit" in old:
            continue  # nothing new was learned of it
        data[name] = {
            **(old if isinstance(old, dict) else {}),
            "limit": lane.limit,
            "setting": lane.quota.in_flight,
            "submits": lane.stats.submits,
            "throttled": lane.stats.throttled,
            "saved_at": round(time.time(), 3),
        }
        log.info(
            "quota_learned",
            model=name,
            limit=lane.limit,
            setting=lane.quota.in_flight,
            submits=lane.stats.submits,
            throttled=lane.stats.throttled,
        )
    _write(path, data)
    return {
        name: int(v["limit"]) for name, v in data.items() if isinstance(v, dict) and "limit" in v
    }


def save_checks(checks: Mapping[str, ModelCheck], path: Path) -> None:
    """Write what ``doctor --live`` found into ``path``, beside the learned limits."""
    data = _read(path)
    for name, check in checks.items():
        old = data.get(name)
        entry = {
            "served": check.served,
            "route": check.route,
            "latency_s": check.latency_s,
            "checked_at": check.checked_at,
            "note": check.note,
        }
        data[name] = {**(old if isinstance(old, dict) else {}), **entry}
    _write(path, data)


def load_learned(path: Path) -> Learned:
    """What earlier runs and ``doctor --live`` learned (empty when there is no usable file)."""
    limits: dict[str, int] = {}
    checks: dict[str, ModelCheck] = {}
    for name, entry in _read(path).items():
        limit = entry.get("limit") if isinstance(entry, dict) else entry
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
            limits[str(name)] = limit
        if isinstance(entry, dict) and isinstance(entry.get("served"), bool):
            latency = entry.get("latency_s")
            checks[str(name)] = ModelCheck(
                served=entry["served"],
                route=entry.get("route") if entry.get("route") in ("sync", "async") else None,
                latency_s=float(latency) if isinstance(latency, int | float) else None,
                checked_at=entry.get("checked_at"),
                note=str(entry.get("note") or ""),
            )
    return Learned(limits, checks)


def apply_learned(lanes: Mapping[str, ModelLane], learned: Learned) -> None:
    """Start each learned lane from the limit a previous run kept; a lane doctor --live
    checked starts from the latency it measured (instead of the documented slowest), and a
    model it found not served is named (its first refusal sets it aside)."""
    for name, limit in learned.limits.items():
        lane = lanes.get(name)
        if lane is not None:
            lane.set_learned(limit)
    for name, check in learned.checks.items():
        lane = lanes.get(name)
        if lane is None:
            continue
        if not check.served:
            log.warning("model_not_served_at_doctor", model=name, note=check.note)
        elif check.latency_s:
            lane.prior_s = check.latency_s
