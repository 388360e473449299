"""Joining a Ray cluster, for the backends that run their workers as Ray actors (``--ray``):
``join`` itself, and ``RayLink``, a pool's joined-once link to the cluster.

Only imported with ``--ray``: nothing else in the runner imports ray.
"""

from __future__ import annotations

import asyncio
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


class RayLink:
    """A pool's link to a Ray cluster, each of its workers an actor of ``actor``: joined on
    first use (in a thread, once however many rows ask at the same time), left at close,
    the cluster shut down only by the pool whose join started it."""

    def __init__(self, address: str, actor: type) -> None:
        self.address = address
        self._actor = actor
        self.ray: Any = None  # the ray module once joined
        self.actor_cls: Any = None  # ``ray.remote(actor)``
        self.started_here = False
        self._lock: asyncio.Lock | None = None

    def describe(self) -> str:
        return f"Ray actors, cluster {self.address}"

    def connect(self) -> None:
        """Blocking: join the cluster (or start one); run in a thread."""
        self.ray, started = join(self.address)
        self.started_here = self.started_here or started
        self.actor_cls = self.ray.remote(self._actor)

    async def ensure(self) -> None:
        """Join unless joined already."""
        if self._lock is None:  # made here: a lock belongs to the loop that first uses it
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.ray is None:
                await asyncio.to_thread(self.connect)

    async def leave(self) -> None:
        """Forget the cluster (kill the actors first); shut it down if this link started it."""
        ray, self.ray = self.ray, None
        self._lock = None
        if ray is not None and self.started_here:
            self.started_here = False
            await asyncio.to_thread(ray.shutdown)
