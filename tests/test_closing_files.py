"""The output folder under hostile conditions: a file-size limit while writing images, the
closing files (failed.csv, summary.json, report.html) that are folders or turn into one, and
the folder deleted under a running job. Each ends in one line naming the file or folder,
never a traceback, and nothing paid is lost."""

from __future__ import annotations

import errno
import io
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import billed_per_row, emulator_get, emulator_process, row_prompt
from rich.console import Console

from runner import run_all
from runner.errors import DiskFull
from runner.outcomes import RowResult
from runner.progress import ProgressObserver
from runner.settings import Settings, load_settings
from runner.store.files import write_atomic_sync

ROOT = Path(__file__).resolve().parents[1]
FAST = (
    "poll_first_s = 0.02\nbackoff_max_s = 0.2\n"
    "[judge]\nenabled = false\n[emulator]\ntime_scale = 0.01\n"
)


def _t2i_rows(n: int) -> list[tuple[str, ...]]:
    return [(str(i), "t2i", f"a red fox number {i}", "", "") for i in range(1, n + 1)]


def _cli(
    *args: str, cwd: Path, file_limit: int | None = None, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m runner ...`` on the embedded emulator, or with a key on the emulator at
    ``port``; ``file_limit``: ``ulimit -f`` in bytes for the child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "RUNNER_"))}
    env["PYTHONPATH"] = str(ROOT)
    if port is not None:
        env["DASHSCOPE_API_KEY"] = "sk-closing0123456789abcdef"
        env["DASHSCOPE_HTTP_BASE_URL"] = f"http://127.0.0.1:{port}/api/v1"

    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    s = load_settings(poll_first_s=0.02, backoff_max_s=0.2)
    return s.model_copy(update={"emulator": s.emulator.model_copy(update={"time_scale": 0.01})})


class _Notes(ProgressObserver):
    """The run's notices in a list; ``on_first_row`` runs when the first row ends."""

    def __init__(self, on_first_row: object) -> None:
        super().__init__(Console(file=io.StringIO()), self._note, quiet=True)
        self.lines: list[str] = []
        self.on_first_row = on_first_row

    def _note(self, level: str, line: str) -> None:
        self.lines.append(line)

    def row(self, result: RowResult) -> None:
        if self.on_first_row is not None:
            action, self.on_first_row = self.on_first_row, None
            action()  # type: ignore[operator]
        super().row(result)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_write_that_every_later_write_repeats_is_diskfull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def refused(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refused)
    with pytest.raises(DiskFull, match=r"1\.jpg"):
        write_atomic_sync(tmp_path / "1.jpg", b"x" * 100)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # no temp file left


def test_a_file_size_limit_stops_like_a_full_disk(job, tmp_path: Path) -> None:
    """``ulimit -f`` below an image's size: exit 3 with the stop's line, no per-row internal
    error, no traceback; the rerun without the limit fetches the paid images: the service
    (an emulator in its own process, outliving both runs) billed each row once."""
    tasks = job([(str(i), "t2i", row_prompt(i, "a red fox"), "", "") for i in (1, 2, 3)])
    (tmp_path / "fast.toml").write_text(FAST, encoding="utf-8")
    args = ("--tasks", str(tasks), "--out", "out", "--settings", "fast.toml", "-q")
    with emulator_process("--time-scale", "0.01", "--no-quotas") as port:
        res = _cli(*args, cwd=tmp_path, file_limit=8 * 1024, port=port)
        assert res.returncode == 3, res.stdout + res.stderr
        assert "Traceback" not in res.stderr + res.stdout
        assert "internal error" not in res.stdout
        assert "Run stopped: DiskFull:" in res.stdout and "ulimit -f" in res.stdout
        again = _cli(*args, cwd=tmp_path, port=port)
        billed = emulator_get(port, "/_emulator/billed")
    assert again.returncode == 0, again.stdout + again.stderr
    assert billed_per_row(billed) == {"1": 1, "2": 1, "3": 1}
    assert sorted(p.name for p in (tmp_path / "out" / "imgs").iterdir()) == [
        "1.jpg", "2.jpg", "3.jpg"
    ]


@pytest.mark.parametrize("name", ["summary.json", "report.html", "failed.csv"])
def test_a_closing_file_that_is_a_folder_refuses_the_run_in_one_line(
    job, tmp_path: Path, name: str
) -> None:
    tasks = job(_t2i_rows(1))
    (tmp_path / "out" / name).mkdir(parents=True)
    res = _cli("--tasks", str(tasks), "--out", "out", "-q", cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip() == (
        f"error: out/{name} is a folder, not a file: move it away or give another --out"
    )
    assert not (tmp_path / "out" / "journal.jsonl").exists()  # nothing started, nothing paid


async def test_a_closing_file_that_turns_into_a_folder_is_one_notice(
    job, tmp_path: Path, quick: Settings
) -> None:
    """summary.json and report.html made folders during the run: a notice names each, the
    other closing file is still written, the rows stay done."""
    tasks = job(_t2i_rows(3))
    out = tmp_path / "out"

    def block() -> None:
        (out / "summary.json").mkdir()
        (out / "report.html").mkdir()

    notes = _Notes(block)
    summary = await run_all(
        tasks, out=out, settings=quick, observer=notes, configure_logging=False
    )
    assert summary.exit_code == 0
    assert f"{out}/summary.json was not written: it is a folder: move it away" in notes.lines
    assert f"{out}/report.html was not written: it is a folder: move it away" in notes.lines
    assert (out / "failed.csv").is_file()
    assert summary.report is None


async def test_a_folder_deleted_mid_run_stops_and_writes_nothing_into_a_new_one(
    job, tmp_path: Path, quick: Settings
) -> None:
    """``rm -rf`` of the output folder under a run: exit 3, no row's "internal error", and
    the closing files are not written into a folder that no longer holds the journal."""
    tasks = job(_t2i_rows(8))
    out = tmp_path / "out"
    notes = _Notes(lambda: shutil.rmtree(out))
    summary = await run_all(
        tasks, out=out, settings=quick, observer=notes, configure_logging=False
    )
    assert summary.exit_code == 3
    assert not [r.reason for r in summary.rows if "internal error" in (r.reason or "")]
    assert (
        f"the output folder {out} was deleted or replaced during the run, its journal with "
        "it: failed.csv, summary.json and report.html were not written"
    ) in notes.lines
    for name in ("failed.csv", "summary.json", "report.html", "journal.jsonl"):
        assert not (out / name).exists(), name
