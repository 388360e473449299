"""Throughput: model slots (``lanes``) and their submit pacing (``pacing``), task
durations (``latency``), poll planning and the shared query budget (``plan``,
``polling``), learned quotas (``learned``), CPU work (``cpu``)."""

from __future__ import annotations

from .cpu import CpuPool
from .lanes import LanePool, LaneStats, ModelLane, Slot, in_flight_limit
from .latency import LatencyModel
from .learned import LEARNED_NAME, apply_learned, load_learned, save_learned
from .pacing import SubmitWindow
from .plan import ServiceClock, TaskPlan
from .polling import TERMINAL, PollBudget, TaskWatcher, WatchTimeout

__all__ = [
    "LEARNED_NAME",
    "TERMINAL",
    "CpuPool",
    "LanePool",
    "LaneStats",
    "LatencyModel",
    "ModelLane",
    "PollBudget",
    "ServiceClock",
    "Slot",
    "SubmitWindow",
    "TaskPlan",
    "TaskWatcher",
    "WatchTimeout",
    "apply_learned",
    "in_flight_limit",
    "load_learned",
    "save_learned",
]
