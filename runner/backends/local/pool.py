"""The driver side of local generation: one spawned worker process per device and model,
jobs sent to the least busy live worker, results awaited without blocking the loop.

- spawn, not fork: CUDA does not survive fork, and a fork of a threaded asyncio process is
  unsafe anyway.
- each worker has a reader thread that hands its pipe's messages to the loop; a worker that
  dies (killed, CUDA OOM, a segfault) fails its jobs in flight with ``ServerError``, which
  the scheduler retries as a new attempt, and is started again on the next job.
- workers are started with Ctrl-C blocked and die with the runner (``lifeline``); closing
  never waits for a running job: an idle worker leaves on "stop", a busy one is ended.
- a pipeline that cannot load is ``ModelNotServed`` with one line naming what to put where;
  the scheduler sets the model aside and the row goes to the next model listed.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import structlog

from runner.backends import lifeline
from runner.backends.local import worker
from runner.backends.local.config import WorkerSpec, worker_specs
from runner.errors import ModelNotServed, RowFailed, ServerError
from runner.settings import Settings

log = structlog.get_logger(__name__)

LOAD_TIMEOUT_S = 1800.0  # a 20B model read from a slow disk takes minutes
EXIT_WAIT_S = 10.0  # the reader's wait for a process whose pipe closed to be reaped


class _Worker:
    """One process on one device, serving one model."""

    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.proc: Any = None
        self.conn: Any = None
        self.info: dict[str, Any] = {}
        self.pending: dict[int, asyncio.Future[list[bytes]]] = {}
        self.ready: asyncio.Future[dict[str, Any]] | None = None
        self.send_lock = threading.Lock()
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive() and self.conn is not None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> dict[str, Any]:
        """Spawn the process and wait until its pipeline is loaded."""
        ctx = get_context("spawn")
        parent, child = ctx.Pipe()
        self.ready = self.loop.create_future()
        proc = ctx.Process(
            target=worker.main,
            args=(child, self.spec.as_dict()),
            name=f"runner-local-{self.spec.device}",
            daemon=True,
        )
        # spawning imports runner: off the loop, Ctrl-C blocked for the child
        await asyncio.to_thread(lifeline.spawning, proc.start)
        child.close()  # ours closed: the pipe reports EOF when the worker dies
        self.proc, self.conn = proc, parent
        self.starts += 1
        threading.Thread(
            target=self._read, args=(proc, parent), name="runner-local-reader", daemon=True
        ).start()
        self.info = await asyncio.wait_for(asyncio.shield(self.ready), LOAD_TIMEOUT_S)
        log.info("local_worker_ready", model=self.spec.model, **self.info)
        return self.info

    def _read(self, proc: Any, conn: Any) -> None:
        """Reader thread: every message to the loop; EOF means the worker died."""
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            self.loop.call_soon_threadsafe(self._on_message, msg)
        proc.join(timeout=EXIT_WAIT_S)
        try:
            self.loop.call_soon_threadsafe(self._on_exit, proc, proc.exitcode)
        except RuntimeError:  # the loop is closed: nobody waits for this worker any more
            pass

    def _on_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready" and self.ready is not None and not self.ready.done():
            self.ready.set_result(msg[1])
        elif kind == "load_error" and self.ready is not None and not self.ready.done():
            self.ready.set_exception(
                ModelNotServed(f"{self.spec.model}: {msg[1]}", model=self.spec.model)
            )
        elif kind in ("done", "error"):
            fut = self.pending.pop(msg[1], None)
            if fut is None or fut.done():
                return
            if kind == "done":
                fut.set_result(msg[2])
            elif msg[2] == "oom":
                fut.set_exception(
                    ServerError(
                        f"{self.spec.model} on {self.spec.device}: out of memory",
                        model=self.spec.model,
                    )
                )
            else:
                fut.set_exception(RowFailed(f"{self.spec.model}: {msg[3]}", model=self.spec.model))

    def _on_exit(self, proc: Any, code: int | None) -> None:
        if proc is not self.proc:
            return  # an older process of this slot: its jobs were already failed
        self.conn = None
        why = f"{self.spec.model} worker on {self.spec.device} died (exit code {code})"
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ServerError(why + " while loading", model=self.spec.model))
        if self.pending:
            log.warning(
                "local_worker_died",
                model=self.spec.model,
                device=self.spec.device,
                exit_code=code,
                jobs=len(self.pending),
            )
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ServerError(why, model=self.spec.model))
        self.pending.clear()

    async def run(self, job_id: int, job: dict[str, Any]) -> list[bytes]:
        fut: asyncio.Future[list[bytes]] = self.loop.create_future()
        self.pending[job_id] = fut
        conn = self.conn
        try:
            await asyncio.to_thread(self._send, conn, ("job", job_id, job))
        except (OSError, ValueError, AttributeError):
            self.pending.pop(job_id, None)
            raise ServerError(f"{self.spec.model} worker on {self.spec.device} is gone") from None
        return await fut

    def _send(self, conn: Any, msg: tuple[Any, ...]) -> None:
        with self.send_lock:
            conn.send(msg)

    async def stop(self, grace_s: float | None = None) -> None:
        proc, conn = self.proc, self.conn
        if proc is None:
            return
        self.proc = None
        if conn is not None:
            try:
                await asyncio.to_thread(self._send, conn, ("stop",))
            except (OSError, ValueError):
                pass
        # an idle worker reads "stop" and leaves; a busy one would finish its job first
        grace = lifeline.STOP_GRACE_S if grace_s is None else grace_s
        await asyncio.to_thread(lifeline.stop_processes, [proc], grace)
        if conn is not None:
            conn.close()


class _Model:
    """A local model's workers, started on first use."""

    def __init__(self, name: str, settings: Settings, make: Callable[[WorkerSpec], Any]) -> None:
        self.name = name
        self.settings = settings
        self.make = make  # a process worker, or a Ray actor (runner.backends.local.ray_pool)
        self.workers: list[Any] = []
        self.problem: ModelNotServed | None = None
        self.lock = asyncio.Lock()
        self.free = asyncio.Condition()

    async def ensure(self) -> None:
        async with self.lock:
            if self.problem is not None:
                raise self.problem
            if not self.workers:
                spec = self.settings.local[self.name.removeprefix("local:")]
                try:
                    specs = worker_specs(self.name, spec)
                except ModelNotServed as exc:
                    self.problem = exc
                    log.error("local_model_missing", model=self.name, error=str(exc))
                    raise
                self.workers = [self.make(s) for s in specs]
            dead = [w for w in self.workers if not w.alive]
            if dead:
                try:
                    await asyncio.gather(*(w.start() for w in dead))
                except ModelNotServed as exc:
                    self.problem = exc
                    log.error("local_model_unloadable", model=self.name, error=str(exc))
                    raise

    def pick(self) -> Any:
        live = [w for w in self.workers if w.alive]
        if not live:
            return None
        w = min(live, key=lambda w: len(w.pending))
        return w if len(w.pending) < w.spec.batch else None


