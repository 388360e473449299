"""Secrets and safety: the key never lands anywhere, only what should be read is read.

- The API key comes from DASHSCOPE_API_KEY or the file ``api_key_file`` names, never from the
  task list; it is in no file a run writes (journal, run.log, summary.json, failed.csv,
  report.html, thumbnails, images, the zip), in no console output, traceback or exception
  message; nor is ``Bearer``. Runs against a separate emulator process that accepts only that
  key, with faults, a wrong key, and a key revoked in the middle of the run.
- Only http(s) result URLs are fetched; nothing outside --images is ever opened (an audit hook
  sees every open of the process); output names come from the index alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import traceback
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import emulator_process, make_image, write_tasks
from http_fakes import FakeTransport

from runner import run_all
from runner.backends.dashscope import ClientConfig, DashScopeClient
from runner.errors import DashScopeError, RowFailed, SettingsError
from runner.settings import Settings, load_settings

# "Bearer" followed by anything but a redaction mark (an echoed header the client redacted
# reads "Bearer ***" / "Bearer [redacted]": no secret left, only the word)
BEARER = re.compile(rb"bearer(?!\s*(\*\*\*|\[redacted\]))", re.I)


pytestmark = pytest.mark.usefixtures("clean_env")


def new_key() -> str:
    return "sk-" + secrets.token_hex(16)


def leaks(blob: bytes, key: str) -> list[str]:
    """What of the key (or an Authorization header) is in ``blob``."""
    found = []
    raw = key.encode()
    if raw in blob:
        found.append("the key")
    if raw[3:19] in blob:  # a part of it, e.g. cut by a renderer
        found.append("a part of the key")
    if BEARER.search(blob):
        found.append("Bearer")
    return found


def scan_tree(root: Path, key: str) -> dict[str, list[str]]:
    """Every file under ``root`` (binary included), by relative path -> what leaked."""
    bad: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            hit = leaks(path.read_bytes(), key)
            if hit:
                bad[str(path.relative_to(root))] = hit
    return bad


def test_the_scanner_finds_what_it_looks_for(tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "log.jsonl").write_text(f'{{"auth": "Bearer {key}"}}')
    (tmp_path / "cut.bin").write_bytes(b"\x00" + key[:20].encode() + b"\xff")
    (tmp_path / "clean.txt").write_text("Authorization: Bearer *** and Bearer [redacted]")
    assert scan_tree(tmp_path, key) == {
        "a/log.jsonl": ["the key", "a part of the key", "Bearer"],
        "cut.bin": ["a part of the key"],
    }


# --------------------------------------------------------------------------- a real process


def _admin(port: int, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/_emulator/{path}",
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def key() -> str:
    return new_key()


@pytest.fixture
def emulator_port(key: str) -> Iterator[int]:
    """An emulator process that accepts only ``key``."""
    with emulator_process("--time-scale", "0.01", "--api-key", key) as port:
        yield port


@pytest.mark.slow
def test_the_key_is_in_no_output_of_any_run(tmp_path: Path, key: str, emulator_port: int) -> None:
    port = emulator_port
    imgs = tmp_path / "imgs"
    rows = [(str(i), "t2i", f"a paper boat number {i}", "", "") for i in range(1, 17)]
    rows += [(str(i), "tie", "make the sky purple", f"s{i}.png", "") for i in range(17, 20)]
    rows += [(str(i), "vttie", "change OPEN to SHUT", f"s{i}.png", "") for i in range(20, 22)]
    rows += [("22", "tie", "edit", "missing.png", "")]  # a bad row: its line must be clean too
    for _, _, _, name, _ in rows[16:21]:
        make_image(imgs / name, (520, 520))
    tasks = write_tasks(tmp_path / "task.csv", rows)
    out = tmp_path / "out"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "DASHSCOPE"))}
    env = {
        **base_env,
        "DASHSCOPE_API_KEY": key,
        "DASHSCOPE_HTTP_BASE_URL": f"http://127.0.0.1:{port}/api/v1",
        "RUNNER_POLL_FIRST_S": "0.03",
        "RUNNER_BACKOFF_MAX_S": "0.2",
        "RUNNER_SIZE": "512*512",
        "RUNNER_JUDGE__REQUESTS_PER_MINUTE": "6000",  # the judge sends the key too: keep it on
    }
    outputs: list[tuple[str, str]] = []

    def runner(*args: str, run_env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "runner", *args],
            env=run_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        outputs.append((" ".join(args[:1]), res.stdout + res.stderr))
        return res

    run = ["--tasks", str(tasks), "--out", str(out), "-v"]
    # 1. a wrong key: refused at once, the run stops (exit 3)
    wrong = new_key()
    res = runner(*run, run_env={**env, "DASHSCOPE_API_KEY": wrong})
    assert res.returncode == 3, res.stdout + res.stderr
    assert "InvalidApiKey" in res.stdout + res.stderr
    # 2. the right key, with faults whose answers are errors, and the key revoked mid-run
    _admin(
        port,
        "faults",
        {
            "internal_error": {"every_n": 7},
            "rate_limit_retry_after": {"at": [3]},
            "task_failed": {"every_n": 5},
            "url_not_found": {"at": [2]},
            "html_body": {"at": [4]},
            "connection_reset": {"at": [9]},
            "invalidate_key_after": 30,
        },
    )
    res = runner(*run)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "InvalidApiKey" in res.stdout + res.stderr
    injected = _admin(port, "stats")["faults_injected"]
    assert len(injected) >= 4, injected
    # 3. the key works again: the same command finishes
    _admin(port, "faults", {})
    res = runner(*run)
    assert res.returncode == 1, res.stdout + res.stderr  # row 22 has no source
    assert (out / "imgs" / "21.jpg").is_file()
    # 4. the zip (run_all wrote report.html and its thumbnails already)
    assert runner("submit", "--tasks", str(tasks), "--out", str(out), "--team", "t").returncode == 0

    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    for expected in ("journal.jsonl", "run.log", "summary.json", "failed.csv", "report.html"):
        assert expected in written
    assert "imgs/1.jpg" in written and any(p.endswith(".zip") for p in written)
    assert scan_tree(out, key) == {}
    assert scan_tree(out, wrong) == {}
    for what, text in outputs:
        assert leaks(text.encode(), key) == [], what
        assert leaks(text.encode(), wrong) == [], what


# --------------------------------------------------------------------------- echoing servers

BASE = "https://dashscope.test/api/v1"
T2I_URL = f"{BASE}/services/aigc/text2image/image-synthesis"


async def test_a_server_echoing_the_key_does_not_make_it_leak(tmp_path: Path) -> None:
    """Error answers that quote the key and the Authorization header: the row's reason, the
    stop reason, every file and every log line stay clean."""
    key = new_key()
    echo = f"request with key {key} and header 'Authorization: Bearer {key}' refused"
    tasks = write_tasks(
        tmp_path / "task.csv", [("1", "t2i", "a cat", "", ""), ("2", "t2i", "a dog", "", "")]
    )
    with FakeTransport() as m:
        m.post(T2I_URL, status=400, payload={"code": "InvalidParameter", "message": echo})
        m.post(T2I_URL, payload={"output": {"task_id": "t-2", "task_status": "PENDING"}})
        m.get(
            f"{BASE}/tasks/t-2",
            status=401,
            payload={"code": "InvalidApiKey", "message": echo},
            repeat=True,
        )
        settings = load_settings(
            api_key=key,
            base_url=BASE,
            poll_first_s=0.01,
            judge={"enabled": False},
            models={"t2i": ["wanx2.1-t2i-turbo"]},
            quotas={"wanx2.1-t2i-turbo": {"submits_per_second": 100, "in_flight": 1}},
        )
        summary = await run_all(tasks, out=tmp_path / "out", settings=settings)
    assert summary.exit_code == 3  # the 401 stopped the run
    assert [r.status for r in summary.rows] == ["failed", "stopped"]
    assert "InvalidParameter" in (summary.rows[0].reason or "")
    text = json.dumps(summary.model_dump(mode="json"))
    assert leaks(text.encode(), key) == []
    assert scan_tree(tmp_path / "out", key) == {}


async def test_exceptions_and_tracebacks_hold_no_key() -> None:
    key = new_key()
    echo = f"bad key {key}; Authorization: Bearer {key}"
    cfg = ClientConfig(base_url=BASE, api_key=key, max_retries=0)
    m = FakeTransport()
    async with DashScopeClient(cfg, transport=m) as client:
        for status, code in ((401, "InvalidApiKey"), (400, "InvalidParameter"), (500, "")):
            m.post(T2I_URL, status=status, payload={"code": code, "message": echo})
            with pytest.raises(DashScopeError) as info:
                await client.submit_text2image("wanx2.1-t2i-turbo", "a cat")
            exc = info.value
            shown = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
            shown += repr(vars(exc))
            assert leaks(shown.encode(), key) == [], (status, shown)
        assert key not in repr(client) and key not in repr(cfg) and key not in str(cfg)


def test_settings_never_show_the_key(tmp_path: Path) -> None:
    key = new_key()
    s = load_settings(api_key=key)
    for shown in (repr(s), str(s), s.model_dump_json(), json.dumps(s.model_dump(mode="json"))):
        assert key not in shown
    # a key file that cannot be read is named in one line
    s = load_settings(api_key_file=tmp_path / "missing-key.txt")
    with pytest.raises(SettingsError) as info:
        s.key()
    assert "missing-key.txt" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- where the key is


async def test_key_from_the_file_the_settings_name(tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "dashscope.key").write_text(key + "\n")
    (tmp_path / "settings.toml").write_text('api_key_file = "secret/dashscope.key"\n')
    s = load_settings()
    assert s.key() == key and not s.emulated
    assert key not in repr(s)


async def test_the_key_is_never_read_from_the_task_list(tmp_path: Path) -> None:
    key = new_key()
    rows = [("1", "t2i", f"a cat {key}", "", "", key)]
    tasks = write_tasks(
        tmp_path / "task.csv",
        rows,
        header=["index", "task_type", "prompt", "ori_image", "target_image", "api_key"],
    )
    settings = load_settings(
        poll_first_s=0.02, judge={"enabled": False}, emulator={"time_scale": 0.005}
    )
    summary = await run_all(tasks, out=tmp_path / "out", settings=settings)
    assert summary.emulated and summary.exit_code == 0  # no key: the embedded emulator


def test_a_key_in_a_settings_file_is_refused(tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / "settings.toml").write_text(f'api_key = "{key}"\n')
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert key not in str(info.value) and "DASHSCOPE_API_KEY" in str(info.value)


# --------------------------------------------------------------------------- what is fetched


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://oss.test/r/1.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "//oss.test/r/1.png",
        "oss://bucket/r/1.png",
    ],
)
async def test_only_http_result_urls_are_fetched(tmp_path: Path, url: str) -> None:
    """A result URL that is not http(s) fails the row with its reason; nothing is fetched."""
    tasks = write_tasks(tmp_path / "task.csv", [("1", "t2i", "a cat", "", "")])
    with FakeTransport() as m:
        m.post(T2I_URL, payload={"output": {"task_id": "t-1", "task_status": "PENDING"}})
        m.get(
            f"{BASE}/tasks/t-1",
            payload={
                "output": {"task_id": "t-1", "task_status": "SUCCEEDED", "results": [{"url": url}]}
            },
        )
        settings = load_settings(
            api_key=new_key(),
            base_url=BASE,
            poll_first_s=0.01,
            judge={"enabled": False},
            models={"t2i": ["wanx2.1-t2i-turbo"]},
        )
        summary = await run_all(tasks, out=tmp_path / "out", settings=settings)
        fetched = [r.url for r in m.requests if r.method == "GET"]
    (row,) = summary.rows
    assert row.status == "failed" and "non-http(s) URL" in (row.reason or ""), row.reason
    assert fetched == [f"{BASE}/tasks/t-1"]  # the poll only


async def test_download_refuses_non_http_without_io() -> None:
    cfg = ClientConfig(base_url=BASE, api_key=new_key())
    async with DashScopeClient(cfg) as client:
        for url in ("file:///etc/passwd", "ftp://x/y.png", "data:image/png;base64,AAAA"):
            with pytest.raises(RowFailed, match="non-http"):
                await client.download(url)


class _Opens:
    """Every file the process opens while ``on`` (sys.audit 'open': builtins, os.open, PIL,
    aiofiles' threads alike). Audit hooks cannot be removed, so this one stays dormant."""

    def __init__(self) -> None:
        self.on = False
        self.paths: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.on and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            self.paths.append(os.fsdecode(args[0]))


_OPENS = _Opens()
sys.addaudithook(_OPENS)


async def test_nothing_outside_images_is_ever_opened(tmp_path: Path) -> None:
    job = tmp_path / "job"
    imgs = job / "imgs"
    make_image(imgs / "ok.png", (520, 520))
    secret_dir = tmp_path / "private"
    secret = make_image(secret_dir / "secret.png", (520, 520))
    other = make_image(job / "beside.png", (520, 520))  # next to the folder, not in it
    (imgs / "link.png").symlink_to(secret)
    (imgs / "dirlink").symlink_to(secret_dir, target_is_directory=True)
    rows = [
        ("1", "tie", "edit", "ok.png", ""),
        ("2", "tie", "edit", "../beside.png", ""),
        ("3", "tie", "edit", str(secret), ""),
        ("4", "tie", "edit", "link.png", ""),
        ("5", "tie", "edit", "dirlink/secret.png", ""),
        ("6", "vttie", "edit", "../../private/secret.png", ""),
        ("7", "deepfake", "", "ok.png", "link.png"),
        ("8", "tie", "edit", "imgs/../../beside.png", ""),
    ]
    tasks = write_tasks(job / "task.csv", rows)
    settings = load_settings(
        poll_first_s=0.02, judge={"enabled": False}, emulator={"time_scale": 0.005}
    )
    _OPENS.paths.clear()
    _OPENS.on = True
    try:
        summary = await run_all(tasks, images=imgs, out=tmp_path / "out", settings=settings)
        from runner.outputs.submit import pack

        pack(tmp_path / "out", "team", tasks=tasks, images=imgs, allow_emulated=True)
    finally:
        _OPENS.on = False
    assert [r.status for r in summary.rows] == ["done"] + ["bad"] * 7
    real = os.path.realpath  # blocking, but on a handful of names after the run
    forbidden = {real(secret), real(other)}
    opened = {real(p) for p in _OPENS.paths}
    assert not opened & forbidden
    assert real(imgs / "ok.png") in opened  # the hook does see the reads


async def test_output_names_come_from_the_index_alone(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    make_image(imgs / "..evil.png", (520, 520))
    rows = [
        ("0007", "t2i", "../../../tmp/owned.jpg", "", ""),
        ("8", "tie", "imgs/../x.jpg", "..evil.png", ""),
        ("9", "t2i", "name it /etc/cron.d/x", "", ""),
    ]
    tasks = write_tasks(tmp_path / "task.csv", rows)
    settings = load_settings(
        poll_first_s=0.02, judge={"enabled": False}, emulator={"time_scale": 0.005}
    )
    out = tmp_path / "out"
    summary = await run_all(tasks, out=out, settings=settings)
    assert summary.exit_code == 0
    assert sorted(p.name for p in (out / "imgs").iterdir()) == ["7.jpg", "8.jpg", "9.jpg"]
    root = out.resolve()
    for p in out.rglob("*"):
        assert p.resolve().is_relative_to(root), p  # every file the run made is inside --out
    # results are named by the index alone (input thumbnails of the report keep a sanitized
    # input name, inside --out)
    assert not (out / "candidates").exists() or all(
        re.fullmatch(r"\d+/\d+\.jpg", str(p.relative_to(out / "candidates")))
        for p in (out / "candidates").rglob("*.jpg")
    )
    assert not (tmp_path.parent / "owned.jpg").exists()


def test_settings_object_is_the_only_key_holder(tmp_path: Path) -> None:
    """A key given to Settings is a SecretStr: its dump, repr and errors hide it."""
    key = new_key()
    s = Settings(api_key=key)
    assert s.api_key is not None and s.api_key.get_secret_value() == key
    assert "**********" in repr(s.api_key)
