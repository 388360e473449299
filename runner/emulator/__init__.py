"""A local emulator of the DashScope image APIs, written from the protocol reference only.

It shares no code with the rest of ``runner`` so that a protocol mistake in the project's
client cannot hide in it; the official ``dashscope`` SDK works against it unchanged.

    from runner.emulator import Emulator, EmulatorConfig, FaultConfig
    async with Emulator(EmulatorConfig(time_scale=0.05)) as emu:
        ...  # point clients at emu.base_url

See app.py for the routes, faults.py for fault kinds, judge.py for the judge's scoring.
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
