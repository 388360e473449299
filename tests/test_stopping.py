"""Stopping as a user stops a run (issue 25): the runner killed outright leaves no worker
behind; Ctrl-C once, twice, or in the first seconds says what it waits for, writes the
closing files and prints no traceback. Real subprocesses, signals sent the way a terminal
sends them (to the whole process group)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "RUNNER_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _session(sid: int) -> dict[int, str]:
    """Every live process of session ``sid`` (pid -> command), zombies left out."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            found[int(entry.name)] = cmd.strip()
    return found


def _kill_session(sid: int) -> None:
    for pid in _session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _cleanup(proc: subprocess.Popen) -> None:
    """Whatever a failed test left: the runner and its session, pipes closed."""
    if proc.poll() is None:
        proc.kill()
    _kill_session(proc.pid)  # before reading: an orphan would hold the pipes open
    if proc.stdout is not None and not proc.stdout.closed:
        proc.communicate(timeout=30)


def _faces(folder: Path, pairs: int) -> list[tuple[str, ...]]:
    """``pairs`` deepfake rows on two real faces (insightface's sample photo)."""
    from tests.sample_faces import GROUP, crop

    if not GROUP.is_file():
        pytest.skip("insightface's sample photo is not installed")
    folder.mkdir(exist_ok=True)
    Image.fromarray(crop(2)).save(folder / "a.png")
    Image.fromarray(crop(3)).save(folder / "b.png")
    return [(str(100 + i), "deepfake", "", "a.png", "b.png") for i in range(pairs)]


def _wait_for(path: Path, needles: list[str], timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            if all(n in text for n in needles):
                return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended early ({proc.returncode}): {out[-2000:]} {err[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"never saw {needles} in {path.name}")


@pytest.mark.slow
def test_sigkill_of_the_runner_leaves_no_worker_alive(job, tmp_path: Path) -> None:
    """Busy face-swap workers and a busy local diffusion worker: SIGKILL the runner (a
    timeout, the OOM killer); 10 s later no process it started is alive."""
    pytest.importorskip("diffusers")
    from runner.backends.local.tiny import build_tiny_qwen_image

    pipe = build_tiny_qwen_image(tmp_path / "tiny-qwen-image")
    rows = _faces(tmp_path / "imgs", 60)
    rows += [(str(i), "t2i", f"a lighthouse number {i}", "", "") for i in range(60)]
    tasks = job(rows)
    settings = tmp_path / "s.toml"
    settings.write_text(
        '[models]\nt2i = ["local:tiny"]\n'
        f'[local.tiny]\npath = "{pipe}"\nsteps = 40\nsize = "32*32"\ndevices = ["cpu"]\n'
        '[faceswap]\nbackend = "classic"\nworkers = 2\n',
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "--tasks", str(tasks), "--out", "out"]
        + ["--settings", str(settings), "-q"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its session holds every process it starts
    )
    try:
        # a row of each kind done, many left: both pools are at work
        journal = tmp_path / "out" / "journal.jsonl"
        _wait_for(journal, ['"model": "faceswap:classic"', '"model": "local:tiny"'], 240, proc)
        workers = {p: c for p, c in _session(proc.pid).items() if p != proc.pid}
        assert sum("multiprocessing" in c for c in workers.values()) >= 3, workers
        proc.kill()
        proc.wait(10)
        time.sleep(10)
        left = _session(proc.pid)
        assert not left, f"still alive 10 s after the runner's SIGKILL: {left}"
    finally:
        _cleanup(proc)


def _slow_run(tmp_path: Path, tasks: Path, *extra: str) -> subprocess.Popen:
    slow = tmp_path / "slow.toml"
    slow.write_text(
        '[emulator]\ntime_scale = 1.0\n[faceswap]\nbackend = "classic"\nworkers = 2\n',
        encoding="utf-8",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "--tasks", str(tasks), "--out", "out"]
        + ["--settings", str(slow), *extra],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _ctrl_c(proc: subprocess.Popen) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group."""
    os.killpg(proc.pid, signal.SIGINT)


def _closing_files(out: Path) -> dict:
    assert (out / "failed.csv").is_file()
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["interrupted"] == "SIGINT"
    return summary


def test_two_ctrl_c_leave_at_once_quietly_with_the_closing_files(job, tmp_path: Path) -> None:
    rows = _faces(tmp_path / "imgs", 8)
    rows += [(str(i), "t2i", f"a red fox number {i}", "", "") for i in range(40)]
    proc = _slow_run(tmp_path, job(rows))
    try:
        journal = tmp_path / "out" / "journal.jsonl"
        _wait_for(journal, ['"model": "faceswap:classic"'], 120, proc)
        _ctrl_c(proc)
        time.sleep(0.5)
        _ctrl_c(proc)
        t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        left_s = time.monotonic() - t0
    finally:
        _cleanup(proc)
    both = stdout + stderr
    assert proc.returncode == 130, both
    assert "Traceback" not in both and "KeyboardInterrupt" not in both, both
    assert "never retrieved" not in both
    assert "Ctrl-C again" in both  # the first said what it waits for and how to leave
    assert left_s < 15, left_s
    summary = _closing_files(tmp_path / "out")
    assert any(r["status"] == "done" for r in summary["rows"])
    from runner.store.journal import replay

    state = replay(tmp_path / "out" / "journal.jsonl")
    assert state.damaged_lines == 0  # the journal is whole
    assert len(stdout.splitlines()) + len(stderr.splitlines()) < 40, both


def test_ctrl_c_in_the_first_seconds_writes_the_closing_files(job, tmp_path: Path) -> None:
    rows = _faces(tmp_path / "imgs", 4)
    rows += [(str(i), "t2i", f"a red fox number {i}", "", "") for i in range(4)]
    proc = _slow_run(tmp_path, job(rows), "-q")
    try:
        # the output folder exists: start-up is under way (workers loading), no row done
        _wait_for(tmp_path / "out" / "run.log", [], 60, proc)
        time.sleep(0.5)
        _ctrl_c(proc)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        _cleanup(proc)
    both = stdout + stderr
    assert proc.returncode == 130, both
    assert "Traceback" not in both and "KeyboardInterrupt" not in both, both
    assert "fix the cause" not in both  # the closing words fit a Ctrl-C
    assert "Interrupted (SIGINT)" in stdout
    _closing_files(tmp_path / "out")
