"""Paid once, lost never: every situation of the payment-safety issue, counted per row.

Each test runs the real client against the emulator (a key and a loopback base URL: the
real-service path) and reads the emulator's billing ledger: for every row, how many
requests the account paid for. ``paid_twice`` must come back empty. The world is moved the
way it moves: the clock jumps (a rerun 20 minutes or 23 hours later), storage fails five
times in a row, a second process starts on the same folder, the task file is edited.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    billed_per_row,
    fault_emulator,
    make_image,
    paid_twice,
    row_prompt,
    write_tasks,
)

from runner import run_all
from runner.emulator import Emulator
from runner.settings import Settings, load_settings
from runner.store.journal import JOURNAL_NAME, JournalError, replay
from runner.store.lock import FolderBusy, OutLock

KEY = "sk-paidonce0123456789abcdef"
FAST = {"submits_per_second": 100, "in_flight": 4}
MODELS = ("wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wanx2.1-imageedit", "qwen-image-edit")


pytestmark = pytest.mark.usefixtures("clean_env")


def emulator(time_scale: float = 0.005, **faults: Any) -> Any:
    return fault_emulator(time_scale=time_scale, seed=5, **faults)


def settings_for(emu: Emulator, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "api_key": KEY,
        "base_url": emu.base_url,
        "poll_first_s": 0.01,
        "backoff_max_s": 0.05,
        "request_timeout_s": 5,
        "size": "512*512",
        "judge": {"enabled": False},
        "models": {
            "t2i": ["wanx2.1-t2i-turbo", "wanx2.1-t2i-plus"],
            "tie": ["wanx2.1-imageedit"],
            "vttie": ["qwen-image-edit"],
        },
        "quotas": {m: FAST for m in MODELS},
    }
    base.update(kw)
    return load_settings(**base)


def make_job(tmp_path: Path, n_t2i: int = 4, n_tie: int = 1, n_vttie: int = 1) -> Path:
    rows: list[tuple[str, ...]] = []
    i = 1
    for _ in range(n_t2i):
        rows.append((str(i), "t2i", row_prompt(i), "", ""))
        i += 1
    for kind, text in (("tie", "make the sky purple"), ("vttie", "change OPEN to SHUT")):
        for _ in range(n_tie if kind == "tie" else n_vttie):
            make_image(tmp_path / "imgs" / f"src{i}.png", (600, 520))
            rows.append((str(i), kind, row_prompt(i, text), f"src{i}.png", ""))
            i += 1
    return write_tasks(tmp_path / "task.csv", rows)


def done_rows(out: Path) -> set[str]:
    return {i for i, r in replay(out / JOURNAL_NAME).rows.items() if r.done}


def shift_journal(out: Path, seconds: float) -> None:
    """Move every journal timestamp back: the crash happened ``seconds`` ago."""
    path = out / JOURNAL_NAME
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rec["t"] = rec["t"] - seconds
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def crash_after_submits(coro: Any, emu: Emulator, paid: int) -> None:
    """Run until the service has accepted ``paid`` requests, then stop the run hard."""
    task = asyncio.ensure_future(coro)
    for _ in range(2000):
        if len(emu.billed()) >= paid or task.done():
            break
        await asyncio.sleep(0.005)
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


# --------------------------------------------------------------------------- late reruns


@pytest.mark.parametrize("late_s", [20 * 60, 23 * 3600])
async def test_late_rerun_fetches_the_journaled_tasks(tmp_path: Path, late_s: float) -> None:
    tasks = make_job(tmp_path, n_t2i=4, n_tie=1, n_vttie=0)
    out = tmp_path / "out"
    async with emulator(time_scale=1.0) as emu:  # tasks of 5-15 s: the crash finds them running
        await crash_after_submits(run_all(tasks, out=out, settings=settings_for(emu)), emu, paid=5)
        before = len(emu.billed())
        assert before >= 5
        journaled = [p for r in replay(out / JOURNAL_NAME).rows.values() for p in r.pending]
        assert len(journaled) == before  # every paid id reached the journal
        # the rerun comes late: the tasks ended long ago, their ids are still valid
        emu.advance(late_s)
        shift_journal(out, late_s)
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert len(emu.billed()) == before, "a journaled task was paid for again"
        assert paid_twice(out, emu.billed()) == {}
    assert done_rows(out) == {"1", "2", "3", "4", "5"}


async def test_rerun_after_the_ids_expired_submits_anew(tmp_path: Path) -> None:
    """Past 24 h the ids are gone: the rows are paid again, once, and nothing waits on them."""
    tasks = make_job(tmp_path, n_t2i=3, n_tie=0, n_vttie=0)
    out = tmp_path / "out"
    async with emulator(time_scale=1.0) as emu:
        await crash_after_submits(run_all(tasks, out=out, settings=settings_for(emu)), emu, paid=3)
        emu.advance(25 * 3600)
        shift_journal(out, 25 * 3600)
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0
        assert billed_per_row(emu.billed()) == {"1": 2, "2": 2, "3": 2}


# --------------------------------------------------------------------------- downloads


@pytest.mark.parametrize("kind", ["connection_reset", "internal_error", "rate_limit"])
async def test_storage_outage_of_several_attempts_never_pays_twice(
    tmp_path: Path, kind: str
) -> None:
    """Twelve failed GETs in a row (cut connections, 5xx, a storage 429): every row is
    fetched in the end, paid once, and a storage 429 teaches the model's lane nothing."""
    tasks = make_job(tmp_path)
    out = tmp_path / "out"
    outage = {"endpoints": ["download"], "at": list(range(1, 13))}
    async with emulator(**{kind: outage}) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert paid_twice(out, emu.billed()) == {}
        assert sum(billed_per_row(emu.billed()).values()) == 6
        assert emu.stats.faults_injected.get(kind) == 12
        assert summary.throttled == 0  # downloads are not the model's quota


