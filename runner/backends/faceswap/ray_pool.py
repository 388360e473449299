"""Face swap on a Ray cluster (``--ray ADDRESS``, ``--ray local``): the same pool as
runner.backends.faceswap.pool, each worker a Ray actor instead of a process.

- one CPU actor per worker slot, its models loaded once (``worker.init_worker``), each row
  run by ``worker.run_job``: the swap itself is the process pool's code;
- the actor may sit on another node: the driver reads the row's two pictures and sends
  their bytes; the actor returns the result (the JPEG's bytes): only the driver writes
  files. The models directory must be at the same path on every node (as a local model's
  ``path`` must);
- a dead actor (killed, its node lost) is a crashed worker: it is replaced and the row
  tried once more, on a fresh actor; a second death fails the row;
- the actors fit the cluster: no more than its CPUs less those the run's local-model actors
  need (``reserve_cpus``), and ``release`` gives their CPUs back once no deepfake row is
  left; an actor Ray cannot place is named with what it waits for.

Imported only with ``--ray``: nothing else imports ray.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog

from runner.backends.faceswap import worker
from runner.backends.faceswap.pool import FaceSwapPool
from runner.backends.faceswap.result import FaceSwapBadInput, FaceSwapError, SwapResult
from runner.backends.raycluster import cpus, first_answer, join
from runner.settings import FaceSwapSettings

log = structlog.get_logger(__name__)


class FaceSwapActor:
    """Runs in a Ray worker process: the models loaded once, rows one at a time."""

    def __init__(self, config: worker.WorkerConfig) -> None:
        worker.init_worker(config)  # never raises: a load error is said by info() and rows

    def info(self) -> dict[str, Any]:
        return worker.ping()

    def swap(
        self, index: str, ori: tuple[str, bytes], target: tuple[str, bytes]
    ) -> tuple[str, Any]:
        """("done", the result as a dict), or ("bad" for the row's own input, else "failed",
        the reason)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="runner-faceswap-") as tmp:
            paths = []
            for role, (name, data) in (("ori", ori), ("target", target)):
                path = Path(tmp) / f"{role}{Path(name).suffix}"
                path.write_bytes(data)
                paths.append(str(path))
            try:
                result = worker.run_job(worker.SwapJob(index=index, ori=paths[0], target=paths[1]))
            except FaceSwapError as exc:
                return ("bad" if isinstance(exc, FaceSwapBadInput) else "failed"), str(exc)
        return "done", result.model_dump()


def _read_input(path: Path, role: str) -> tuple[str, bytes]:
    if not path.is_file():
        raise FaceSwapBadInput(f"{role} not found: {path}")
    try:
        return path.name, path.read_bytes()
    except OSError as exc:
        raise FaceSwapBadInput(f"{role} could not be read: {exc}") from None


