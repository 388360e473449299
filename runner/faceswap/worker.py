"""What runs inside a pool worker: models loaded once per process into a module global by
the pool's initializer, then one ``run_job`` call per row.

Nothing here logs: a spawned worker has no logging set up, and stdout belongs to the
parent's progress display. What the parent should know travels back in ``detail``.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import blend, classic
from .detect import DlibModels, Face, find_face_near, find_main_face, load_dlib
from .enhance import Enhancer, five_points
from .identity import cosine, dlib_descriptor, euclidean
from .result import FaceSwapError, SwapResult


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
                from .inswapper import InsightSwapper

                assert config.buffalo_dir and config.inswapper
                self.insight = InsightSwapper(
                    Path(config.buffalo_dir), Path(config.inswapper),
                    list(config.providers), config.threads,
                )
            except Exception as exc:  # a corrupt or incompatible file: say so, swap offline
                self.load_error = f"inswapper could not be loaded ({type(exc).__name__}: {exc})"
                self.backend = "classic"
        # dlib serves the classic backend; it loads in about a second, so only when needed.
        self.dlib: DlibModels | None = load_dlib() if self.backend == "classic" else None
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
        if self.backend == "inswapper":
            result = self._swap_insight(ori, target)
        else:
            result = self._swap_classic(ori, target)
        result.detail["timings_ms"]["total"] = round((time.perf_counter() - t0) * 1000, 1)
        result.detail["worker_pid"] = os.getpid()
        if self.load_error:
            result.detail["fallback"] = self.load_error
        return result

    def _swap_classic(self, ori: np.ndarray, target: np.ndarray) -> SwapResult:
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
            jpeg = encode_jpeg(out, self.config.jpeg_quality)
            t_swap += time.perf_counter() - t
            t = time.perf_counter()
            # Measured on the bytes that are delivered, not on the array before JPEG.
            delivered = decode_jpeg(jpeg)
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
            }
            tried.append(score)
            key = score["identity_target"] if score["identity_target"] is not None else -2.0
            if best is None or key > best[0]:
                best = (key, jpeg, {**info, **score})
        assert best is not None
        timings["swap"] = round(t_swap * 1000, 1)
        timings["measure"] = round(t_measure * 1000, 1)
        _, jpeg, chosen = best
        detail: dict[str, Any] = {
            **chosen,
            "faces": {"ori": ori_face.how, "target": target_face.how},
            "distance_ori_target": _r(euclidean(e_ori, e_target)),
            "candidates": tried if len(tried) > 1 else [],
            "timings_ms": timings,
        }
        return SwapResult(
            jpeg=jpeg,
            backend="classic",
            identity_target=chosen["identity_target"],
            identity_ori=chosen["identity_ori"],
            embedding="dlib",
            detail=detail,
        )

    def _swap_insight(self, ori: np.ndarray, target: np.ndarray) -> SwapResult:
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
        if self.enhancer is not None and ori_face.kps is not None:
            out = self.enhancer.enhance(out, np.asarray(ori_face.kps, dtype=np.float64))
            info["enhancer"] = self.enhancer.name
        jpeg = encode_jpeg(out, self.config.jpeg_quality)
        timings["swap"] = _ms(t)
        t = time.perf_counter()
        delivered_bgr = np.ascontiguousarray(decode_jpeg(jpeg)[:, :, ::-1])
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
            jpeg=jpeg,
            backend="inswapper",
            identity_target=detail["identity_target"],
            identity_ori=detail["identity_ori"],
            embedding="arcface",
            detail=detail,
        )


def _insight_region(shape: tuple[int, ...], face: Any) -> np.ndarray:
    from .inswapper import face_region

    return face_region(shape, np.asarray(face.bbox, dtype=np.float64))


# --- files ---------------------------------------------------------------------------------
def read_rgb(path: str, role: str) -> np.ndarray:
    """An input as RGB uint8 (EXIF rotation applied, alpha flattened on white)."""
    from ..images import to_rgb

    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img) or img)
    except FileNotFoundError:
        raise FaceSwapError(f"{role} not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FaceSwapError(f"{role} is not a readable image: {exc}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    # 4:4:4 at high quality: chroma subsampling blurs the colour edges a detector looks at.
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality,
                              subsampling=0 if quality >= 90 else 2, optimize=False)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


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