async def test_downloads_that_never_work_keep_the_task_for_the_next_run(tmp_path: Path) -> None:
    tasks = make_job(tmp_path, n_t2i=2, n_tie=0, n_vttie=1)
    out = tmp_path / "out"
    async with emulator(html_body={"probability": 1.0}) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 1
        assert all("kept" in (r.reason or "") for r in summary.failed), summary.failed
        assert billed_per_row(emu.billed()) == {"1": 1, "2": 1, "3": 1}
        emu.set_faults()  # storage is back
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert billed_per_row(emu.billed()) == {"1": 1, "2": 1, "3": 1}


async def test_expired_result_urls_are_renewed_from_the_task(tmp_path: Path) -> None:
    tasks = make_job(tmp_path, n_t2i=3, n_tie=0, n_vttie=0)
    out = tmp_path / "out"
    async with emulator(url_expired={"at": [1, 2, 3]}) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert billed_per_row(emu.billed()) == {"1": 1, "2": 1, "3": 1}


# --------------------------------------------------------------------------- the folder


async def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    tasks = make_job(tmp_path, n_t2i=4, n_tie=0, n_vttie=0)
    out = tmp_path / "out"
    async with emulator(time_scale=0.2) as emu:
        first = asyncio.ensure_future(run_all(tasks, out=out, settings=settings_for(emu)))
        for _ in range(1000):  # until the first run holds the folder
            if (out / JOURNAL_NAME).exists():
                break
            await asyncio.sleep(0.01)
        with pytest.raises(FolderBusy, match=r"in use by another runner \(pid \d+"):
            await run_all(tasks, out=out, settings=settings_for(emu))
        summary = await first
        assert summary.exit_code == 0
        assert billed_per_row(emu.billed()) == {"1": 1, "2": 1, "3": 1, "4": 1}
    # the lock went with the run: the folder is free again
    with OutLock(out, "test"):
        pass


def test_the_lock_is_held_across_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, time; from pathlib import Path; from runner.store.lock import OutLock\n"
        "l = OutLock(Path(sys.argv[1]), 'run'); l.acquire(); print('held', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=f"pid {proc.pid} \\(run\\)"):
            OutLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    with OutLock(tmp_path):  # a killed holder leaves no stale lock
        pass


# --------------------------------------------------------------------------- the task file


