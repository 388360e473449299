"""Local generation on a Ray cluster (``--ray ADDRESS``, ``--ray local``): the same pool as
runner.backends.local.pool, each worker a Ray actor instead of a process.

- an entry of a model's ``devices`` is one actor: a ``cuda`` entry asks Ray for one GPU
  (Ray then shows the actor that GPU alone, as cuda:0), ``cpu`` for one CPU;
- the scheduler's loop awaits the actors' object refs; only the driver writes files: an
  actor returns the images' bytes;
- a dead actor (killed, its node lost) is a crashed worker: the job is retried, the actor
  made again on the next job; a CUDA OOM kills the actor so that its memory comes back.

Imported only with ``--ray``: nothing else imports ray.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog

from runner.backends.local.config import WorkerSpec
from runner.backends.local.pool import LocalPool
from runner.backends.raycluster import RayLink, first_answer
from runner.errors import ModelNotServed, RowFailed, ServerError
from runner.settings import Settings

log = structlog.get_logger(__name__)


class DiffusionActor:
    """Runs in a Ray worker process: the pipeline loaded once, jobs one at a time."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from runner.backends.local.worker import LoadError, Runner, load_pipeline

        self.error: str | None = None
        self.runner: Any = None
        try:
            self.runner = Runner(load_pipeline(spec), spec)
        except LoadError as exc:
            self.error = str(exc)
        except Exception as exc:  # said to the driver in one line, not as a dead actor
            self.error = f"{spec['source']}: {type(exc).__name__}: {exc}".splitlines()[0]

    def info(self) -> dict[str, Any]:
        return {"load_error": self.error} if self.runner is None else self.runner.info()

    def run(self, job: dict[str, Any]) -> tuple[str, Any]:
        from runner.backends.local.worker import run_one

        return run_one(self.runner, job)


class _RayWorker:
    """The driver's handle on one actor; the same face as pool._Worker."""

    def __init__(self, spec: WorkerSpec, ray: Any, actor_cls: Any) -> None:
        self.spec = spec
        self.ray = ray
        self.actor_cls = actor_cls
        self.actor: Any = None
        self.info: dict[str, Any] = {}
        self.pending: dict[int, bool] = {}
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.actor is not None

    @property
    def pid(self) -> int | None:
        return self.info.get("pid")

    async def start(self) -> dict[str, Any]:
        gpu = self.spec.device.startswith("cuda")
        options = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": 1}
        # Ray hides every other GPU from the actor: its own is cuda:0 there
        spec = replace(self.spec, device="cuda:0" if gpu else "cpu").as_dict()
        actor = self.actor_cls.options(**options).remote(spec)
        self.starts += 1
        needs = {"CPU": 1, **({"GPU": 1} if gpu else {})}
        what = f"{self.spec.model} actor ({self.spec.device})"
        try:
            info = await first_answer(self.ray, actor, actor.info.remote(), what, needs)
        except self.ray.exceptions.RayError as exc:
            self.ray.kill(actor)
            raise ServerError(
                f"{self.spec.model}: its Ray actor died while loading ({type(exc).__name__})",
                model=self.spec.model,
            ) from None
        if info.get("load_error"):
            self.ray.kill(actor)
            raise ModelNotServed(f"{self.spec.model}: {info['load_error']}", model=self.spec.model)
        self.actor, self.info = actor, info
        log.info("local_actor_ready", model=self.spec.model, **info)
        return info

    async def run(self, job_id: int, job: dict[str, Any]) -> list[bytes]:
        actor = self.actor
        if actor is None:
            raise ServerError(f"{self.spec.model}: no live actor", model=self.spec.model)
        self.pending[job_id] = True
        try:
            kind, value = await actor.run.remote(job)
        except self.ray.exceptions.RayActorError as exc:
            self._dead(actor)
            raise ServerError(
                f"{self.spec.model}: its Ray actor died ({type(exc).__name__})",
                model=self.spec.model,
            ) from None
        finally:
            self.pending.pop(job_id, None)
        if kind == "done":
            return list(value)
        if kind == "oom":
            self.ray.kill(actor)  # a fresh actor is the only sure way to get the memory back
            self._dead(actor)
            raise ServerError(f"{self.spec.model}: out of memory", model=self.spec.model)
        raise RowFailed(f"{self.spec.model}: {value}", model=self.spec.model)

    def _dead(self, actor: Any) -> None:
        if self.actor is actor:
            self.actor = None
            log.warning("local_actor_died", model=self.spec.model, device=self.spec.device)

    async def stop(self, grace_s: float | None = None) -> None:
        """Kill the actor (at once: Ray frees its resources)."""
        actor, self.actor = self.actor, None
        if actor is not None:
            self.ray.kill(actor)


class RayPool(LocalPool):
    """``LocalPool`` on a Ray cluster: ``address`` is a cluster's, or "local" to start one."""

    def __init__(self, settings: Settings, address: str) -> None:
        super().__init__(settings)
        self.address = address
        self.link = RayLink(address, DiffusionActor)

    def describe(self) -> str:
        return super().describe() + f" ({self.link.describe()})"

    def devices(self) -> list[str]:
        """The cluster's resources, for doctor (blocking)."""
        if self.link.ray is None:
            self.link.connect()
        res = self.link.ray.cluster_resources()
        nodes = len([n for n in self.link.ray.nodes() if n.get("Alive")])
        return [
            f"{nodes} node(s), {int(res.get('GPU', 0))} GPU(s), {int(res.get('CPU', 0))} CPU(s)"
        ]

    async def generate(self, model: str, **kw: Any) -> list[bytes]:
        await self.link.ensure()
        return await super().generate(model, **kw)

    def _new_worker(self, spec: WorkerSpec) -> Any:
        return _RayWorker(spec, self.link.ray, self.link.actor_cls)

    async def close(self, *, grace_s: float | None = None) -> None:
        await super().close(grace_s=grace_s)
        await self.link.leave()