class LocalPool:
    """The scheduler's ``LocalBackend``: ``local:<name>`` models on this machine's devices."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, _Model] = {}
        self._ids = itertools.count(1)
        self.images = 0

    def describe(self) -> str:
        parts = []
        for name, spec in sorted(self.settings.local.items()):
            parts.append(f"local:{name} on {', '.join(spec.devices) or 'every GPU, else cpu'}")
        return "; ".join(parts)

    def _model(self, model: str) -> _Model:
        if model.removeprefix("local:") not in self.settings.local:
            raise ModelNotServed(
                f'{model}: no [local."{model.removeprefix("local:")}"] table in settings',
                model=model,
            )
        if model not in self.models:
            self.models[model] = _Model(model, self.settings, self._new_worker)
        return self.models[model]

    def _new_worker(self, spec: WorkerSpec) -> Any:
        return _Worker(spec, asyncio.get_running_loop())

    async def generate(  # the scheduler's LocalBackend protocol
        self, model: str, *, task_type: str, prompt: str, negative: str | None,
        source: Path | None, n: int, seeds: list[int],
    ) -> list[bytes]:
        m = self._model(model)
        await m.ensure()
        async with m.free:
            await m.free.wait_for(
                lambda: m.pick() is not None or not any(w.alive for w in m.workers)
            )
            chosen = m.pick()
        if chosen is None:  # every worker died between ensure() and here: a retry
            raise ServerError(f"{model}: no live worker")
        edits = bool(chosen.info.get("edits"))
        if edits != (task_type != "t2i"):
            raise ModelNotServed(
                f"{model} is {'an edit' if edits else 'a text-to-image'} pipeline "
                f"({chosen.info.get('pipeline')}): list it under "
                f"{'tie/vttie' if edits else 't2i'} in [models], not {task_type}",
                model=model,
            )
        if edits and source is None:
            raise RowFailed(f"{model}: an edit needs a source image")
        job = {
            "prompt": prompt,
            "negative": negative,
            "source": str(source) if source is not None else None,
            "seeds": list(seeds[:n]) if n else list(seeds),
        }
        try:
            images = await chosen.run(next(self._ids), job)
        finally:
            async with m.free:
                m.free.notify_all()
        self.images += len(images)
        return images

    def workers(self, model: str) -> list[Any]:
        """The model's workers (for doctor and tests)."""
        m = self.models.get(model)
        return list(m.workers) if m is not None else []

    async def close(self, *, grace_s: float | None = None) -> None:
        """Stop every worker; idle ones get ``grace_s`` to leave, busy ones are ended."""
        await asyncio.gather(
            *(w.stop(grace_s) for m in self.models.values() for w in m.workers),
            return_exceptions=True,
        )
        self.models.clear()