async def test_edited_task_file_remakes_exactly_the_changed_rows(tmp_path: Path) -> None:
    tasks = make_job(tmp_path, n_t2i=3, n_tie=1, n_vttie=1)
    out = tmp_path / "out"
    async with emulator() as emu:
        assert (await run_all(tasks, out=out, settings=settings_for(emu))).exit_code == 0
        text = tasks.read_text(encoding="utf-8-sig")
        # row 2: another prompt; row 4: the same file name, another picture
        tasks.write_text(text.replace("tag2x", "tag2x with snow"), encoding="utf-8-sig")
        make_image(tmp_path / "imgs" / "src4.png", (640, 500), mode="L")
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        status = {r.index: r.status for r in summary.rows}
        assert status == {"1": "skipped", "2": "done", "3": "skipped", "4": "done", "5": "skipped"}
        assert billed_per_row(emu.billed()) == {"1": 1, "2": 2, "3": 1, "4": 2, "5": 1}
        # another task list altogether in the same folder: nothing of the old one is kept
        other = tmp_path / "other.csv"
        write_tasks(
            other, [("1", "t2i", row_prompt(11), "", ""), ("2", "t2i", row_prompt(12), "", "")]
        )
        summary = await run_all(other, out=out, settings=settings_for(emu))
        assert [r.status for r in summary.rows] == ["done", "done"]
    state = replay(out / JOURNAL_NAME)
    assert state.last_run is not None and state.last_run["tasks"] == str(other.resolve())


async def test_emulator_placeholders_are_never_done_for_a_run_with_a_key(tmp_path: Path) -> None:
    tasks = make_job(tmp_path, n_t2i=2, n_tie=0, n_vttie=1)
    out = tmp_path / "out"
    # no key: the embedded emulator makes placeholders
    first = await run_all(tasks, out=out, settings=load_settings(judge={"enabled": False}))
    assert first.emulated and first.exit_code == 0
    async with emulator() as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert [r.status for r in summary.rows] == ["done", "done", "done"]
        assert not any(r.emulated for r in summary.rows)
        assert billed_per_row(emu.billed()) == {"1": 1, "2": 1, "3": 1}


