"""`python -m runner doctor`: one line per check, what to do when red, never the key."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import doctor
from runner.doctor import (
    Check,
    check_base_url,
    check_disk,
    check_models,
    check_onnxruntime,
    check_region,
)
from runner.emulator import EmulatorConfig, EmulatorThread
from runner.errors import SettingsError
from runner.settings import Settings, load_settings

NAMES = [
    "key",
    "base URL",
    "region",
    "settings",
    "prices",
    "judge",
    "models",
    "onnxruntime",
    "disk",
]
# broken settings: the checks that need them are left out
FALLBACK_NAMES = ["key", "base URL", "region", "settings", "models", "onnxruntime", "disk"]


pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig(time_scale=0.01)) as emu:
        yield emu


def _key() -> str:
    return "sk-" + secrets.token_hex(16)


def _assert_hides(text: str, key: str) -> None:
    assert key not in text
    assert key[-4:] not in text and key[3:11] not in text  # not even a part of it
    assert f"{len(key)} char" not in text  # nor its length


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_line_format() -> None:
    assert Check("disk", "ok", "9.0 GiB free", "never shown").line() == "ok    disk: 9.0 GiB free"
    line = Check("key", "FAIL", "not set", "export DASHSCOPE_API_KEY=...").line()
    assert line == "FAIL  key: not set -> export DASHSCOPE_API_KEY=..."


def test_every_check_one_line_and_the_key_is_only_said_to_be_set(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    key = _key()
    settings = load_settings(api_key=key, base_url=emulator.base_url)
    checks = doctor.run_doctor(settings, tmp_path / "out", timeout_s=2)
    assert [c.name for c in checks] == NAMES
    text = "\n".join(c.line() for c in checks)
    assert len(text.splitlines()) == len(NAMES)
    _assert_hides(text, key)
    by = {c.name: c for c in checks}
    assert by["key"].level == "ok" and by["key"].detail == "set (DASHSCOPE_API_KEY)"
    assert by["base URL"].level == "ok" and "key accepted" in by["base URL"].detail
    assert by["settings"].level == "ok"
    assert by["disk"].level == "ok" and "GiB free" in by["disk"].detail


def test_no_key_is_a_warning_with_what_to_do(tmp_path: Path) -> None:
    check = doctor.check_key(load_settings())
    assert check.level == "warn" and "emulator" in check.detail
    assert "DASHSCOPE_API_KEY" in check.fix


def test_key_from_a_file_and_an_unreadable_key_file(tmp_path: Path) -> None:
    key = _key()
    (tmp_path / "k").write_text(key + "\n")
    ok = doctor.check_key(load_settings(api_key_file=tmp_path / "k"))
    assert ok.level == "ok" and "api_key_file" in ok.detail
    _assert_hides(ok.line(), key)
    bad = doctor.check_key(load_settings(api_key_file=tmp_path / "nope"))
    assert bad.level == "FAIL" and "nope" in bad.detail


def test_a_refused_key_is_red(tmp_path: Path) -> None:
    with EmulatorThread(EmulatorConfig(api_keys=frozenset({"sk-the-only-good-one"}))) as emu:
        key = _key()
        check = check_base_url(load_settings(api_key=key, base_url=emu.base_url), 2)
    assert check.level == "FAIL" and "refuses the key" in check.detail
    assert "DASHSCOPE_API_KEY" in check.fix
    _assert_hides(check.line(), key)


def test_unreachable_base_url_says_so_fast() -> None:
    key = _key()
    t0 = time.monotonic()
    check = check_base_url(
        load_settings(api_key=key, base_url=f"http://127.0.0.1:{_closed_port()}/api/v1"), 2
    )
    assert time.monotonic() - t0 < 3
    assert check.level == "FAIL" and "unreachable" in check.detail and check.fix
    # without a key the base URL is not needed now: only a warning
    check = check_base_url(load_settings(base_url=f"http://127.0.0.1:{_closed_port()}/v1"), 2)
    assert check.level == "warn" and "unreachable" in check.detail


def test_a_server_that_never_answers_does_not_hang_the_doctor() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        t0 = time.monotonic()
        check = check_base_url(
            load_settings(api_key=_key(), base_url=f"http://127.0.0.1:{port}/api/v1"), 0.5
        )
        took = time.monotonic() - t0
    assert took < 2.5
    assert check.level == "FAIL" and "no answer within 0.5 s" in check.detail


def test_a_base_url_that_is_not_an_api_root_is_red(emulator: EmulatorThread) -> None:
    # The emulator's root without /api/v1 answers a task query with a 404 page.
    check = check_base_url(load_settings(api_key=_key(), base_url=emulator.root_url), 2)
    assert check.level == "FAIL" and "not a DashScope API root" in check.detail
    assert "/api/v1" in check.fix
    check = check_base_url(load_settings(base_url=emulator.base_url), 2)  # no key: 401
    assert check.level == "ok" and "HTTP 401" in check.detail


def test_region_and_the_models_it_serves() -> None:
    cn = check_region(load_settings())
    assert cn.level == "ok" and cn.detail.startswith("cn (Beijing)")
    assert "wanx2.1-imageedit" in cn.detail
    intl = check_region(load_settings(base_url="https://dashscope-intl.aliyuncs.com/api/v1"))
    assert intl.level == "ok" and intl.detail.startswith("intl (Singapore)")
    assert "wan2.1-t2i-turbo" in intl.detail
    mixed = check_region(
        load_settings(
            region="intl",
            models={"t2i": ["wanx2.1-t2i-turbo", "wan2.1-t2i-turbo"], "tie": ["qwen-image-edit"]},
        )
    )
    assert mixed.level == "warn" and "wanx2.1-t2i-turbo (t2i) is not served in intl" in mixed.detail
    none = check_region(load_settings(region="intl", models={"tie": ["wanx2.1-imageedit"]}))
    assert none.level == "FAIL" and "no tie model is served in intl" in none.detail and none.fix
    crossed = check_region(
        load_settings(region="cn", base_url="https://dashscope-intl.aliyuncs.com/api/v1")
    )
    assert crossed.level == "FAIL" and "is in intl" in crossed.detail
    guessed = check_region(load_settings(models={"tie": ["qwen-image-edit-plus-2026-06-01"]}))
    assert guessed.level == "ok" and "not in the reference" in guessed.detail


def test_not_an_http_base_url_is_red() -> None:
    # The settings refuse such a URL themselves; the doctor's own check still holds when
    # they are bypassed (the fallback settings after a broken file are not validated).
    with pytest.raises(SettingsError):
        load_settings(base_url="ftp://example.org/api/v1")
    check = check_base_url(Settings.model_construct(base_url="ftp://example.org/api/v1"), 1)
    assert check.level == "FAIL" and "not an http(s) URL" in check.detail


def test_broken_settings_are_one_red_line_and_the_rest_still_runs(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("concurrency = -1\n")
    checks = doctor.diagnose(None, tmp_path / "out", timeout_s=0.5)
    assert [c.name for c in checks] == FALLBACK_NAMES
    by = {c.name: c for c in checks}
    assert by["settings"].level == "FAIL" and "concurrency" in by["settings"].detail
    assert by["settings"].fix
    assert by["disk"].level in ("ok", "warn")


def test_settings_over_the_account_limits_warn(tmp_path: Path) -> None:
    check = doctor.check_settings(load_settings(poll_qps=50))
    assert check.level == "warn" and "poll_qps 50" in check.detail and check.fix


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"onnx")


def test_models_folder(tmp_path: Path) -> None:
    models = tmp_path / "models"
    missing = check_models(load_settings(faceswap={"models_dir": models}))
    assert missing.level in ("warn", "FAIL")
    assert "inswapper_128.onnx" in missing.detail and "det_10g.onnx" in missing.detail
    assert missing.fix
    strict = check_models(load_settings(faceswap={"models_dir": models, "backend": "inswapper"}))
    assert strict.level == "FAIL"
    for name in ("det_10g.onnx", "w600k_r50.onnx"):
        _touch(models / "buffalo_l" / name)
    _touch(models / "inswapper_128.onnx")
    ready = check_models(load_settings(faceswap={"models_dir": models}))
    assert ready.level == "ok" and "inswapper ready" in ready.detail


def test_onnxruntime_providers_and_two_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    check = check_onnxruntime()
    pytest.importorskip("onnxruntime")
    assert check.level == "ok" and "CPUExecutionProvider" in check.detail
    versions = {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.0"}
    monkeypatch.setattr(doctor, "_installed", versions.get)
    both = check_onnxruntime()
    assert both.level == "warn" and "onnxruntime-gpu" in both.detail
    assert "pip uninstall" in both.fix


@pytest.mark.parametrize(
    ("free", "level"), [(50 * 1024**3, "ok"), (1 * 1024**3, "warn"), (10 * 1024**2, "FAIL")]
)
def test_free_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int, level: str) -> None:
    monkeypatch.setattr(
        doctor.shutil, "disk_usage", lambda p: SimpleNamespace(total=free * 2, used=free, free=free)
    )
    check = check_disk(tmp_path / "not" / "made" / "yet")
    assert check.level == level
    assert (check.fix != "") == (level != "ok")
    assert not (tmp_path / "not").exists()  # the doctor creates nothing


def test_handler_prints_one_line_each_and_exit_status(
    emulator: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _key()
    monkeypatch.setenv("DASHSCOPE_API_KEY", key)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", emulator.base_url)
    printed: list[str] = []
    console = SimpleNamespace(print=lambda text, **kw: printed.append(text))
    args = SimpleNamespace(out=tmp_path / "out", settings=None, timeout=2.0)
    code = doctor.command(args, console)
    assert len(printed) == len(NAMES) + 1
    assert code == 0 and printed[-1] == "ready to run"  # warnings (no face-swap models) only
    _assert_hides("\n".join(printed), key)
    # a red check makes the exit status 1
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", f"http://127.0.0.1:{_closed_port()}/api/v1")
    printed.clear()
    assert doctor.command(args, console) == 1
    assert printed[1].startswith("FAIL  base URL:") and " -> " in printed[1]


def test_as_a_process(tmp_path: Path) -> None:
    key = _key()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "DASHSCOPE_"))}
    env.update(
        DASHSCOPE_API_KEY=key,
        DASHSCOPE_HTTP_BASE_URL=f"http://127.0.0.1:{_closed_port()}/api/v1",
    )
    res = subprocess.run(
        [sys.executable, "-m", "runner.doctor", "--out", str(tmp_path / "o"), "--timeout", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 1 and len(lines) == len(NAMES) + 1, res.stdout + res.stderr
    assert [line.split(":")[0].split(maxsplit=1)[1] for line in lines[:-1]] == NAMES
    assert all(line.split()[0] in ("ok", "warn", "FAIL") for line in lines[:-1])
    assert "Traceback" not in res.stdout + res.stderr
    _assert_hides(res.stdout + res.stderr, key)


def test_wired_into_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner import cli

    if "doctor" not in cli._extra_commands():
        pytest.skip("`python -m runner doctor` is not wired into runner/cli.py yet")
    key = _key()
    monkeypatch.setenv("DASHSCOPE_API_KEY", key)
    code = cli.main(["doctor", "--out", str(tmp_path / "o"), "--timeout", "0.5"])
    out = capsys.readouterr().out
    assert code in (0, 1)
    assert [line.split()[0] for line in out.strip().splitlines()[:-1]] and "key: set" in out
    _assert_hides(out, key)


# --------------------------------------------------------------------------- --live


def test_live_says_the_cost_first_and_learns_per_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.emulator.config import default_models
    from runner.scheduling.learned import load_learned

    # qwen-image-plus is served async only on this account: its sync call is refused and
    # the request is sent the other way, as a run does
    models = default_models()
    models["qwen-image-plus"] = models["qwen-image-plus"].model_copy(
        update={"endpoints": frozenset({"text2image"})}
    )
    (tmp_path / "live.toml").write_text(
        '[models]\nt2i = ["qwen-image-plus", "wan2.2-t2i-flash", "no-such-model"]\n'
        'tie = ["qwen-image-edit-plus"]\nvttie = ["qwen-image-edit-plus"]\n'
    )
    key = _key()
    with EmulatorThread(EmulatorConfig(time_scale=0.01, models=models)) as emu:
        monkeypatch.setenv("DASHSCOPE_API_KEY", key)
        monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", emu.base_url)
        printed: list[str] = []
        console = SimpleNamespace(print=lambda text, **kw: printed.append(text))
        out = tmp_path / "out"
        args = SimpleNamespace(out=out, settings=tmp_path / "live.toml", timeout=2.0, live=True)
        code = doctor.command(args, console)
        billed = [b["model"] for b in emu.billed()]
    text = "\n".join(printed)
    _assert_hides(text, key)
    cost = next(i for i, line in enumerate(printed) if line.startswith("doctor --live:"))
    live = {line.split(":")[0].split()[-1]: line for line in printed if " live " in line}
    assert cost < min(printed.index(line) for line in live.values())  # the cost first
    assert "4 request(s)" in printed[cost] and "0.40 CNY" in printed[cost]  # 0.2 + 0.2
    assert "no-such-model" in printed[cost] and "wan2.2-t2i-flash" in printed[cost]  # no price
    assert live["qwen-image-plus"].startswith("ok") and "served async" in live["qwen-image-plus"]
    assert "the table's route was refused" in live["qwen-image-plus"]
    assert (
        "served async" in live["wan2.2-t2i-flash"] and "served sync" in live["qwen-image-edit-plus"]
    )
    assert live["no-such-model"].startswith("FAIL") and "not served" in live["no-such-model"]
    assert "served" in live["qwen-vl-max"]
    assert code == 1  # a configured model is not served
    assert sorted(billed) == ["qwen-image-edit-plus", "qwen-image-plus", "wan2.2-t2i-flash"]
    # what it learned is where the next run in that folder reads it
    checks = load_learned(out / "learned_quotas.json").checks
    assert checks["qwen-image-plus"].route == "async" and checks["qwen-image-plus"].served
    assert checks["qwen-image-edit-plus"].latency_s is not None
    assert not checks["no-such-model"].served


def test_live_needs_a_key(tmp_path: Path) -> None:
    printed: list[str] = []
    console = SimpleNamespace(print=lambda text, **kw: printed.append(text))
    args = SimpleNamespace(out=tmp_path / "o", settings=None, timeout=0.5, live=True)
    assert doctor.command(args, console) == 1
    assert any(line.startswith("FAIL  live: needs DASHSCOPE_API_KEY") for line in printed)
    assert not (tmp_path / "o").exists()
