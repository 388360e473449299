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

from runner.backends.faceswap import blend, classic, glasses, jpeg
from runner.backends.faceswap.detect import (
    DlibModels,
    Face,
    find_face_near,
    find_main_face,
    load_dlib,
)
from runner.backends.faceswap.enhance import Enhancer, five_points
from runner.backends.faceswap.identity import cosine, dlib_descriptor, euclidean
from runner.backends.faceswap.result import FaceSwapError, SwapResult

# Identity cosine traded for one grey level of added edge at the seam. At 0.004 the seam
# decided: best-of-3 took "poisson" for 213 of 250 rows and lost 0.04 in dlib distance.
SEAM_WEIGHT = 0.001


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, resolved in the parent (picklable, no model objects)."""

    backend: str  # "inswapper" or "classic", already resolved
    buffalo_dir: str | None = None
    inswapper: str | None = None
    enhancer: str | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 1
    jpeg_quality: int = 95
    candidates: int = 1


@dataclass(frozen=True)
class SwapJob:
    index: str
    ori: str
    target: str


class Engine:
    """The models of one process and the swap itself (usable in-process too)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.load_error: str | None = None
        t0 = time.perf_counter()
        cv2.setNumThreads(config.threads)
        self.backend = config.backend
        self.insight: Any = None
        if self.backend == "inswapper":
            try:
                from runner.backends.faceswap.inswapper import InsightSwapper

                assert config.buffalo_dir and config.inswapper
                self.insight = InsightSwapper(
                    Path(config.buffalo_dir), Path(config.inswapper),
                    list(config.providers), config.threads,
                )
            except Exception as exc:  # a corrupt or incompatible file: say so, swap offline
                self.load_error = f"inswapper could not be loaded ({type(exc).__name__}: {exc})"
                self.backend = "classic"
        # dlib serves the classic backend, and the inswapper's post-processing (ori's
        # glasses kept whole needs 68 landmarks); without it the inswapper still swaps.
        self.dlib: DlibModels | None = None
        try:
            self.dlib = load_dlib()
        except Exception:
            if self.backend == "classic":
                raise
        self.enhancer: Enhancer | None = None
        if config.enhancer:
            try:
                self.enhancer = Enhancer(Path(config.enhancer), list(config.providers),
                                         config.threads)
            except Exception as exc:
                self.load_error = f"enhancer could not be loaded ({type(exc).__name__}: {exc})"
        self.load_s = time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "backend": self.backend,
            "providers": list(self.insight.providers) if self.insight else [],
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
        style = jpeg.source_style(job.ori, self.config.jpeg_quality)
        if self.backend == "inswapper":
            result = self._swap_insight(ori, target, style)
        else:
            result = self._swap_classic(ori, target, style)
        result.detail["jpeg"] = style.describe()
        result.detail["timings_ms"]["total"] = round((time.perf_counter() - t0) * 1000, 1)
        result.detail["worker_pid"] = os.getpid()
        if self.load_error:
            result.detail["fallback"] = self.load_error
        return result

    def _swap_classic(self, ori: np.ndarray, target: np.ndarray,
                      style: jpeg.JpegStyle) -> SwapResult:
        assert self.dlib is not None
        models = self.dlib
        timings: dict[str, float] = {}
        t = time.perf_counter()
        ori_face = find_main_face(models, ori)
        if ori_face is None:
            raise FaceSwapError("no face found in ori_image")
        target_face = find_main_face(models, target)
        if target_face is None:
            raise FaceSwapError("no face found in target_image")
        timings["detect"] = _ms(t)
        t = time.perf_counter()
        e_ori = dlib_descriptor(models, ori, ori_face)
        e_target = dlib_descriptor(models, target, target_face)
        timings["embed"] = _ms(t)

        tried: list[dict[str, Any]] = []
        best: tuple[float, bytes, dict[str, Any]] | None = None
        t_swap = t_measure = 0.0
        for variant in classic.VARIANTS[: max(1, self.config.candidates)]:
            t = time.perf_counter()
            out, info = classic.swap(ori, ori_face, target, target_face, variant)
            if self.enhancer is not None:
                out = self.enhancer.enhance(out, five_points(ori_face.points))
                info["enhancer"] = self.enhancer.name
            data = save_like_source(out, style)
            t_swap += time.perf_counter() - t
            t = time.perf_counter()
            # Measured on the bytes that are delivered, not on the array before JPEG.
            delivered = decode_jpeg(data)
            out_face = find_face_near(models, delivered, ori_face)
            e_out = dlib_descriptor(models, delivered, out_face)
            t_measure += time.perf_counter() - t
            score = {
                "variant": variant.name,
                "identity_target": _r(cosine(e_out, e_target)),
                "identity_ori": _r(cosine(e_out, e_ori)),
                "distance_target": _r(euclidean(e_out, e_target)),
                "distance_ori": _r(euclidean(e_out, e_ori)),
                "output_face": out_face.how,
                "seam": info.get("seam"),
            }
            tried.append(score)
            # Identity first, realism too: a variant that moves identity a little less but
            # leaves no seam is the better picture (SEAM_WEIGHT per grey level of seam).
            key = (score["identity_target"] if score["identity_target"] is not None else -2.0)
            key -= SEAM_WEIGHT * float(info.get("seam", 0.0))
            if best is None or key > best[0]:
                best = (key, data, {**info, **score})
        assert best is not None
        timings["swap"] = round(t_swap * 1000, 1)
        timings["measure"] = round(t_measure * 1000, 1)
        _, data, chosen = best
        detail: dict[str, Any] = {
            **chosen,
            "faces": {"ori": ori_face.how, "target": target_face.how},
            "distance_ori_target": _r(euclidean(e_ori, e_target)),
            "candidates": tried if len(tried) > 1 else [],
            "timings_ms": timings,
        }
        return SwapResult(
            jpeg=data,
            backend="classic",
            identity_target=chosen["identity_target"],
            identity_ori=chosen["identity_ori"],
            embedding="dlib",
            detail=detail,
        )

    def _swap_insight(self, ori: np.ndarray, target: np.ndarray,
                      style: jpeg.JpegStyle) -> SwapResult:
        insight = self.insight
        timings: dict[str, float] = {}
        t = time.perf_counter()
        ori_bgr = np.ascontiguousarray(ori[:, :, ::-1])
        target_bgr = np.ascontiguousarray(target[:, :, ::-1])
        ori_face = insight.main_face(ori_bgr)
        if ori_face is None:
            raise FaceSwapError("no face found in ori_image")
        target_face = insight.main_face(target_bgr)
        if target_face is None:
            raise FaceSwapError("no face found in target_image")
        timings["detect"] = _ms(t)
        t = time.perf_counter()
        # Direction: ori's picture, ori's face replaced, target's identity as the source.
        out_bgr = insight.swap(ori_bgr, ori_face, target_face)
        out = np.ascontiguousarray(out_bgr[:, :, ::-1])
        region = _insight_region(out.shape, ori_face)
        sharpened, ratio = blend.match_sharpness(out, ori, region)
        out = blend.alpha_blend(sharpened, out, region)
        info: dict[str, Any] = {"variant": "inswapper", "sharpness_ratio": round(ratio, 3)}
        out, info["ori_frames_px"] = self._remove_ori_glasses(ori, out)
        if self.enhancer is not None and ori_face.kps is not None:
            out = self.enhancer.enhance(out, np.asarray(ori_face.kps, dtype=np.float64))
            info["enhancer"] = self.enhancer.name
        data = save_like_source(out, style)
        timings["swap"] = _ms(t)
        t = time.perf_counter()
        delivered_bgr = np.ascontiguousarray(decode_jpeg(data)[:, :, ::-1])
        e_out = insight.embedding_near(delivered_bgr, ori_face)
        e_target = np.asarray(target_face.normed_embedding, dtype=np.float64)
        e_ori = np.asarray(ori_face.normed_embedding, dtype=np.float64)
        timings["measure"] = _ms(t)
        detail = {
            **info,
            "identity_target": _r(cosine(e_out, e_target)),
            "identity_ori": _r(cosine(e_out, e_ori)),
            "distance_target": _r(euclidean(e_out, e_target)),
            "distance_ori": _r(euclidean(e_out, e_ori)),
            "distance_ori_target": _r(euclidean(e_ori, e_target)),
            "providers": list(insight.providers),
            "timings_ms": timings,
        }
        return SwapResult(
            jpeg=data,
            backend="inswapper",
            identity_target=detail["identity_target"],
            identity_ori=detail["identity_ori"],
            embedding="arcface",
            detail=detail,
        )

    def _remove_ori_glasses(self, ori: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, int]:
        """The classic swap's glasses rule after the inswapper: ori's frame lines that the
        pasted region's edge cuts are painted out whole, never left half. The region is
        where the picture changed (insightface pastes with a mask of its own)."""
        if self.dlib is None:
            return out, 0
        face = find_main_face(self.dlib, ori)
        if face is None:
            return out, 0
        changed = (np.abs(out.astype(np.int16) - ori.astype(np.int16)).max(axis=2) > 3)
        alpha = cv2.GaussianBlur(changed.astype(np.float32), (0, 0), max(1.0, 0.02 * face.size))
        frames = glasses.cut_lines(ori, face.points, face.size, alpha)
        if not frames.any():
            return out, 0
        return glasses.remove_frames(out, frames * (alpha < 0.9), face.size), int(frames.sum())


