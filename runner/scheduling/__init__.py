"""Scheduling: every row from the task list to its backend under the quotas, and its result
to disk.

- ``scheduler``: the loop; rows fed per task type, a deepfake or local row to its pool, an
  API row to ``rowsteps``; a rerun's rows as ``rerun`` says (what is kept, what is resumed).
- ``rowsteps``: an API row's steps (an earlier run's paid requests first, then a slot, the
  request, the wait, the download) and what it does after an error (``runner.policy``
  decides); ``lifecycle``: one paid request, start to end, over the client and the ledger;
  ``finishing``: a row's end (candidates written, judged, the chosen one, journaled).
- ``lanes``: the slots of every model under one overall cap; ``model_lane``: one model's
  slots and learned limit; ``submit_window``: its submit pacing; ``learned``: what was learned
  of the models, kept between runs.
- ``polling``: the account's query budget, when to look at each task, the wait for it to
  end; ``latency``: each model's task durations, as the polls see them.
- ``cpu``: threads for blocking image work.
"""

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
