"""``python -m runner doctor``: is this machine ready for a run? One line per check.

    ok    key: DASHSCOPE_API_KEY is set
    FAIL  base URL: https://dashscope.aliyuncs.com/api/v1 unreachable (timeout after 3 s)
          -> check the network / proxy, or set DASHSCOPE_HTTP_BASE_URL

Checks: the API key (present or not, never shown: not even its length or tail), the base URL
(one cheap GET with a short timeout; offline it says "unreachable", it never hangs; an
answer that is not DashScope's, such as a 404 page, is red), the region and whether it
serves each configured model (and what else it serves), the settings, each model's list
price, the face-swap models folder, onnxruntime's providers, and free disk under --out.
``--live`` (runner.doctor_live) also sends one smallest request per model and the judge,
saying the cost first.
Exit status: 0 when nothing is red, 1 when any check FAILs.

The key, base URL, region and settings checks are in ``runner.doctor_checks``; the machine's
(models, onnxruntime, local devices, disk) are here.

Wiring (``runner/cli.py``): ``_extra_commands()`` returns ``{"doctor": doctor.command}`` and
``build_parser`` adds ``doctor.add_arguments(sub.add_parser("doctor", help=...))``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from runner.doctor_checks import (
    PROBE_TIMEOUT_S,
    Check,
    Level,
    check_base_url,
    check_judge,
    check_key,
    check_prices,
    check_region,
    check_settings,
)
from runner.errors import SettingsError
from runner.settings import DEFAULT_BASE_URL, Settings, load_settings

# The account-side checks live in runner.doctor_checks; they stay importable from here.
__all__ = [
    "PROBE_TIMEOUT_S",
    "Check",
    "Level",
    "add_arguments",
    "check_base_url",
    "check_disk",
    "check_judge",
    "check_key",
    "check_local",
    "check_models",
    "check_onnxruntime",
    "check_prices",
    "check_region",
    "check_settings",
    "command",
    "diagnose",
    "main",
    "run_doctor",
]

MiB = 1024 * 1024
GiB = 1024 * MiB
DISK_FAIL_BYTES = 200 * MiB  # a few hundred results at most
DISK_WARN_BYTES = 2 * GiB  # a full task list with candidates and the zip
_ORT_DISTS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-silicon",
)


# --------------------------------------------------------------------------- this machine


def check_models(settings: Settings) -> Check:
    """What the inswapper backend finds under models_dir, and what the classic one has."""
    models_dir = Path(settings.faceswap.models_dir).expanduser()
    backend = settings.faceswap.backend
    try:
        from runner.backends.faceswap.models import dlib_model_dir, find_models
    except Exception as exc:  # the face-swap stack is optional
        return Check(
            "models",
            "warn",
            f"face swap unavailable ({type(exc).__name__}: {exc})",
            "pip install -e . (insightface, onnxruntime, dlib-bin, face-recognition-models)",
        )
    found = find_models(models_dir)
    dlib_dir = dlib_model_dir()
    classic = "classic (dlib) ready" if dlib_dir is not None else "classic (dlib) models missing"
    if found.inswapper_ready:
        extra = f", enhancer {found.enhancer.name}" if found.enhancer is not None else ""
        return Check(
            "models",
            "ok",
            f"inswapper ready in {models_dir} (buffalo_l in {found.buffalo_dir}{extra}); {classic}",
        )
    fix = "put those files there (insightface's buffalo_l.zip and inswapper_128.onnx)"
    if backend == "inswapper":
        return Check("models", "FAIL", f"backend inswapper, but {found.missing_text()}", fix)
    if dlib_dir is None:
        return Check(
            "models",
            "FAIL" if backend == "classic" else "warn",
            f"{found.missing_text()}; and {classic}: deepfake rows will fail",
            fix + "; or pip install face-recognition-models dlib-bin for the classic backend",
        )
    return Check(
        "models",
        "warn",
        f"{found.missing_text()}: deepfake rows use the weaker classic (dlib) backend",
        fix,
    )


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_onnxruntime() -> Check:
    dists = {d: v for d in _ORT_DISTS if (v := _installed(d)) is not None}
    if len(dists) > 1:
        names = ", ".join(f"{d} {v}" for d, v in dists.items())
        return Check(
            "onnxruntime",
            "warn",
            f"{names} are all installed: they overwrite one another's module",
            "pip uninstall -y " + " ".join(dists) + " && pip install onnxruntime-gpu "
            "(on a GPU machine; onnxruntime otherwise)",
        )
    if importlib.util.find_spec("onnxruntime") is None:
        return Check(
            "onnxruntime",
            "warn",
            "not installed: the inswapper backend cannot run",
            "pip install onnxruntime (or onnxruntime-gpu with CUDA)",
        )
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except Exception as exc:
        return Check(
            "onnxruntime",
            "FAIL",
            f"installed but broken ({type(exc).__name__}: {exc})",
            "pip install --force-reinstall onnxruntime",
        )
    version = getattr(onnxruntime, "__version__", "?")
    gpu = [p for p in providers if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    detail = f"{version}, providers {', '.join(providers) or 'none'}"
    if not providers:
        return Check("onnxruntime", "FAIL", detail, "pip install --force-reinstall onnxruntime")
    if not gpu:
        return Check("onnxruntime", "ok", detail + " (CPU only: face swap is slower)")
    return Check("onnxruntime", "ok", detail)


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk(out_dir: Path) -> Check:
    where = _existing_parent(Path(out_dir))
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return Check("disk", "FAIL", f"cannot read free space of {where}: {exc.strerror}", "")
    free = usage.free
    text = f"{free / GiB:.1f} GiB free under {out_dir}"
    if not os.access(where, os.W_OK):
        return Check(
            "disk", "FAIL", f"{where} is not writable ({text})", "choose another --out folder"
        )
    if free < DISK_FAIL_BYTES:
        return Check(
            "disk", "FAIL", text, "free some space or choose --out on another disk (1 GiB+)"
        )
    if free < DISK_WARN_BYTES:
        return Check("disk", "warn", text, "a full run may need 1-2 GiB: free some space")
    return Check("disk", "ok", text)


# --------------------------------------------------------------------------- entry points


def run_doctor(
    settings: Settings,
    out_dir: Path,
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
    settings_files: list[Path] | None = None,
) -> list[Check]:
    """Every check, in report order. Blocking (it runs its own short event loop for the
    base-URL probe): call it from a thread inside a running loop."""
    return [
        check_key(settings),
        check_base_url(settings, timeout_s),
        check_region(settings),
        check_settings(settings, files=settings_files),
        check_prices(settings),
        check_judge(settings),
        check_models(settings),
        check_onnxruntime(),
        *check_local(settings),
        check_disk(Path(out_dir)),
    ]


def check_local(settings: Settings) -> list[Check]:
    """The devices local models would run on, and each local model's folder."""
    from runner.backends.local.checks import local_lines

    return [Check(name, level, detail, fix) for level, name, detail, fix in local_lines(settings)]


