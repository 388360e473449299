"""The asyncio side: a spawn-context process pool, models loaded once per worker, one retry
after a worker crash, and nothing that blocks the event loop.

- spawn, not fork: onnxruntime sessions and CUDA do not survive fork, and a fork of a
  threaded asyncio process is unsafe anyway.
- intra-op threads = cores // workers: N workers each using every core oversubscribe the
  machine badly.
- a crashed worker breaks the whole pool (BrokenProcessPool) and every row in flight with
  it: the first to notice builds a new pool, each affected row is tried once more there,
  alone (so a row that kills its worker cannot take a neighbour's retry with it), and the
  run goes on. Only one row per worker is handed to the pool at a time, so a crash costs
  the rows running, not the whole queue.
- submitting can spawn a process (dynamic spawning), so submits happen in a thread, with
  Ctrl-C blocked there (``lifeline``): workers are the runner's to stop, and they die with it.
- closing never waits for a running swap: idle workers leave at once, busy ones are
  stopped (their rows are over: the run finished or was stopped).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import structlog

from runner.backends import lifeline
from runner.backends.faceswap import worker
from runner.backends.faceswap.models import ModelPaths, find_models
from runner.backends.faceswap.processors import FALLBACKS, PROCESSORS
from runner.backends.faceswap.result import FaceSwapError, SwapResult
from runner.errors import SettingsError
from runner.settings import FaceSwapSettings

log = structlog.get_logger(__name__)

# "auto" or a swapper processor's name ("inswapper", "classic").
BACKENDS = ("auto", *PROCESSORS["swapper"])
LANDMARKERS = ("auto", *PROCESSORS["landmarker"])
MAX_AUTO_WORKERS = 4  # each worker holds its own models (dlib ~150 MB, buffalo_l ~0.5 GB)
WARM_UP_ROUNDS = 50  # x 0.2 s: ten seconds for the slowest worker to load its models


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def onnx_providers() -> list[str]:
    """CUDA then CPU, as far as the installed onnxruntime offers them."""
    try:
        import onnxruntime as ort

        available = set(ort.get_available_providers())
    except Exception:
        return ["CPUExecutionProvider"]
    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return wanted or ["CPUExecutionProvider"]


def _chosen(setting: str, requested: str, names: Sequence[str]) -> str:
    """The setting's name, normalised; a name not in ``names`` is a one-line settings error."""
    name = (requested or "auto").strip().lower()
    if name not in names:
        raise SettingsError(
            f"faceswap.{setting} {requested!r} is unknown; use one of {', '.join(names)}"
        )
    return name


def resolve_backend(requested: str, paths: ModelPaths) -> tuple[str, str | None]:
    """(backend to run, why it is not the one asked for, or None)."""
    name = _chosen("backend", requested, BACKENDS)
    if name == "classic":
        return "classic", None
    if paths.inswapper_ready:
        return "inswapper", None
    if name == "inswapper":
        return "classic", f"inswapper weights {paths.missing_text()}"
    return "classic", None


def resolve_landmarker(requested: str) -> tuple[str, str | None]:
    """(landmarker to run, why it is not the one asked for, or None). Resolved here, in the
    parent, so the banner names what the workers will load."""
    name = _chosen("landmarker", requested, LANDMARKERS)
    if name == "dlib":
        return "dlib", None
    from runner.backends.faceswap import landmark_mediapipe

    reason = landmark_mediapipe.unavailable_reason()
    if reason is None:
        return "mediapipe", None
    return FALLBACKS[("landmarker", "mediapipe")], None if name == "auto" else reason


