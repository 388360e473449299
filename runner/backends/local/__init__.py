"""Local generation: ``local:<name>`` models are diffusers pipelines run on this machine's
devices (one worker process per device), in the same scheduler as the API models.

Importing this package imports neither torch nor diffusers: the workers do.
"""

from __future__ import annotations

from runner.backends.local.config import resolve_source
from runner.backends.local.pool import LocalPool
from runner.devices import device_list, visible_gpus

__all__ = ["LocalPool", "device_list", "local_models", "resolve_source", "visible_gpus"]


def local_models(models: dict[str, list[str]]) -> list[str]:
    """The ``local:<name>`` models named in a [models] table, in order, once each."""
    seen: dict[str, None] = {}
    for names in models.values():
        for name in names:
            if name.startswith("local:"):
                seen[name] = None
    return list(seen)
