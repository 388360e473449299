"""Which devices local work runs on: the configured ones, else every visible GPU, else the CPU.

Core layer: settings sizes a local lane from it and the local backend places its workers by
it. torch is imported only when the devices are left to be found (``devices = []``).
"""

from __future__ import annotations

import functools


@functools.cache
def visible_gpus() -> int:
    """How many CUDA devices torch sees (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken driver is "no GPU", said by doctor
        return 0


def device_list(devices: list[str]) -> list[str]:
    """The configured devices, else every visible GPU, else the CPU."""
    if devices:
        return list(devices)
    n = visible_gpus()
    return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]
