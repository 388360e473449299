"""Throughput: model slots (``lanes``) and their submit pacing (``pacing``), task
durations (``latency``), poll planning and the shared query budget (``plan``,
``polling``), learned quotas (``learned``), CPU work (``cpu``)."""

from __future__ import annotations

from runner.scheduling.cpu import CpuPool
from runner.scheduling.lanes import LanePool, Slot
from runner.scheduling.latency import LatencyModel
from runner.scheduling.learned import LEARNED_NAME, apply_learned, load_learned, save_learned
from runner.scheduling.model_lane import ModelLane
from runner.scheduling.polling import PollBudget, ServiceClock, TaskWatcher, WatchedTask
from runner.scheduling.submit_window import SubmitWindow

__all__ = [
    "LEARNED_NAME",
    "CpuPool",
    "LanePool",
    "LatencyModel",
    "ModelLane",
    "PollBudget",
    "ServiceClock",
    "Slot",
    "SubmitWindow",
    "TaskWatcher",
    "WatchedTask",
    "apply_learned",
    "load_learned",
    "save_learned",
]
