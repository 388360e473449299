"""Joining a Ray cluster, for the backends that run their workers as Ray actors (``--ray``).

Only imported with ``--ray``: nothing else in the runner imports ray.
"""

from __future__ import annotations

from typing import Any


def join(address: str) -> tuple[Any, bool]:
    """Blocking: join the cluster at ``address`` ("local": start one here) unless this process
    already has; returns (the ray module, whether this call started it, so that its caller
    is the one to shut it down)."""
    import ray

    if ray.is_initialized():
        return ray, False
    ray.init(
        address=None if address == "local" else address,
        include_dashboard=False,
        log_to_driver=False,
    )
    return ray, True
