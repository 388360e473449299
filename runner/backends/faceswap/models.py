"""Where every model file lives, and what is missing (said in words the user can act on)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

# buffalo_l is loaded for detection + recognition only; the other three files are optional.
BUFFALO_REQUIRED = ("det_10g.onnx", "w600k_r50.onnx")
INSWAPPER_FILE = "inswapper_128.onnx"
# Face restorers, FaceFusion's file names first; the first one found is used.
ENHANCER_FILES = (
    "gfpgan_1.4.onnx",
    "GFPGANv1.4.onnx",
    "codeformer.onnx",
    "CodeFormer.onnx",
)
DLIB_FILES = (
    "shape_predictor_68_face_landmarks.dat",
    "dlib_face_recognition_resnet_model_v1.dat",
    "mmod_human_face_detector.dat",
)


def dlib_model_dir() -> Path | None:
    """The folder of ``face_recognition_models``' .dat files, without importing the package.

    Its ``__init__`` imports ``pkg_resources``, which new setuptools no longer ships, so the
    folder is found through the import system instead.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        folder = Path(base) / "models"
        if all((folder / name).is_file() for name in DLIB_FILES[:2]):
            return folder
    return None


@dataclass
class ModelPaths:
    """What was found under ``models_dir`` for the inswapper backend and the enhancer."""

    models_dir: Path
    buffalo_dir: Path | None = None
    inswapper: Path | None = None
    enhancer: Path | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def inswapper_ready(self) -> bool:
        return self.buffalo_dir is not None and self.inswapper is not None

    def missing_text(self) -> str:
        """One line: exactly which files go where (empty when nothing is missing)."""
        if not self.missing:
            return ""
        return "missing " + ", ".join(self.missing)


def find_models(models_dir: Path) -> ModelPaths:
    """Look for buffalo_l and inswapper_128 the way insightface lays them out.

    buffalo_l: ``<models_dir>/models/buffalo_l/`` (insightface's ``root/models/<name>``, so
    ``~/.insightface`` works as models_dir) or ``<models_dir>/buffalo_l/``.
    inswapper: ``<models_dir>/inswapper_128.onnx`` or ``<models_dir>/models/inswapper_128.onnx``.
    """
    root = Path(models_dir).expanduser()
    found = ModelPaths(models_dir=root)
    canonical_buffalo = root / "models" / "buffalo_l"
    for folder in (canonical_buffalo, root / "buffalo_l"):
        if all((folder / name).is_file() for name in BUFFALO_REQUIRED):
            found.buffalo_dir = folder
            break
    if found.buffalo_dir is None:
        found.missing.append(
            f"{' and '.join(BUFFALO_REQUIRED)} (insightface buffalo_l.zip) in {root}/buffalo_l/"
        )
    for path in (root / INSWAPPER_FILE, root / "models" / INSWAPPER_FILE):
        if path.is_file():
            found.inswapper = path
            break
    if found.inswapper is None:
        found.missing.append(f"{INSWAPPER_FILE} in {root}/")
    for name in ENHANCER_FILES:
        for path in (root / name, root / "models" / name):
            if path.is_file():
                found.enhancer = path
                break
        if found.enhancer is not None:
            break
    return found
