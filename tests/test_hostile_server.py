"""A hostile server: it speaks enough of DashScope's async protocol to be believed, and echoes
the key it was sent into every text it answers with (a submit's error, a FAILED task's
message, ``actual_prompt``, a partial result's failed item, a 429, a result URL's query).
The key must reach none of the files a run writes, nor the console of the CLI. A result that
is a decompression bomb fails its row, refused from its header."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import write_tasks
from PIL import Image

from runner.logs import REDACTED, scrub_text, scrub_value
from tests.image_helpers import png_bomb

# the bomb is refused by runner.images from its header; Pillow's own warning is noise here
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
KEY = "sk-" + "5e" * 16
# "Bearer" followed by anything but a redaction mark
BEARER = re.compile(r"bearer(?!\s*(\*\*\*|\[redacted\]))", re.I)
MODEL = "wanx2.1-t2i-turbo"


def _echo(where: str) -> str:
    return f"{where}: your key {KEY} (Authorization: Bearer {KEY}) is not allowed here"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1024, 1024), (90, 140, 200)).save(buf, "PNG")
    return buf.getvalue()


class HostileServer:
    """Rows are steered by a word in their prompt; every answer quotes the key."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.tasks: dict[str, str] = {}  # task id -> behaviour
        self.throttled = False
        self.seen: list[str] = []  # behaviours actually exercised
        self.port = 0
        self.png = _png()
        # 15000x15000: 1 MB on the wire, 225 Mpx (900 MB as RGBX) once decoded
        self.bomb = png_bomb(Path(tempfile.mkdtemp()) / "bomb.png", 15000).read_bytes()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/services/aigc/text2image/image-synthesis", self.submit)
        app.router.add_get("/api/v1/tasks/{task_id}", self.poll)
        app.router.add_get("/files/{name}", self.file)
        return app

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {KEY}"

    async def submit(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": "InvalidApiKey", "message": "no"}, status=401)
        body = await request.json()
        prompt = body["input"]["prompt"]
        behaviour = next(
            (b for b in ("submit400", "failed", "extended", "partial", "throttled", "bomb")
             if b in prompt),
            "extended",
        )
        if behaviour == "submit400":
            self.seen.append("400 on submit, key in message")
            return web.json_response(
                {"code": "InvalidParameter", "message": _echo("submit"), "request_id": KEY},
                status=400,
            )
        if behaviour == "throttled" and not self.throttled:
            self.throttled = True
            self.seen.append("429 with the key in its message")
            return web.json_response(
                {"code": "Throttling.RateQuota", "message": _echo("429")},
                status=429,
                headers={"Retry-After": "0"},
            )
        task_id = f"t-{next(self.ids)}"
        self.tasks[task_id] = behaviour
        return web.json_response(
            {"output": {"task_id": task_id, "task_status": "PENDING"}, "request_id": "r"}
        )

    async def poll(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": "InvalidApiKey", "message": "no"}, status=401)
        task_id = request.match_info["task_id"]
        behaviour = self.tasks.get(task_id)
        if behaviour is None:
            return web.json_response({"output": {"task_id": task_id, "task_status": "UNKNOWN"}})
        out: dict[str, Any] = {"task_id": task_id}
        url = f"http://127.0.0.1:{self.port}/files/{task_id}.png?Signature={KEY}&Expires=9"
        if behaviour == "bomb":
            self.seen.append("a decompression bomb as the result image")
            out |= {
                "task_status": "SUCCEEDED",
                "results": [{"url": f"http://127.0.0.1:{self.port}/files/bomb.png"}],
            }
        elif behaviour == "failed":
            self.seen.append("FAILED task, key in message")
            out |= {"task_status": "FAILED", "code": "InvalidParameter",
                    "message": _echo("task")}
        elif behaviour == "partial":
            self.seen.append("partial success, key in the failed item")
            out |= {
                "task_status": "SUCCEEDED",
                "results": [
                    {"url": url, "actual_prompt": _echo("actual_prompt")},
                    {"code": "InternalError.Timeout", "message": _echo("item")},
                ],
            }
        else:
            self.seen.append("actual_prompt and result URL carrying the key")
            out |= {
                "task_status": "SUCCEEDED",
                "results": [{"url": url, "actual_prompt": _echo("actual_prompt")}],
            }
        return web.json_response({"request_id": KEY, "output": out, "usage": {"image_count": 1}})

    async def file(self, request: web.Request) -> web.Response:
        if request.match_info["name"] == "bomb.png":
            return web.Response(body=self.bomb, content_type="image/png")
        return web.Response(body=self.png, content_type="image/png")


ROWS = [
    ("1", "t2i", "a boat submit400", "", ""),
    ("2", "t2i", "a boat failed", "", ""),
    ("3", "t2i", "a boat extended", "", ""),
    ("4", "t2i", "a boat partial", "", ""),
    ("5", "t2i", "a boat throttled", "", ""),
    ("6", "t2i", "a boat bomb", "", ""),
]
SETTINGS = f"""
poll_first_s = 0.02
backoff_max_s = 0.05
max_attempts = 2
[judge]
enabled = false
[models]
t2i = ["{MODEL}"]
[quotas."{MODEL}"]
submits_per_second = 50
in_flight = 5
"""


def _leaks(text: str) -> list[str]:
    found = []
    if KEY in text:
        found.append("the key")
    if KEY[3:19] in text:
        found.append("a part of the key")
    if BEARER.search(text):
        found.append("Bearer")
    return found


class Run:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "out"
        self.cli_out = root / "cli-out"
        self.summary: Any = None
        self.console = ""
        self.cli_rc: int | None = None
        self.seen: list[str] = []


async def _run(root: Path) -> Run:
    from runner.job import run_all

    result = Run(root)
    server = HostileServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    env = {
        "DASHSCOPE_API_KEY": KEY,
        "DASHSCOPE_HTTP_BASE_URL": f"http://127.0.0.1:{server.port}/api/v1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        tasks = write_tasks(root / "task.csv", ROWS)
        result.summary = await run_all(tasks, out=result.out, progress=False)
        server.throttled = False  # the CLI run meets the 429 too
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runner", "--tasks", str(tasks), "--out",
            str(result.cli_out), "-v",
            cwd=root,
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), 180)
        result.console = stdout.decode("utf-8", "replace")
        result.cli_rc = proc.returncode
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        await runner.cleanup()
    result.seen = sorted(set(server.seen))
    return result


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "settings.toml").write_text(SETTINGS)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield asyncio.run(_run(root))
    finally:
        os.chdir(cwd)