def auto_workers(backend: str, providers: list[str], cores: int) -> int:
    if backend == "inswapper" and "CUDAExecutionProvider" in providers:
        return 1  # one GPU: a second worker only duplicates the models in its memory
    if backend == "inswapper":
        return max(1, min(MAX_AUTO_WORKERS, cores // 2))  # onnxruntime uses its threads well
    # dlib runs single-threaded: one worker per core scales (measured 1.9x on 2 cores).
    return max(1, min(MAX_AUTO_WORKERS, cores))


class FaceSwapPool:
    """The face-swap processor of the deepfake rows.

    ``swap(index, ori, target)`` returns ori's picture with target's face as a JPEG, with
    the identity measured on it; it raises FaceSwapError when the row cannot be done.
    """

    # The function the workers run for a row; a test may point it at a crashing job.
    job_function: Callable[[worker.SwapJob], SwapResult] = staticmethod(worker.run_job)

    def __init__(self, settings: FaceSwapSettings, *, jpeg_quality: int = 95) -> None:
        self.settings = settings
        self.jpeg_quality = jpeg_quality
        self.paths = find_models(settings.models_dir)
        self._backend, self.fallback_reason = resolve_backend(settings.backend, self.paths)
        self.landmarker, self.landmarker_fallback = resolve_landmarker(settings.landmarker)
        self.cores = cpu_count()
        self.providers = onnx_providers() if self._backend == "inswapper" else []
        self.workers = settings.workers or auto_workers(self._backend, self.providers, self.cores)
        self.threads = max(1, self.cores // self.workers)
        self.worker_info: list[dict[str, Any]] = []
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0
        self._lock: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None
        self._retry_lock: asyncio.Lock | None = None
        self.crashes = 0
        if self.fallback_reason:
            log.warning(
                "faceswap.fallback",
                requested=settings.backend,
                backend=self._backend,
                reason=self.fallback_reason,
            )
        if self.landmarker_fallback:
            log.warning("faceswap.landmarker_fallback", requested=settings.landmarker,
                        landmarker=self.landmarker, reason=self.landmarker_fallback)

    # --- what it is -------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._backend

    def config(self) -> worker.WorkerConfig:
        return worker.WorkerConfig(
            backend=self._backend,
            buffalo_dir=str(self.paths.buffalo_dir) if self.paths.buffalo_dir else None,
            inswapper=str(self.paths.inswapper) if self.paths.inswapper else None,
            enhancer=str(self.paths.enhancer) if self.paths.enhancer else None,
            providers=tuple(self.providers or ["CPUExecutionProvider"]),
            threads=self.threads,
            jpeg_quality=self.jpeg_quality,
            candidates=self.settings.candidates,
            landmarker=self.landmarker,
        )

    def describe(self) -> str:
        """One line for the start banner (the caller puts "face swap: " before it)."""
        if self._backend == "inswapper":
            what = "inswapper_128 + buffalo_l (ArcFace identity)"
            names = (p.removesuffix("ExecutionProvider") for p in self.providers)
            runtime = f"providers {'+'.join(names)}"
        else:
            what = f"classic ({self._landmarks_text()}, dlib identity)"
            runtime = "dlib on CPU"
        parts = [
            what,
            f"{self.workers} worker{'s' if self.workers != 1 else ''} x {self.threads} thread"
            f"{'s' if self.threads != 1 else ''}",
            runtime,
        ]
        if self._backend == "inswapper":
            parts.append(f"glasses rule on {self._landmarks_text()}")
        if self.settings.candidates > 1:
            parts.append(f"best of {self.settings.candidates} variants by identity and realism")
        parts.append(
            f"restoration {self.paths.enhancer.name}" if self.paths.enhancer
            else "no restoration weights"
        )
        if self._backend == "classic" and self.paths.missing:
            lead = "INSWAPPER UNAVAILABLE, using classic" if self.fallback_reason else (
                "inswapper off")
            parts.append(f"{lead}: {self.paths.missing_text()}")
        loaded = {i.get("load_error") for i in self.worker_info if i.get("load_error")}
        parts.extend(sorted(e for e in loaded if e))
        return "; ".join(parts)

    def _landmarks_text(self) -> str:
        if self.landmarker == "mediapipe":
            return "dlib 68 landmarks + MediaPipe FaceMesh 468 for the warp"
        why = f" (mediapipe unavailable: {self.landmarker_fallback})" if (
            self.landmarker_fallback) else ""
        return f"dlib 68 landmarks{why}"

    # --- life cycle -----------------------------------------------------------------------
    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=get_context("spawn"),
            initializer=worker.init_process,
            initargs=(self.config(),),
        )

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # Created on first use, inside the running loop (the pool may be built before it).
    def _get_slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        return self._slots

    def _get_retry_lock(self) -> asyncio.Lock:
        if self._retry_lock is None:
            self._retry_lock = asyncio.Lock()
        return self._retry_lock

    async def start(self) -> None:
        """Build the pool (idempotent) and wait until every worker has loaded its models."""
        async with self._get_lock():
            if self._executor is not None:
                return
            self._executor = await asyncio.to_thread(lifeline.spawning, self._new_executor)
            self._generation += 1
            executor = self._executor
        try:
            infos = await self._warm_up(executor)
        except BrokenProcessPool as exc:
            # A worker that dies while loading (out of memory, a bad native library) breaks the
            # pool; rows will rebuild it, but say so now.
            log.error("faceswap.start_failed", error=str(exc) or "worker died while loading")
            await self._rebuild(self._generation)
            return
        self._announce_ready(
            infos,
            threads=self.threads,
            pids=[i.get("pid") for i in infos],
            load_s=max((i.get("load_s") or 0.0) for i in infos) if infos else None,
        )

    def _announce_ready(self, infos: list[dict[str, Any]], **fields: Any) -> None:
        """Keep what the workers said they loaded, warn of each fallback, log the ready line."""
        self.worker_info = list(infos)
        for info in infos:
            if info.get("load_error"):
                log.warning("faceswap.worker_fallback", reason=info["load_error"])
        log.info("faceswap.ready", backend=self._backend, workers=self.workers, **fields)

    async def _warm_up(self, executor: ProcessPoolExecutor) -> list[dict[str, Any]]:
        """One answer from each worker. A worker that loads faster may answer several pings
        while another still loads, so ping in rounds until every worker has answered (a
        bounded number: the pool works anyway, and the ready line says how many did)."""
        by_pid: dict[Any, dict[str, Any]] = {}
        for _ in range(WARM_UP_ROUNDS):
            infos = await asyncio.gather(
                *(self._submit(executor, worker.ping, 0.2) for _ in range(self.workers))
            )
            for info in infos:
                by_pid.setdefault(info.get("pid"), info)
            if len(by_pid) >= self.workers:
                break
        return list(by_pid.values())

    async def _submit(self, executor: ProcessPoolExecutor, fn: Callable[..., Any],
                      *args: Any) -> Any:
        # submit() may spawn a worker process: keep that off the event loop.
        future = await asyncio.to_thread(lifeline.spawning, executor.submit, fn, *args)
        return await asyncio.wrap_future(future)

    async def _rebuild(self, generation: int) -> None:
        """Replace a broken pool once, however many rows noticed it."""
        async with self._get_lock():
            if generation != self._generation or self._executor is None:
                return  # someone else already rebuilt it (or the pool was closed)
            broken = self._executor
            self._executor = await asyncio.to_thread(lifeline.spawning, self._new_executor)
            self._generation += 1
            self.crashes += 1
        await asyncio.to_thread(broken.shutdown, wait=False, cancel_futures=True)
        log.warning("faceswap.pool_rebuilt", crashes=self.crashes)

    async def swap(self, index: str, ori: Path, target: Path) -> SwapResult:
        await self.start()
        job = worker.SwapJob(index=str(index), ori=str(ori), target=str(target))
        # At most one row per worker is handed to the pool: a crash then takes down only the
        # rows actually running, not every row queued behind them.
        generation = self._generation
        try:
            async with self._get_slots():
                generation = self._generation
                result = await self._run(job)
        except BrokenProcessPool:
            log.warning("faceswap.worker_crashed", index=index, attempt=1)
            await self._rebuild(generation)
        else:
            return self._done(index, result)
        # The retry runs alone in the (new) pool: if the worker dies again, this row is the
        # one that kills it, and the rows that were merely running beside it are not blamed.
        async with self._get_retry_lock():
            slots = self._get_slots()
            held = 0  # counted as taken: a cancel while taking them must give back each one
            try:
                for _ in range(self.workers):
                    await slots.acquire()
                    held += 1
                generation = self._generation
                result = await self._run(job)
            except BrokenProcessPool:
                log.warning("faceswap.worker_crashed", index=index, attempt=2)
                await self._rebuild(generation)
                raise FaceSwapError(
                    "the face-swap worker crashed twice on this row (the retry ran alone)"
                ) from None
            finally:
                for _ in range(held):
                    slots.release()
        result.detail["retried_after_crash"] = True
        return self._done(index, result)

    async def _run(self, job: worker.SwapJob) -> SwapResult:
        executor = self._executor
        if executor is None:  # closed meanwhile: start again rather than fail the row
            await self.start()
            executor = self._executor
        assert executor is not None
        result: SwapResult = await self._submit(executor, type(self).job_function, job)
        return result

    def _done(self, index: str, result: SwapResult) -> SwapResult:
        log.debug(
            "faceswap.done",
            index=index,
            backend=result.backend,
            variant=result.detail.get("variant"),
            identity_target=result.identity_target,
            identity_ori=result.identity_ori,
        )
        return result

    async def close(self, *, grace_s: float | None = None) -> None:
        """Stop the workers: queued rows cancelled, idle workers leave (within ``grace_s``),
        busy ones are ended."""
        async with self._get_lock():
            executor, self._executor = self._executor, None
        if executor is not None:
            procs = list((getattr(executor, "_processes", None) or {}).values())
            await asyncio.to_thread(executor.shutdown, wait=False, cancel_futures=True)
            grace = lifeline.STOP_GRACE_S if grace_s is None else grace_s
            await asyncio.to_thread(lifeline.stop_processes, procs, grace)
        # asyncio primitives belong to one loop: a later run (a new notebook cell's loop,
        # another asyncio.run) gets fresh ones.
        self._lock = self._slots = self._retry_lock = None

    async def release(self) -> None:
        """No deepfake row is left: the workers go (their memory and cores to the rest)."""
        await self.close()

    async def __aenter__(self) -> FaceSwapPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
