"""Learned quotas kept between runs: what a run learned of unpublished limits, for the next.

The file lives under ``--out`` (``learned_quotas.json``), written atomically; models this
run did not use keep what earlier runs learned of them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from runner.scheduling.lanes import ModelLane, in_flight_limit

log = structlog.get_logger(__name__)

LEARNED_NAME = "learned_quotas.json"


def save_learned(
    lanes: Mapping[str, ModelLane] | Iterable[ModelLane], path: Path
) -> dict[str, int]:
    """Write the learned limits (learned quotas only) to ``path`` atomically; log them."""
    items = lanes.values() if isinstance(lanes, Mapping) else lanes
    learned = {lane.name: lane for lane in items if lane.learned and lane.limit is not None}
    data: dict[str, Any] = {}
    if path.is_file():  # keep what other runs learned of models this run did not use
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old, dict) and isinstance(old.get("models"), dict):
                data = dict(old["models"])
        except (OSError, ValueError):
            data = {}
    for name, lane in learned.items():
        if lane.stats.submits == 0 and name in data:
            continue  # nothing new was learned of it
        data[name] = {
            "limit": lane.limit,
            "setting": in_flight_limit(lane.quota),
            "submits": lane.stats.submits,
            "throttled": lane.stats.throttled,
            "saved_at": round(time.time(), 3),
        }
        log.info(
            "quota_learned",
            model=name,
            limit=lane.limit,
            setting=in_flight_limit(lane.quota),
            submits=lane.stats.submits,
            throttled=lane.stats.throttled,
        )
    body = json.dumps({"version": 1, "models": data}, indent=1, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {name: int(v["limit"]) for name, v in data.items() if isinstance(v, dict)}


def load_learned(path: Path) -> dict[str, int]:
    """The limits a previous run learned ({} when there is no usable file)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        return {}
    out: dict[str, int] = {}
    for name, entry in models.items():
        limit = entry.get("limit") if isinstance(entry, dict) else entry
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
            out[str(name)] = limit
    return out


def apply_learned(lanes: Mapping[str, ModelLane], learned: Mapping[str, int]) -> None:
    """Start each learned lane from the limit a previous run kept."""
    for name, limit in learned.items():
        lane = lanes.get(name)
        if lane is not None:
            lane.set_learned(limit)