def test_the_hostile_server_was_believed(hostile_run: Run) -> None:
    """Every behaviour was exercised and the rows ended as the protocol says."""
    assert hostile_run.seen == [
        "400 on submit, key in message",
        "429 with the key in its message",
        "FAILED task, key in message",
        "a decompression bomb as the result image",
        "actual_prompt and result URL carrying the key",
        "partial success, key in the failed item",
    ]
    rows = {r.index: r for r in hostile_run.summary.rows}
    status = {i: r.status for i, r in rows.items()}
    assert status == {
        "1": "failed", "2": "failed", "3": "done", "4": "done", "5": "done", "6": "failed"
    }
    assert "too large to decode safely" in (rows["6"].reason or ""), rows["6"].reason
    assert hostile_run.cli_rc == 1, hostile_run.console[-2000:]


NAMED = ["failed.csv", "journal.jsonl", "summary.json", "report.html", "run.log"]


@pytest.mark.parametrize("name", NAMED)
def test_the_echoed_key_reaches_no_file(hostile_run: Run, name: str) -> None:
    for out in (hostile_run.out, hostile_run.cli_out):
        text = (out / name).read_text(encoding="utf-8", errors="replace")
        assert _leaks(text) == [], f"{out.name}/{name}"


def test_the_echoed_key_reaches_no_other_file(hostile_run: Run) -> None:
    for out in (hostile_run.out, hostile_run.cli_out):
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.name not in NAMED:
                blob = path.read_bytes().decode("latin-1")
                assert _leaks(blob) == [], str(path.relative_to(hostile_run.root))


def test_the_echoed_key_reaches_not_the_console(hostile_run: Run) -> None:
    assert _leaks(hostile_run.console) == [], hostile_run.console[-2000:]


def test_the_summary_object_holds_no_key(hostile_run: Run) -> None:
    text = json.dumps(hostile_run.summary.model_dump(mode="json"), ensure_ascii=False)
    assert _leaks(text) == []


# ------------------------------------------------------------------------ the scrubber itself


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {KEY} here", f"key {REDACTED} here"),
        ("Authorization: Bearer abc.def-123", f"Authorization: Bearer {REDACTED}"),
        ("authorization: bearer%20tok123", f"authorization: bearer%20{REDACTED}"),
        ('{"h": "Bearer\\ntok"}', '{"h": "Bearer\\n' + REDACTED + '"}'),
        ("sk-abcdefgh12345678 and sk-short", f"{REDACTED} and sk-short"),
        ("https://oss/x.png?Signature=sk-0123456789abcdef&x=1",
         f"https://oss/x.png?Signature={REDACTED}&x=1"),
        ("no secrets, a task-id and desk-lamp", "no secrets, a task-id and desk-lamp"),
        ("", ""),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


def test_scrub_text_removes_a_configured_key_of_any_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner.logs import add_secrets

    odd = "ZX81-not-shaped-like-sk"
    add_secrets(odd)
    assert odd not in scrub_text(f"echo {odd}!")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "plainkeyfromenv")
    assert scrub_text("x plainkeyfromenv y") == f"x {REDACTED} y"


def test_scrub_value_walks_json() -> None:
    value = {"a": [f"Bearer {KEY}", 3, None], "b": {"c": (KEY,)}}
    assert scrub_value(value) == {
        "a": [f"Bearer {REDACTED}", 3, None],
        "b": {"c": (REDACTED,)},
    }


def test_the_log_redactor_uses_the_scrubber() -> None:
    from runner.logs import Redactor

    event = Redactor()(None, "info", {"event": "x", "message": _echo("m"), "n": 1})
    assert _leaks(json.dumps(event)) == [] and event["n"] == 1