class _Slot:
    """One worker slot: its actor (None until started, or after it died)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.actor: Any = None
        self.info: dict[str, Any] = {}
        self.busy = False  # a row is running on the actor


class RayFaceSwapPool(FaceSwapPool):
    """``FaceSwapPool`` on a Ray cluster: ``address`` is a cluster's, or "local" to start one."""

    def __init__(
        self,
        settings: FaceSwapSettings,
        address: str,
        *,
        jpeg_quality: int = 95,
        reserve_cpus: int = 0,
    ) -> None:
        super().__init__(settings, jpeg_quality=jpeg_quality)
        self.threads = 1  # one CPU per actor
        self.address = address
        self.reserve_cpus = reserve_cpus  # the CPUs the run's local-model actors will take
        self.slots = [_Slot(i) for i in range(self.workers)]
        self._ray: Any = None
        self._actor_cls: Any = None
        self._started_here = False
        self._free: asyncio.Queue[_Slot] | None = None
        self._ray_lock: asyncio.Lock | None = None

    def describe(self) -> str:
        return super().describe() + f" (Ray actors, cluster {self.address})"

    # --- life cycle -------------------------------------------------------------------------
    def connect(self) -> None:
        """Blocking: join the cluster (or start one); run in a thread."""
        ray, started = join(self.address)
        if started:  # a cluster started here is shut down by close()
            self._started_here = True
        self._ray, self._actor_cls = ray, ray.remote(FaceSwapActor)
        self._fit(cpus(ray))

    def _fit(self, cluster_cpus: int) -> None:
        """No more actors than the cluster's CPUs leave after the local models' (at least
        one: its rows would wait for those CPUs otherwise)."""
        fit = max(1, cluster_cpus - self.reserve_cpus)
        if fit < len(self.slots):
            log.warning(
                "faceswap.actors_fitted",
                actors=fit,
                wanted=len(self.slots),
                cluster_cpus=cluster_cpus,
                kept_for_local_models=self.reserve_cpus,
            )
            self.slots = self.slots[:fit]
            self.workers = fit

    def _get_ray_lock(self) -> asyncio.Lock:
        if self._ray_lock is None:
            self._ray_lock = asyncio.Lock()
        return self._ray_lock

    def _get_free(self) -> asyncio.Queue[_Slot]:
        if self._free is None:
            self._free = asyncio.Queue()
            for slot in self.slots:
                self._free.put_nowait(slot)
        return self._free

    async def start(self) -> None:
        """Join the cluster and start every actor (idempotent); waits for their models."""
        async with self._get_ray_lock():
            if self._ray is None:
                await asyncio.to_thread(self.connect)
            idle = [s for s in self.slots if s.actor is None and not s.busy]
            await asyncio.gather(*(self._start_actor(s) for s in idle), return_exceptions=True)
        self._announce_ready(
            [s.info for s in self.slots if s.info],
            actors=sum(s.actor is not None for s in self.slots),
            cluster=self.address,
        )

    async def _start_actor(self, slot: _Slot) -> None:
        actor = self._actor_cls.options(num_cpus=1).remote(self.config())
        try:
            info = await first_answer(
                self._ray, actor, actor.info.remote(), f"face-swap actor {slot.number}", {"CPU": 1}
            )
        except self._ray.exceptions.RayError as exc:
            self._ray.kill(actor)
            log.error(
                "faceswap.start_failed",
                error=f"its Ray actor died while loading ({type(exc).__name__})",
            )
            raise FaceSwapError(
                f"the face-swap Ray actor died while loading ({type(exc).__name__})"
            ) from None
        slot.actor, slot.info = actor, info

    async def swap(self, index: str, ori: Path, target: Path) -> SwapResult:
        if self._ray is None:
            await self.start()
        ori_in, target_in = await asyncio.to_thread(
            lambda: (_read_input(Path(ori), "ori_image"), _read_input(Path(target), "target_image"))
        )
        for attempt in (1, 2):
            free = self._get_free()
            slot = await free.get()
            try:
                outcome = await self._run(slot, str(index), ori_in, target_in)
            finally:
                free.put_nowait(slot)
            if outcome is not None:
                kind, value = outcome
                if kind == "bad":
                    raise FaceSwapBadInput(str(value))
                if kind != "done":
                    raise FaceSwapError(str(value))
                result = SwapResult.model_validate(value)
                if attempt == 2:
                    result.detail["retried_after_crash"] = True
                return self._done(index, result)
            log.warning("faceswap.worker_crashed", index=index, attempt=attempt)
        raise FaceSwapError("the face-swap worker crashed twice on this row (its Ray actor died)")

    async def _run(
        self, slot: _Slot, index: str, ori: tuple[str, bytes], target: tuple[str, bytes]
    ) -> tuple[str, Any] | None:
        """The actor's answer, or None when the actor died (it is then replaced)."""
        if slot.actor is None:
            async with self._get_ray_lock():
                if self._ray is None:
                    await asyncio.to_thread(self.connect)
            await self._start_actor(slot)
        actor = slot.actor
        slot.busy = True
        try:
            return await actor.swap.remote(index, ori, target)
        except self._ray.exceptions.RayActorError as exc:
            if slot.actor is actor:
                slot.actor = None
            self.crashes += 1
            log.warning("faceswap.actor_died", slot=slot.number, error=type(exc).__name__)
            return None
        except self._ray.exceptions.RayError as exc:  # not a row's reason: say it in one line
            raise FaceSwapError(
                f"face swap failed: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from None
        finally:
            slot.busy = False

    async def release(self) -> None:
        """Kill the idle actors (no deepfake row is left): their CPUs go back to the cluster,
        for the local models' actors. A later row would start them again."""
        self._kill(self._ray, [s for s in self.slots if not s.busy])

    def _kill(self, ray: Any, slots: list[_Slot]) -> None:
        for slot in slots:
            actor, slot.actor = slot.actor, None
            if actor is not None and ray is not None:
                try:
                    ray.kill(actor)
                except Exception:  # already gone with its node or the cluster
                    pass

    async def close(self, *, grace_s: float | None = None) -> None:
        """Kill the actors (at once: Ray frees their CPUs); leave a cluster started here."""
        ray, self._ray = self._ray, None
        self._kill(ray, self.slots)
        if ray is not None and self._started_here:
            self._started_here = False
            await asyncio.to_thread(ray.shutdown)
        self._lock = self._slots = self._retry_lock = None
        self._free = None
        self._ray_lock = None
