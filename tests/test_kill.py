"""Crashes: the runner is killed with SIGKILL at random moments, twenty times, then run again.

The emulator runs in its own process (it outlives every kill), the runner is the real CLI in a
subprocess pointed at it with DASHSCOPE_API_KEY + DASHSCOPE_HTTP_BASE_URL. In the end: every
row done, no stray temp file, the journal readable, no row's API task submitted again while its
task id was journaled and still open, and, counted from the service's billing ledger row by
row: every request the service billed is in the journal (its ``sending`` record is on disk
before it leaves), and a row is paid again only where the journal says why (a task that
FAILED or vanished, or a request whose answer a kill lost, paid again with
``--repay-uncertain``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import billed_per_row, emulator_get, emulator_process, paid_twice, row_prompt
from PIL import Image

from runner.store.files import TEMP_MARK
from runner.store.journal import replay

KILLS = 20
ROWS = 180
KEY = "sk-killtrial0123456789abcdef"
SETTINGS = """\
models = {t2i = ["wanx2.1-t2i-turbo"], tie = ["wanx2.1-imageedit"], vttie = ["qwen-image-edit"]}
candidates = {t2i = 1, tie = 1, vttie = 1}
"""


@pytest.fixture
def emulator_port() -> Iterator[int]:
    with emulator_process("--time-scale", "0.12") as port:
        yield port


def _rows() -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    # enough work that every one of the kills lands in a run that still has some to do
    for i in range(1, 153):
        rows.append((str(i), "t2i", row_prompt(i, "a red fox in the snow"), "", ""))
    for i in range(153, 167):
        rows.append((str(i), "tie", row_prompt(i, "make the sky purple"), f"src{i}.png", ""))
    for i in range(167, ROWS + 1):
        rows.append((str(i), "vttie", row_prompt(i, "change OPEN to SHUT"), f"src{i}.png", ""))
    return rows


def _run_starts(out: Path) -> int:
    try:
        return (out / "journal.jsonl").read_bytes().count(b'"ev": "run_start"')
    except OSError:
        return 0


def _journal_lines(out: Path) -> tuple[list[dict[str, Any]], int]:
    """(records in order, lines that do not parse)."""
    records: list[dict[str, Any]] = []
    damaged = 0
    for line in (out / "journal.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            damaged += 1
    return records, damaged


def resubmits_of_open_ids(records: list[dict[str, Any]]) -> list[str]:
    """Rows submitted again while a journaled task id of theirs was still open (neither
    closed nor the row done): each such submit paid for a task the journal could fetch."""
    open_ids: dict[str, set[str]] = {}
    bad: list[str] = []
    for rec in records:
        ev, index = rec.get("ev"), rec.get("index")
        if index is None:
            continue
        ids = open_ids.setdefault(str(index), set())
        if ev == "submitted":
            if ids:
                bad.append(f"row {index}: new task {rec['task_id']} while {sorted(ids)} open")
            ids.add(rec["task_id"])
        elif ev == "task_closed":
            ids.discard(rec.get("task_id"))
        elif ev == "done":
            ids.clear()
    return bad


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun(job, tmp_path: Path, emulator_port: int) -> None:
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    rows = _rows()
    tasks = job(rows, img_size=(520, 520))
    out = tmp_path / "out"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")},
        "DASHSCOPE_API_KEY": KEY,
        "DASHSCOPE_HTTP_BASE_URL": f"http://127.0.0.1:{emulator_port}/api/v1",
        "RUNNER_POLL_FIRST_S": "0.05",
        "RUNNER_BACKOFF_MAX_S": "0.5",
        "RUNNER_JUDGE__ENABLED": "false",  # the judge's pacing would only make this slower
        "RUNNER_SIZE": "512*512",  # the emulator renders every result: keep them small
    }
    (tmp_path / "settings.toml").write_text(SETTINGS, encoding="utf-8")
    cmd = [sys.executable, "-m", "runner", "--tasks", str(tasks), "--out", str(out), "-q"]
    kills = 0
    trials = 0
    moments: list[float] = []
    while kills < KILLS and trials < KILLS + 5:
        trials += 1
        starts = _run_starts(out)
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # a random moment of the work itself: after the run has started (its run_start record
        # is in the journal), anywhere in the next 1.5 s: submitting, polling, downloading,
        # writing an image or a journal record
        deadline = time.monotonic() + 30
        while _run_starts(out) == starts and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        moment = rng.uniform(0.0, 1.5)
        time.sleep(moment)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            moments.append(round(moment, 2))
        proc.wait(10)
    why = f"seed {seed}, kills at {moments}"
    assert kills == KILLS, why
    done_before_final = sum(1 for r in replay(out / "journal.jsonl").rows.values() if r.done)
    # the run after the kills: requests whose answer a kill lost and that cannot be found at
    # the service (sync calls) fail "uncertain", named, never paid again on their own ...
    plain = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert plain.returncode in (0, 1), f"{why}\n{plain.stdout}\n{plain.stderr}"
    uncertain_rows = plain.stdout.count("(run again with --repay-uncertain")
    assert plain.returncode == (1 if uncertain_rows else 0), plain.stdout
    # ... until the user says to pay for them again
    t_final = time.monotonic()
    final = subprocess.run(
        [*cmd, "--repay-uncertain"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    t_final = time.monotonic() - t_final
    assert final.returncode == 0, f"{why}\n{final.stdout}\n{final.stderr}"
    assert "Traceback" not in plain.stdout + plain.stderr + final.stdout + final.stderr

    # every row done, each file a whole JPEG, nothing else in imgs/, no temp file anywhere
    imgs = out / "imgs"
    assert sorted(p.name for p in imgs.iterdir()) == sorted(f"{i}.jpg" for i in range(1, ROWS + 1))
    for p in imgs.iterdir():
        with Image.open(p) as img:
            img.load()
            assert img.format == "JPEG", p
    assert not [p for p in out.rglob("*") if TEMP_MARK in p.name], why

    # the journal is readable: a kill may cut at most its own last line short
    records, damaged = _journal_lines(out)
    assert damaged <= kills, why
    state = replay(out / "journal.jsonl")
    assert state.runs >= 2  # the final run, and at least one killed run that got going
    assert all(state.rows[str(i)].done for i in range(1, ROWS + 1)), why

    # no journaled, open task id was paid for again
    assert resubmits_of_open_ids(records) == [], why
    billed = emulator_get(emulator_port, "/_emulator/billed")
    per_row = billed_per_row(billed)
    # every request the service billed is one the journal knows of (sent, maybe answered)
    known = Counter(p.index for p in state.book.requests.values() if p.phase != "refused")
    assert not {r: n for r, n in per_row.items() if n > known[r]}, (per_row, known, why)
    # a row is paid again only where the journal says why: what paid_twice cannot excuse
    # (a task that FAILED or vanished) is each an uncertain request the user paid again
    repaid = Counter(
        str(r["index"])
        for r in records
        if r.get("ev") == "task_closed" and str(r.get("why", "")).startswith("uncertain")
    )
    extra = paid_twice(out, billed)
    assert all(n <= repaid[row] for row, n in extra.items()), (extra, repaid, why)
    paid = sum(per_row.values())

    # and a run after the end does nothing again
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert len(emulator_get(emulator_port, "/_emulator/billed")) == len(billed)
    print(
        f"KILL {kills} kills at {moments} (seed {seed}); {done_before_final}/{ROWS} rows done "
        f"before the runs after them; {uncertain_rows} rows uncertain, paid again with "
        f"--repay-uncertain ({t_final:.1f} s); {paid} requests paid for {ROWS} rows; "
        f"paid twice without a reason in the journal: 0"
    )


def test_the_resubmit_check_itself() -> None:
    """resubmits_of_open_ids flags a new task only while an older one of the row is open."""

    def sub(i: str, t: str) -> dict[str, Any]:
        return {"ev": "submitted", "index": i, "task_id": t}

    assert resubmits_of_open_ids([sub("1", "a"), {"ev": "run_start"}, sub("1", "b")]) == [
        "row 1: new task b while ['a'] open"
    ]
    closed = {"ev": "task_closed", "index": "1", "task_id": "a"}
    assert resubmits_of_open_ids([sub("1", "a"), closed, sub("1", "b")]) == []
    done = {"ev": "done", "index": "1"}
    assert resubmits_of_open_ids([sub("1", "a"), done, sub("1", "b")]) == []
    assert resubmits_of_open_ids([sub("1", "a"), sub("2", "b")]) == []