def _insight_region(shape: tuple[int, ...], face: Any) -> np.ndarray:
    from runner.backends.faceswap.inswapper import face_region

    return face_region(shape, np.asarray(face.bbox, dtype=np.float64))


# --- files ---------------------------------------------------------------------------------
def read_rgb(path: str, role: str) -> np.ndarray:
    """An input as RGB uint8 through ``runner.images.open_image``, the one guarded opener
    (decompression bombs refused; EXIF rotation applied, alpha flattened on white)."""
    from runner.images import ImageProblem, open_image

    if not Path(path).is_file():
        raise FaceSwapError(f"{role} not found: {path}")
    try:
        rgb = open_image(Path(path))
    except ImageProblem as exc:
        raise FaceSwapError(f"{role} is not a readable image: {exc}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def save_like_source(rgb: np.ndarray, style: jpeg.JpegStyle) -> bytes:
    """The output as JPEG bytes saved as ori was (see ``jpeg``): one settling round trip,
    then the final save, so face and background share one compression history."""
    return jpeg.encode(jpeg.settle(rgb, style), style)


decode_jpeg = jpeg.decode


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 1)


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


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
    "Engine",
    "Face",
    "SwapJob",
    "WorkerConfig",
    "init_worker",
    "ping",
    "run_job",
]
