"""A local emulator of the DashScope image APIs, written from the protocol reference only.

It shares no code with the rest of ``runner`` so that a protocol mistake in the project's
client cannot hide in it; the official ``dashscope`` SDK works against it unchanged.

    from runner.emulator import Emulator, EmulatorConfig, FaultConfig
    async with Emulator(EmulatorConfig(time_scale=0.05, latency="lognormal:8:60")) as emu:
        ...  # point clients at emu.base_url
        emu.billed()      # what the account paid for: accepted tasks, answered sync calls
        emu.advance(3600) # the clock an hour on: tasks finish, age, expire after 24 h

Regions (EmulatorConfig.region, or the Host name): a model is served only where the
reference documents it; elsewhere it answers 400 InvalidParameter "Model not exist.".

See app.py for the routes (routes_admin.py for /_emulator/billed and /_emulator/advance),
latency.py for latency profiles, faults.py for fault kinds, judge.py for the judge's scoring.
"""

from runner.emulator.config import EmulatorConfig, ModelSpec, default_models
from runner.emulator.faults import FaultConfig, FaultKind, FaultRule
from runner.emulator.server import Emulator, EmulatorThread
from runner.emulator.state import TaskInfo
from runner.emulator.stats import EmulatorStats

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "EmulatorStats",
    "EmulatorThread",
    "FaultConfig",
    "FaultKind",
    "FaultRule",
    "ModelSpec",
    "TaskInfo",
    "default_models",
]
