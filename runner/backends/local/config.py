"""Where a local model's pipeline is and what it runs on, decided in the driver before any
worker starts, so that a wrong path is one line naming what to put where.

Nothing here imports torch unless the devices are left to be found (``devices = []``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.devices import device_list, visible_gpus
from runner.errors import ModelNotServed
from runner.settings import LocalModel

# device_list and visible_gpus live in runner.devices (settings needs them too); they stay
# importable from here for the backend's callers.
__all__ = [
    "WorkerSpec",
    "device_list",
    "dtype_for",
    "resolve_source",
    "visible_gpus",
    "worker_specs",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def dtype_for(spec: LocalModel, device: str) -> str:
    if spec.dtype:
        return spec.dtype
    return "float32" if device == "cpu" else "bfloat16"


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to load its pipeline (plain data: it crosses spawn)."""

    model: str  # "local:<name>"
    source: str  # a folder, or a hub id when downloads are allowed
    device: str
    dtype: str
    steps: int
    size: str
    guidance: float | None
    negative_prompt: str | None
    batch: int
    lora: str | None
    offload: bool
    compile: bool
    allow_download: bool
    threads: int  # torch intra-op threads of a CPU worker

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# The WorkerSpec fields that are the model's settings as they stand.
_FROM_SETTINGS = (
    "steps", "size", "guidance", "negative_prompt", "batch", "lora", "offload", "compile",
    "allow_download",
)


def _missing(model: str, path: str, why: str) -> ModelNotServed:
    name = model.removeprefix("local:")
    return ModelNotServed(
        f"{model}: {why}; put a diffusers pipeline folder (save_pretrained layout, with "
        f'model_index.json) at {path}, or set path in [local."{name}"] of settings.toml '
        "(a hub id must already be in the local HF cache unless allow_download = true)",
        model=model,
    )


def resolve_source(model: str, spec: LocalModel) -> str:
    """The folder to load from; never downloads unless ``allow_download``."""
    path = Path(os.path.expanduser(spec.path))
    if path.exists():
        if not path.is_dir():
            raise _missing(model, spec.path, f"{spec.path} is a file, not a pipeline folder")
        if not (path / "model_index.json").is_file():
            raise _missing(
                model, spec.path, f"{spec.path} is not a diffusers pipeline (no model_index.json)"
            )
        return str(path.resolve())
    if not _HUB_ID.match(spec.path):
        raise _missing(model, spec.path, f"{spec.path} does not exist")
    if spec.allow_download:
        return spec.path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(spec.path, local_files_only=True)
    except ImportError as exc:
        raise _missing(model, spec.path, f"huggingface_hub is not installed ({exc})") from None
    except Exception:  # LocalEntryNotFoundError and kin: not in the cache
        raise _missing(
            model,
            spec.path,
            f"{spec.path} does not exist, nor is it a hub id in the local HF cache",
        ) from None


def worker_specs(model: str, spec: LocalModel) -> list[WorkerSpec]:
    """One spec per device, the source resolved (raises ModelNotServed when it is missing)."""
    source = resolve_source(model, spec)
    devices = device_list(spec.devices)
    cpus = sum(1 for d in devices if d == "cpu")
    threads = max(1, (os.cpu_count() or 1) // max(1, cpus))
    shared = {name: getattr(spec, name) for name in _FROM_SETTINGS}
    return [
        WorkerSpec(model=model, source=source, device=device, dtype=dtype_for(spec, device),
                   threads=threads, **shared)
        for device in devices
    ]
