"""What runs inside a pool worker: models loaded once per process into a module global by
the pool's initializer, then one ``run_job`` call per row.

Nothing here logs: a spawned worker has no logging set up, and stdout belongs to the
parent's progress display. What the parent should know travels back in ``detail``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runner.backends import lifeline
from runner.backends.faceswap import jpeg
from runner.backends.faceswap.detect import DlibModels, Face
from runner.backends.faceswap.interfaces import Enhancer, Swapper
from runner.backends.faceswap.processors import Loader, WorkerConfig, enhancer_name
from runner.backends.faceswap.result import FaceSwapBadInput, FaceSwapError, SwapResult
from runner.backends.faceswap.swappers import SEAM_WEIGHT


@dataclass(frozen=True)
class SwapJob:
    index: str
    ori: str
    target: str


class Engine:
    """The processors of one process and the swap itself (usable in-process too).

    The pipeline is built by name (``processors``): the swapper ``config.backend`` with the
    detector, landmarker and masks it uses, and the enhancer named by its weights file.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        t0 = time.perf_counter()
        cv2.setNumThreads(config.threads)
        self.loader = Loader(config)
        enhancer_error: str | None = None
        if config.enhancer:
            try:
                self.loader.enhancer = self.loader.build("enhancer", enhancer_name(config.enhancer))
            except Exception as exc:  # the swap goes on unrestored: say so
                enhancer_error = f"enhancer could not be loaded ({type(exc).__name__}: {exc})"
        # A swapper that cannot be loaded (a corrupt or incompatible file) falls back to the
        # offline one; the reason travels with every row.
        self.swapper: Swapper = self.loader.build("swapper", config.backend)
        self.load_error = enhancer_error or "; ".join(self.loader.notes) or None
        self.backend = self.swapper.name
        self.load_s = time.perf_counter() - t0

    @property
    def dlib(self) -> DlibModels | None:
        """dlib's models when a processor of this pipeline loaded them."""
        return self.loader.dlib_loaded

    @property
    def enhancer(self) -> Enhancer | None:
        return self.loader.enhancer

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "backend": self.backend,
            "providers": self.swapper.providers,
            "enhancer": self.enhancer.name if self.enhancer else None,
            "threads": self.config.threads,
            "load_error": self.load_error,
            "load_s": round(self.load_s, 2),
        }

    # --- the swap -------------------------------------------------------------------------
    def swap(self, job: SwapJob) -> SwapResult:
        try:
            return self._swap(job)
        except FaceSwapError:
            raise
        except Exception as exc:
            # Anything else is still this row's failure, with a reason a user can read.
            raise FaceSwapError(f"face swap failed: {type(exc).__name__}: {exc}") from None

    def _swap(self, job: SwapJob) -> SwapResult:
        t0 = time.perf_counter()
        ori = read_rgb(job.ori, "ori_image")
        target = read_rgb(job.target, "target_image")
        style = jpeg.with_history(jpeg.source_style(job.ori, self.config.jpeg_quality), ori)
        result = self.swapper.swap(ori, target, style)
        result.detail["jpeg"] = style.describe()
        result.detail["timings_ms"]["total"] = round((time.perf_counter() - t0) * 1000, 1)
        result.detail["worker_pid"] = os.getpid()
        if self.load_error:
            result.detail["fallback"] = self.load_error
        return result


# --- files ---------------------------------------------------------------------------------
def read_rgb(path: str, role: str) -> np.ndarray:
    """An input as RGB uint8 through ``runner.images.open_image``, the one guarded opener
    (decompression bombs refused; EXIF rotation applied, alpha flattened on white)."""
    from runner.images import ImageProblem, open_image

    if not Path(path).is_file():
        raise FaceSwapBadInput(f"{role} not found: {path}")
    try:
        rgb = open_image(Path(path))
    except ImageProblem as exc:
        raise FaceSwapBadInput(f"{role} is not a readable image: {exc}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


save_like_source = jpeg.save_like_source
decode_jpeg = jpeg.decode


# --- process-pool entry points ---------------------------------------------------------------
_ENGINE: Engine | None = None
_LOAD_ERROR: str | None = None


def init_worker(config: WorkerConfig) -> None:
    """The pool initializer: load the models once into this process's global.

    It never raises: an initializer that raises kills the worker, which the pool would take
    for a crash and rebuild for every row. The rows fail with the reason instead.
    """
    global _ENGINE, _LOAD_ERROR
    try:  # CPU-bound: let the runner's event loop (and its polls and submits) go first
        os.nice(10)
    except (AttributeError, OSError):
        pass
    try:
        _ENGINE = Engine(config)
    except Exception as exc:
        _ENGINE, _LOAD_ERROR = None, f"{type(exc).__name__}: {exc}"


def init_process(config: WorkerConfig) -> None:
    """The process pool's initializer: bound to the runner (it dies with it and leaves
    Ctrl-C to it), then the models. A Ray actor calls ``init_worker``: Ray owns its life."""
    lifeline.bind_to_parent()
    init_worker(config)


def run_job(job: SwapJob) -> SwapResult:
    if _ENGINE is None:
        raise FaceSwapError(f"face-swap models could not be loaded: {_LOAD_ERROR or 'no models'}")
    return _ENGINE.swap(job)


def ping(delay: float = 0.0) -> dict[str, Any]:
    """Warm-up: proves the worker started and reports what it loaded.

    The short sleep keeps one worker from taking every warm-up job, so each one starts.
    """
    if delay:
        time.sleep(delay)
    if _ENGINE is None:
        return {"pid": os.getpid(), "backend": None,
                "load_error": f"models could not be loaded: {_LOAD_ERROR or 'no models'}"}
    return _ENGINE.info()


__all__ = [
    "SEAM_WEIGHT",
    "Engine",
    "Face",
    "SwapJob",
    "WorkerConfig",
    "decode_jpeg",
    "init_process",
    "init_worker",
    "ping",
    "read_rgb",
    "run_job",
    "save_like_source",
]