def _defaults() -> Settings:
    """Settings without any file, for the checks that still make sense when the files are
    broken (the environment's key and base URL are kept)."""
    key = os.environ.get("DASHSCOPE_API_KEY")
    base = (
        os.environ.get("DASHSCOPE_HTTP_BASE_URL")
        or os.environ.get("DASHSCOPE_BASE_URL")
        or DEFAULT_BASE_URL
    )
    return Settings.model_construct(
        api_key=SecretStr(key) if key and key.strip() else None, base_url=base
    )


def diagnose(
    settings_file: Path | None, out_dir: Path, *, timeout_s: float = PROBE_TIMEOUT_S
) -> list[Check]:
    """Load the settings as a run would, then run every check."""
    files = [p for p in (settings_file, Path("settings.toml")) if p is not None and p.is_file()]
    try:
        settings = load_settings(settings_file)
    except SettingsError as exc:
        broken = check_settings(None, str(exc))
        fallback = _defaults()
        return [
            check_key(fallback),
            check_base_url(fallback, timeout_s),
            check_region(fallback),
            broken,
            check_models(fallback),
            check_onnxruntime(),
            check_disk(Path(out_dir)),
        ]
    return run_doctor(settings, out_dir, timeout_s=timeout_s, settings_files=files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The doctor's options (the CLI's ``doctor`` sub-parser)."""
    parser.add_argument(
        "--out", type=Path, default=Path("outputs"), help="output folder to check (free disk)"
    )
    parser.add_argument("--settings", type=Path, help="a settings TOML file over ./settings.toml")
    parser.add_argument(
        "--timeout",
        type=float,
        default=PROBE_TIMEOUT_S,
        help=f"seconds to wait for the base URL (default {PROBE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="also send one smallest request per configured model and the judge (it costs "
        "money: the cost is said first) and keep what it learns in --out for the next run",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="also list a Ray cluster's nodes and devices (RAY_ADDRESS when none is given)",
    )


def command(args: argparse.Namespace, console: Any) -> int:
    """The CLI handler: ``handler(args, console) -> exit status`` (0: nothing red, 1: a FAIL).

    ``console`` is a rich Console (anything with ``print`` works)."""
    checks = diagnose(
        getattr(args, "settings", None),
        Path(getattr(args, "out", None) or "outputs"),
        timeout_s=float(getattr(args, "timeout", None) or PROBE_TIMEOUT_S),
    )
    if getattr(args, "ray", None) is not None:  # only then is ray imported
        from runner.backends.local.checks import ray_lines
        from runner.commands import ray_address

        address = ray_address(args.ray) or "auto"
        checks += [Check(n, lvl, d, f) for lvl, n, d, f in ray_lines(address)]
    styles = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}

    def say(line: str, level: Level | None = None) -> None:
        try:
            style = styles[level] if level else None
            console.print(line, style=style, highlight=False, markup=False)
        except TypeError:  # a plain printer
            console.print(line)

    for check in checks:
        say(check.line(), check.level)
    if getattr(args, "live", False):
        live = _live(args, say)
        for check in live:
            say(check.line(), check.level)
        checks += live
    failed = [c for c in checks if not c.ok]
    say(f"{len(failed)} check(s) FAILED: fix those first" if failed else "ready to run")
    return 1 if failed else 0


def _live(args: argparse.Namespace, say: Any) -> list[Check]:
    """``--live``: runner.doctor_live, with the settings a run would use."""
    from runner.doctor_live import live_checks

    try:
        settings = load_settings(getattr(args, "settings", None))
    except SettingsError as exc:
        return [Check("live", "FAIL", f"not run: {exc}", "fix the settings first")]
    return live_checks(settings, Path(getattr(args, "out", None) or "outputs"), say)


class _Plain:
    def print(self, text: str, **_: Any) -> None:
        print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m runner.doctor [--out DIR] [--settings FILE] [--timeout S]``."""
    parser = argparse.ArgumentParser(prog="python -m runner doctor", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return command(args, _Plain())


if __name__ == "__main__":
    sys.exit(main())
