"""Joining a Ray cluster, for the backends that run their workers as Ray actors (``--ray``):
which cluster (``ray_address``), ``join`` itself, ``RayLink``, a pool's joined-once link to
the cluster, and what keeps the actors fitting the cluster: ``cpus`` to size a pool by, and
``first_answer``, which names an actor Ray cannot place (what it asks for, what the cluster
has free) instead of waiting without a word.

Only ``join`` imports ray, and only with ``--ray``: nothing else in the runner does.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog

log = structlog.get_logger(__name__)

PLACEMENT_WARN_S = 5.0  # an actor with no process after this long waits for resources
PLACEMENT_REMIND_S = 60.0


def ray_address(given: str | None) -> str | None:
    """``--ray``'s cluster: the address given, else RAY_ADDRESS (Ray's own variable), else
    "auto" (a cluster running on this machine); None without ``--ray``."""
    if given is None:
        return None
    return given.strip() or os.environ.get("RAY_ADDRESS", "").strip() or "auto"


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


def cpus(ray: Any) -> int:
    """The cluster's CPUs (every node's), as Ray counts them for actors."""
    return int(ray.cluster_resources().get("CPU", 0))


def _unplaced(ray: Any, actor: Any) -> bool:
    """True while Ray has given the actor no process (it waits for resources)."""
    try:  # the GCS's view; the public state API needs the dashboard, which we do not start
        info = ray._private.state.actors(actor._actor_id.hex())
    except Exception:  # another Ray: say what it asks for anyway
        return True
    return not info.get("Pid")


def waiting_line(ray: Any, what: str, needs: dict[str, float]) -> str:
    """One line: the actor, what it asks for, what the cluster has and has free."""
    total, free = ray.cluster_resources(), ray.available_resources()
    asks = ", ".join(f"{n:g} {k}" for k, n in needs.items())
    has = ", ".join(f"{free.get(k, 0):g} of {total.get(k, 0):g} {k} free" for k in needs)
    return f"{what} waits for Ray to place it: it asks for {asks}; the cluster has {has}"


async def first_answer(ray: Any, actor: Any, ref: Any, what: str, needs: dict[str, float]) -> Any:
    """Await ``ref`` (the actor's first call); while Ray cannot place the actor, say so
    after a few seconds and then every minute."""
    fut = asyncio.wrap_future(ref.future())
    wait = PLACEMENT_WARN_S
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            if await asyncio.to_thread(_unplaced, ray, actor):
                line = await asyncio.to_thread(waiting_line, ray, what, needs)
                log.warning("ray_actor_unplaced", line=line)
            wait = PLACEMENT_REMIND_S


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
