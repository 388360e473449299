"""The processors by kind and name (FaceFusion-style), and the loader that builds a
worker's pipeline from its ``WorkerConfig``.

``PROCESSORS[kind][name]`` is a factory: given the ``Loader`` (the config, and the model
files loaded once and shared between processors), it returns a processor of that kind (the
interfaces are in ``interfaces``). A name that cannot be loaded falls back along
``FALLBACKS`` (inswapper -> classic), the reason kept in ``Loader.notes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runner.backends.faceswap.detect import (
    DlibDetector,
    DlibLandmarker,
    DlibModels,
    FaceFinder,
    MeshTo68,
    load_dlib,
)
from runner.backends.faceswap.enhance import Enhancer as OnnxEnhancer
from runner.backends.faceswap.inswapper import InsightSwapper, ScrfdDetector
from runner.backends.faceswap.interfaces import (
    Detector,
    Enhancer,
    Landmarker,
    Mask,
    Swapper,
)
from runner.backends.faceswap.masks import GlassesMask, RegionMask
from runner.backends.faceswap.swappers import ClassicSwapper, InswapperSwapper

Kind = Literal["detector", "landmarker", "swapper", "mask", "enhancer"]

# What the inswapper is built with: SCRFD's key points align inswapper_128 and ArcFace.
INSWAPPER_DETECTOR = "scrfd"
INSWAPPER_MASKS = ("region", "glasses")  # applied in this order after the paste
CLASSIC_DETECTOR = "dlib"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, resolved in the parent (picklable, no model objects)."""

    backend: str  # the swapper: "inswapper" or "classic", already resolved
    buffalo_dir: str | None = None
    inswapper: str | None = None
    enhancer: str | None = None  # the restorer's weights; its name says which processor
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 1
    jpeg_quality: int = 95
    candidates: int = 1
    landmarker: str = "dlib"  # the 68 points (and mesh) for the classic swap and glasses


class Loader:
    """Builds one worker's processors by name; each model file is loaded once."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.notes: list[str] = []  # why a processor fell back, one line each
        self.enhancer: Enhancer | None = None  # given to the swapper built after it
        self._dlib: DlibModels | None = None
        self._insight: InsightSwapper | None = None
        self._finder: FaceFinder | None = None

    # --- shared model files -------------------------------------------------------------
    def dlib(self) -> DlibModels:
        if self._dlib is None:
            self._dlib = load_dlib()
        return self._dlib

    @property
    def dlib_loaded(self) -> DlibModels | None:
        return self._dlib

    def insight(self) -> InsightSwapper:
        if self._insight is None:
            config = self.config
            if not (config.buffalo_dir and config.inswapper):
                raise RuntimeError("no buffalo_l or inswapper_128 weights given")
            self._insight = InsightSwapper(Path(config.buffalo_dir), Path(config.inswapper),
                                           list(config.providers), config.threads)
        return self._insight

    # --- processors -----------------------------------------------------------------------
    def build(self, kind: Kind, name: str) -> Any:
        named = PROCESSORS[kind]
        if name not in named:
            raise ValueError(f"no {kind} named {name!r}; there are {', '.join(named)}")
        try:
            return named[name](self)
        except Exception as exc:
            fallback = FALLBACKS.get((kind, name))
            if fallback is None:
                raise
            self.notes.append(f"{name} could not be loaded ({type(exc).__name__}: {exc})")
            return self.build(kind, fallback)

    def finder(self) -> FaceFinder:
        """dlib's detector with the configured landmarker: main faces with 68 points."""
        if self._finder is None:
            detector: Detector = self.build("detector", CLASSIC_DETECTOR)
            landmarker: Landmarker = self.build("landmarker", self.config.landmarker)
            self._finder = FaceFinder(detector, landmarker)
        return self._finder

    def optional_finder(self) -> FaceFinder | None:
        """The finder, or None where dlib (or its models) cannot be loaded: the inswapper's
        glasses rule and realism check then do without."""
        try:
            return self.finder()
        except Exception:
            return None


def enhancer_name(path: str | Path) -> str:
    """The enhancer processor for a weights file: FaceFusion's file names say the model."""
    return "codeformer" if Path(path).name.lower().startswith("codeformer") else "gfpgan"


def _classic(loader: Loader) -> Swapper:
    return ClassicSwapper(loader.finder(), loader.dlib(), loader.enhancer,
                          loader.config.candidates)


def _inswapper(loader: Loader) -> Swapper:
    models = loader.insight()
    masks: list[Mask] = [loader.build("mask", name) for name in INSWAPPER_MASKS]
    detector: Detector = loader.build("detector", INSWAPPER_DETECTOR)
    return InswapperSwapper(models, detector, masks, loader.enhancer, loader.optional_finder())


def _glasses(loader: Loader) -> Mask:
    # Optional after the inswapper: without dlib it still swaps, ori's frames as they come.
    return GlassesMask(loader.optional_finder())


def _mediapipe(loader: Loader) -> Landmarker:
    # Imported here: only a worker that asks for the mesh loads it (OpenCV's TFLite net).
    from runner.backends.faceswap import landmark_mediapipe as mp

    reason = mp.unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    # dlib's 68 points, the mesh's 468 for the warp's cheeks and forehead (``mesh_warp``):
    # the mesh's own 68 cost realism on the benchmark (BENCHMARKS.md, "Face swap"). A face
    # the mesh does not see gets dlib's points alone.
    return MeshTo68("mediapipe", mp.MeshLandmarker(), mp.to_68,
                    fallback=DlibLandmarker(loader.dlib()), fallback_68=True)


def _onnx_enhancer(loader: Loader) -> Enhancer:
    config = loader.config
    assert config.enhancer
    return OnnxEnhancer(Path(config.enhancer), list(config.providers), config.threads)


Factory = Callable[[Loader], Any]

PROCESSORS: dict[Kind, dict[str, Factory]] = {
    "detector": {
        "dlib": lambda loader: DlibDetector(loader.dlib()),
        "scrfd": lambda loader: ScrfdDetector(loader.insight()),
    },
    "landmarker": {
        "mediapipe": _mediapipe,  # FaceMesh's 468 points (``landmark_mediapipe``)
        "dlib": lambda loader: DlibLandmarker(loader.dlib()),
    },
    "swapper": {
        "inswapper": _inswapper,
        "classic": _classic,
    },
    "mask": {
        "region": lambda loader: RegionMask(),
        "glasses": _glasses,
    },
    "enhancer": {
        "gfpgan": _onnx_enhancer,  # GFPGAN 1.4 and CodeFormer: one ONNX runner for both
        "codeformer": _onnx_enhancer,
    },
}

# (kind, name) -> the name used instead when that one cannot be loaded.
FALLBACKS: dict[tuple[Kind, str], str] = {
    ("swapper", "inswapper"): "classic",
    ("landmarker", "mediapipe"): "dlib",
}


__all__ = [
    "FALLBACKS",
    "PROCESSORS",
    "Kind",
    "Loader",
    "WorkerConfig",
    "enhancer_name",
]
