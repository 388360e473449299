"""What ``doctor`` says about local generation: the devices, and each local model's folder.

Plain tuples (level, name, detail, fix): runner.doctor makes its lines of them. Only when a
local model is configured: then torch is imported, as the workers will (it takes seconds),
and ``nvidia-smi -L`` is the fallback when torch sees no device.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

from runner.backends.local import local_models
from runner.backends.local.config import resolve_source
from runner.devices import device_list
from runner.errors import ModelNotServed
from runner.settings import Settings

Line = tuple[str, str, str, str]  # level ("ok", "warn", "FAIL"), name, detail, fix


def _nvidia_smi() -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]


def _torch_devices() -> tuple[list[str], str]:
    """(a line per CUDA device, torch's version or why it is unusable)."""
    try:
        import torch
    except Exception as exc:  # a broken install: said, not raised
        return [], f"torch does not import ({type(exc).__name__}: {exc})"
    lines = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {props.name} {props.total_memory / 2**30:.0f} GiB")
    return lines, f"torch {torch.__version__}"


def device_lines(settings: Settings) -> list[Line]:
    models = local_models(settings.models)
    if not models:
        return []  # nothing runs locally: doctor's report stays about the API
    if importlib.util.find_spec("torch") is None:
        return [
            (
                "FAIL",
                "devices",
                f"{', '.join(models)} configured but torch is not installed",
                "make install (or pip install -e '.[local]')",
            )
        ]
    gpus, version = _torch_devices()
    if not version.startswith("torch "):
        return [("FAIL", "devices", version, "pip install --force-reinstall torch")]
    if gpus:
        return [("ok", "devices", f"{version}: " + "; ".join(gpus), "")]
    smi = _nvidia_smi()
    if smi:  # the driver sees GPUs that torch does not: a CPU build of torch, most often
        return [
            (
                "FAIL",
                "devices",
                f"{version} sees no CUDA device but nvidia-smi lists " + "; ".join(smi),
                "install a CUDA build of torch (pip install torch==<version> from PyPI)",
            )
        ]
    return [("warn", "devices", f"{version} sees no CUDA device: local models run on the CPU", "")]


def model_lines(settings: Settings) -> list[Line]:
    lines: list[Line] = []
    for model in local_models(settings.models):
        spec = settings.local[model.removeprefix("local:")]
        try:
            source = resolve_source(model, spec)
        except ModelNotServed as exc:
            lines.append(("FAIL", model, str(exc).removeprefix(f"{model}: "), ""))
            continue
        on = ", ".join(device_list(spec.devices))
        lines.append(("ok", model, f"{source} on {on}, {spec.steps} steps, {spec.size}", ""))
    return lines


def local_lines(settings: Settings) -> list[Line]:
    return device_lines(settings) + model_lines(settings)


def ray_lines(address: str) -> list[Line]:
    """The Ray cluster's nodes, GPUs and CPUs (``doctor --ray``); joins it, or starts one
    for "local", and leaves it as it was."""
    try:
        import ray
    except ImportError:
        return [("FAIL", "ray", "not installed", "pip install 'ray>=2.40'")]
    started = not ray.is_initialized()
    try:
        if started:
            ray.init(
                address=None if address == "local" else address,
                include_dashboard=False,
                log_to_driver=False,
            )
        res = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    except Exception as exc:  # unreachable address, no cluster running
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [
            ("FAIL", "ray", f"{address}: {line}", "start one (ray start --head) or --ray local")
        ]
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    detail = (
        f"{address}: {nodes} node(s), {int(res.get('GPU', 0))} GPU(s), "
        f"{int(res.get('CPU', 0))} CPU(s)"
    )
    return [("ok", "ray", detail, "")]