async def test_a_damaged_output_is_fetched_again_not_paid_again(tmp_path: Path) -> None:
    tasks = make_job(tmp_path, n_t2i=2, n_tie=0, n_vttie=1)
    out = tmp_path / "out"
    async with emulator() as emu:
        assert (await run_all(tasks, out=out, settings=settings_for(emu))).exit_code == 0
        for name in ("1.jpg", "3.jpg"):  # truncated after the journal said done
            data = (out / "imgs" / name).read_bytes()
            (out / "imgs" / name).write_bytes(data[: len(data) // 2])
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert [r.status for r in summary.rows] == ["done", "skipped", "done"]
        assert billed_per_row(emu.billed()) == {"1": 1, "2": 1, "3": 1}
    assert (out / "imgs" / "1.jpg").read_bytes()[-2:] == b"\xff\xd9"


# --------------------------------------------------------------------------- cancellation


async def test_a_stop_while_the_journal_write_waits_keeps_the_paid_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record of an accepted task waits behind a slow disk; the run is stopped then.
    The id is on disk all the same, and the rerun fetches instead of paying."""
    from runner.store import journal as journal_mod

    real = journal_mod.Journal._commit

    def slow_commit(self: Any, lines: list[bytes]) -> None:
        import time

        if any(b'"submitted"' in x or b'"sync_answer"' in x for x in lines):
            time.sleep(0.3)
        real(self, lines)

    monkeypatch.setattr(journal_mod.Journal, "_commit", slow_commit)
    tasks = make_job(tmp_path, n_t2i=3, n_tie=0, n_vttie=1)
    out = tmp_path / "out"
    async with emulator(time_scale=1.0) as emu:
        await crash_after_submits(run_all(tasks, out=out, settings=settings_for(emu)), emu, paid=1)
        paid = len(emu.billed())
        state = replay(out / JOURNAL_NAME)
        journaled = sum(len(r.pending) + r.done for r in state.rows.values())
        assert paid >= 1 and journaled == paid
        monkeypatch.setattr(journal_mod.Journal, "_commit", real)
        emu.advance(60)
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0
        assert paid_twice(out, emu.billed()) == {}


async def test_a_run_cancelled_mid_sync_call_journals_the_answer_first(tmp_path: Path) -> None:
    """The whole run is cancelled (a caller's timeout) while sync calls are running: the
    client stays open until they answer and are journaled, so the rerun pays nothing."""
    tasks = make_job(tmp_path, n_t2i=0, n_tie=0, n_vttie=3)
    out = tmp_path / "out"
    async with emulator(time_scale=1.0) as emu:  # a sync call takes seconds here
        run = asyncio.ensure_future(run_all(tasks, out=out, settings=settings_for(emu)))
        for _ in range(2000):  # until the calls are on the wire, none answered yet
            if emu.stats.sync_calls or run.done():
                break
            await asyncio.sleep(0.005)
        assert not emu.billed()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        billed = billed_per_row(emu.billed())
        assert billed  # the calls in flight were answered and billed ...
        journaled = {i for i, r in replay(out / JOURNAL_NAME).rows.items() if r.pending}
        assert journaled == set(billed)  # ... and every one of them is journaled
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0
        assert paid_twice(out, emu.billed()) == {}


async def test_sync_answers_are_journaled_before_the_download(tmp_path: Path) -> None:
    """qwen-image-edit has no task id: its result URLs are the proof of payment."""
    tasks = make_job(tmp_path, n_t2i=0, n_tie=0, n_vttie=2)
    out = tmp_path / "out"
    async with emulator(html_body={"probability": 1.0}) as emu:
        await run_all(tasks, out=out, settings=settings_for(emu))
        state = replay(out / JOURNAL_NAME)
        assert all(r.pending and r.pending[0].urls for r in state.rows.values())
        emu.set_faults()
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0
        assert billed_per_row(emu.billed()) == {"1": 1, "2": 1}


# --------------------------------------------------------------------------- the journal


def test_malformed_journal_records_are_counted_not_fatal(tmp_path: Path) -> None:
    lines = [
        {"ev": "run_start", "t": 1.0},
        {"ev": "submitted", "index": "1", "task_id": None, "model": "m", "t": 2.0},
        {"ev": "submitted", "index": "2", "model": "m", "t": 2.0},  # no task_id
        {"ev": "submitted", "index": "3", "task_id": "x", "model": "m", "t": "yesterday"},
        {"ev": "done", "index": 4, "file": "imgs/4.jpg", "t": 3.0},
        {"ev": "mystery", "index": "5"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + '\n{"ev": "done", "ind'
    (tmp_path / JOURNAL_NAME).write_text(text, encoding="utf-8")
    state = replay(tmp_path / JOURNAL_NAME)
    assert state.damaged_lines == 5
    assert set(state.rows) == {"4"} and state.rows["4"].done


def test_a_journal_that_is_a_folder_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_NAME).mkdir()
    with pytest.raises(JournalError, match="is a folder"):
        replay(tmp_path / JOURNAL_NAME)


def test_stale_candidates_never_replace_the_current_image(tmp_path: Path) -> None:
    """A row once made with candidates, then made again with one image: the old files under
    candidates/<index>/ are not this result's, so rejudge (and the report) ignore them."""
    from runner.outputs.rejudge import candidate_files
    from runner.store.journal import Journal

    out = tmp_path
    (out / "candidates" / "1").mkdir(parents=True)
    (out / "imgs").mkdir()
    for name in ("0.jpg", "1.jpg"):
        make_image(out / "candidates" / "1" / name, (64, 64), fmt="JPEG")
    make_image(out / "imgs" / "1.jpg", (80, 80), fmt="JPEG")
    j = Journal(out)
    old = [{"file": f"candidates/1/{k}.jpg", "model": "m"} for k in (0, 1)]
    j.write_sync("done", index="1", file="imgs/1.jpg", model="m", candidates=old)
    j.write_sync("done", index="1", file="imgs/1.jpg", model="m")  # made again, one image
    j.close()
    row = replay(out / JOURNAL_NAME).rows["1"]
    assert [c["file"] for c in candidate_files(out, "1", row)] == ["imgs/1.jpg"]
