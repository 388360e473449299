"""The ledger at the edges where money is decided: answers lost after the service took the
request, clocks that step, a task still running, spend over crashed runs, a lock or a journal
that vanishes, a service that answers with the wrong ids.

Every test runs the real client against the emulator with a key (the real-service path) and
reads the emulator's billing ledger per row (rows are told apart by a tag in their prompt).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    billed_per_row,
    fault_emulator,
    images_per_row,
    make_image,
    paid_twice,
    row_prompt,
    write_tasks,
)

from runner import run_all
from runner.emulator import Emulator
from runner.settings import Settings, load_settings
from runner.store.journal import JOURNAL_NAME, replay
from runner.store.lock import FolderBusy, OutLock

KEY = "sk-ledger0123456789abcdef"
FAST = {"submits_per_second": 100, "in_flight": 8}
T2I, EDIT, SYNC = "wanx2.1-t2i-turbo", "wanx2.1-imageedit", "qwen-image-edit"

pytestmark = pytest.mark.usefixtures("clean_env")


def settings_for(emu: Emulator, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "api_key": KEY,
        "base_url": emu.base_url,
        "poll_first_s": 0.01,
        "backoff_max_s": 0.05,
        "request_timeout_s": 5,
        "size": "512*512",
        "judge": {"enabled": False},
        "models": {"t2i": [T2I], "tie": [EDIT], "vttie": [SYNC]},
        "candidates": {"t2i": 1, "tie": 1, "vttie": 1},
        "quotas": {m: FAST for m in (T2I, EDIT, SYNC)},
    }
    base.update(kw)
    return load_settings(**base)


def make_job(tmp_path: Path, t2i: int = 0, tie: int = 0, vttie: int = 0) -> Path:
    rows: list[tuple[str, ...]] = []
    i = 1
    for kind, count, text in (
        ("t2i", t2i, "a lighthouse at dusk"),
        ("tie", tie, "make the sky purple"),
        ("vttie", vttie, "change OPEN to SHUT"),
    ):
        for _ in range(count):
            src = ""
            if kind != "t2i":
                src = f"src{i}.png"
                make_image(tmp_path / "imgs" / src, (600, 520))
            rows.append((str(i), kind, row_prompt(i, text), src, ""))
            i += 1
    return write_tasks(tmp_path / "task.csv", rows)


def records(out: Path, ev: str) -> list[dict[str, Any]]:
    lines = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r.get("ev") == ev]


def once_each(n: int) -> dict[str, int]:
    return {str(i): 1 for i in range(1, n + 1)}


# --------------------------------------------------------------------------- lost answers


@pytest.mark.parametrize(
    ("fault", "extra"),
    [
        ("answer_lost", {}),  # the connection reset once the task exists
        ("answer_cut", {}),  # 200, then the body stops short
        ("stall", {"stall_s": 2.0}),  # the answer later than request_timeout_s
    ],
)
async def test_a_lost_submit_answer_is_found_again_not_paid_twice(
    tmp_path: Path, fault: str, extra: dict[str, Any]
) -> None:
    """Half the submits' answers are lost after the service took them: each is found in the
    service's task list by its prompt and adopted. Before the ledger: resent, 15 billed for
    10 rows."""
    tasks = make_job(tmp_path, t2i=6)
    out = tmp_path / "out"
    rule = {"every_n": 2, "endpoints": ["submit"]}
    async with fault_emulator(time_scale=0.005, **{fault: rule}, **extra) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu, request_timeout_s=0.5))
        assert summary.exit_code == 0, summary.failed
        assert billed_per_row(emu.billed()) == once_each(6)
        assert emu.stats.faults_injected.get(fault) == 3
    adopted = [r for r in records(out, "submitted") if r.get("adopted")]
    assert len(adopted) == 3
    assert {r["images"] for r in summary.billed} == {6}  # the summary counts what was billed


async def test_a_submit_that_never_reached_the_service_is_sent_again_for_free(
    tmp_path: Path,
) -> None:
    """A reset before the service made the task: the task list has no such task (twice), so
    the request is journaled as not accepted and sent again; every row paid once."""
    tasks = make_job(tmp_path, t2i=3)
    out = tmp_path / "out"
    async with fault_emulator(connection_reset={"at": [1], "endpoints": ["submit"]}) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert billed_per_row(emu.billed()) == once_each(3)
    assert len(records(out, "not_accepted")) == 1


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        ("vttie", "answer_lost"),
        ("vttie", "answer_cut"),
        ("tie", "answer_lost"),
        ("tie", "answer_cut"),
    ],
)
async def test_a_lost_answer_that_cannot_be_matched_fails_until_the_user_pays_again(
    tmp_path: Path, kind: str, fault: str
) -> None:
    """A sync call (no task id) or an edit task (its prompt is not told back) whose answer is
    lost may have been billed: the row fails "uncertain" and is not paid again, not in this
    run and not in a plain rerun; ``--repay-uncertain`` pays for it once more."""
    tasks = make_job(tmp_path, **{kind: 1})
    out = tmp_path / "out"
    endpoints = ["generation"] if kind == "vttie" else ["submit"]
    async with fault_emulator(**{fault: {"at": [1], "endpoints": endpoints}}) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 1
        (row,) = summary.failed
        assert "uncertain" in (row.reason or "") and "--repay-uncertain" in (row.reason or "")
        assert billed_per_row(emu.billed()) == {"1": 1}
        again = await run_all(tasks, out=out, settings=settings_for(emu))
        assert again.exit_code == 1 and billed_per_row(emu.billed()) == {"1": 1}
        paid = await run_all(tasks, out=out, settings=settings_for(emu, repay_uncertain=True))
        assert paid.exit_code == 0, paid.failed
        assert billed_per_row(emu.billed()) == {"1": 2}
    closes = [r["why"] for r in records(out, "task_closed")]
    assert closes == ["uncertain: paid again (--repay-uncertain)"]


async def test_a_lost_submit_whose_task_failed_is_sent_again_for_free(tmp_path: Path) -> None:
    """An edit task cannot be told apart by its prompt, but one that FAILED billed nothing:
    whoever's it was, the lost submit is sent again and the row paid one image."""
    tasks = make_job(tmp_path, tie=1)
    out = tmp_path / "out"
    lost = {"at": [1], "endpoints": ["submit"]}
    async with fault_emulator(answer_lost=lost, task_failed=lost) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert images_per_row(emu.billed()) == {"1": 1}
        assert billed_per_row(emu.billed()) == {"1": 2}  # two tasks, the first made nothing


async def test_a_sync_answer_later_than_its_timeout_is_uncertain(tmp_path: Path) -> None:
    tasks = make_job(tmp_path, vttie=2)
    out = tmp_path / "out"
    async with fault_emulator(stall={"at": [1], "endpoints": ["generation"]}, stall_s=2.0) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu, sync_timeout_s=0.5))
        (row,) = summary.failed  # the call whose answer came too late
        assert "uncertain" in (row.reason or "")
        assert billed_per_row(emu.billed()) == {"1": 1, "2": 1}


# --------------------------------------------------------------------------- still running


async def test_a_task_still_running_at_its_deadline_is_kept_not_paid_again(
    tmp_path: Path,
) -> None:
    """Tasks take longer than task_timeout_s: each is polled once past its deadline, the row
    fails "still running" and the task stays open; the rerun fetches it. Before: resubmitted
    at each timeout up to max_attempts (24 billed for 4 rows)."""
    tasks = make_job(tmp_path, t2i=4)
    out = tmp_path / "out"
    async with fault_emulator(time_scale=1.0) as emu:  # wanx t2i: seconds
        slow = settings_for(emu, task_timeout_s=0.3)
        summary = await run_all(tasks, out=out, settings=slow)
        assert summary.exit_code == 1
        assert all("still running" in (r.reason or "") for r in summary.failed), summary.failed
        assert billed_per_row(emu.billed()) == once_each(4)
        emu.advance(3600)  # an hour later every task has ended
        again = await run_all(tasks, out=out, settings=settings_for(emu))
        assert again.exit_code == 0, again.failed
        assert billed_per_row(emu.billed()) == once_each(4)
    assert not records(out, "task_closed")


# --------------------------------------------------------------------------- the clock


@pytest.mark.parametrize("step_s", [86400.0, 3600.0, -3600.0])
def test_a_wall_clock_step_during_the_run_pays_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step_s: float
) -> None:
    """The wall clock jumps (an NTP step, a laptop asleep) while tasks run; the service's
    clock does not (the emulator runs in its own process). Deadlines and polling are on the
    monotonic clock: nothing is closed unpolled and nothing stalls. Before: +1 day closed
    every task in flight and paid again (12 billed for 8 rows); -1 h froze polling."""
    import time as time_mod

    from conftest import emulator_get, emulator_process

    tasks = make_job(tmp_path, t2i=4, tie=2)
    out = tmp_path / "out"
    with emulator_process("--time-scale", "0.3", "--no-quotas") as port:
        real = time_mod.time
        started = real()

        def stepped() -> float:  # the step comes 0.3 s into the run
            now = real()
            return now + step_s if now - started > 0.3 else now

        monkeypatch.setattr(time_mod, "time", stepped)
        settings = load_settings(
            api_key=KEY,
            base_url=f"http://127.0.0.1:{port}/api/v1",
            poll_first_s=0.01,
            backoff_max_s=0.05,
            size="512*512",
            task_timeout_s=60,
            judge={"enabled": False},
            models={"t2i": [T2I], "tie": [EDIT]},
            candidates={"t2i": 1, "tie": 1},
            quotas={m: FAST for m in (T2I, EDIT)},
        )
        t0 = time_mod.monotonic()
        summary = asyncio.run(run_all(tasks, out=out, settings=settings))
        took = time_mod.monotonic() - t0
        monkeypatch.setattr(time_mod, "time", real)
        billed = emulator_get(port, "/_emulator/billed")
    assert summary.exit_code == 0, summary.failed
    assert billed_per_row(billed) == once_each(6)
    assert took < 30  # a backward step froze nothing


def test_a_runner_stopped_past_the_task_timeout_polls_once_more_then_takes_it(
    tmp_path: Path,
) -> None:
    """SIGSTOP of the runner for longer than task_timeout_s while its tasks run (a laptop lid,
    a debugger): on SIGCONT each task past its deadline is polled once more and taken.
    Before: closed unpolled and paid again."""
    import signal
    import subprocess
    import sys
    import time as time_mod

    from conftest import emulator_get, emulator_process

    tasks = make_job(tmp_path, t2i=3)
    out = tmp_path / "out"
    (tmp_path / "s.toml").write_text(
        'models = {t2i = ["wanx2.1-t2i-turbo"]}\ncandidates = {t2i = 1}\n'
        'size = "512*512"\npoll_first_s = 0.01\ntask_timeout_s = 2\n'
        "[judge]\nenabled = false\n"
        '[quotas."wanx2.1-t2i-turbo"]\nsubmits_per_second = 100\nin_flight = 8\n',
        encoding="utf-8",
    )
    with emulator_process("--time-scale", "0.5", "--no-quotas") as port:
        env = {
            **os.environ,
            "DASHSCOPE_API_KEY": KEY,
            "DASHSCOPE_HTTP_BASE_URL": f"http://127.0.0.1:{port}/api/v1",
        }
        cmd = [sys.executable, "-m", "runner", "--tasks", str(tasks), "--out", str(out)]
        cmd += ["--settings", str(tmp_path / "s.toml"), "-q"]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path
        )
        deadline = time_mod.time() + 60
        while len(emulator_get(port, "/_emulator/billed")) < 3 and time_mod.time() < deadline:
            time_mod.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        time_mod.sleep(5)  # past the 2 s timeout; the tasks end meanwhile
        proc.send_signal(signal.SIGCONT)
        output, _ = proc.communicate(timeout=120)
        billed = emulator_get(port, "/_emulator/billed")
    assert proc.returncode == 0, output.decode(errors="replace")[-2000:]
    assert billed_per_row(billed) == once_each(3)


# --------------------------------------------------------------------------- spend


def test_a_budget_counts_a_killed_runs_requests(tmp_path: Path) -> None:
    """A run SIGKILLed mid-way has journaled its sends but no run_end: a rerun with the same
    budget counts them (and the killed run's requests in flight at their full n). Before: a
    budget of 30 could spend 60."""
    import signal
    import subprocess
    import sys
    import time as time_mod

    from conftest import emulator_get, emulator_process

    tasks = make_job(tmp_path, t2i=12)
    out = tmp_path / "out"
    (tmp_path / "s.toml").write_text(
        'models = {t2i = ["wanx2.1-t2i-turbo"]}\ncandidates = {t2i = 1}\n'
        'size = "512*512"\npoll_first_s = 0.01\nregion = "cn"\n'
        "[judge]\nenabled = false\n"
        '[quotas."wanx2.1-t2i-turbo"]\nsubmits_per_second = 100\nin_flight = 3\n'
        '[prices.cn]\ncurrency = "CNY"\n"wanx2.1-t2i-turbo" = 1.0\n',
        encoding="utf-8",
    )
    with emulator_process("--time-scale", "0.3", "--no-quotas") as port:
        env = {
            **os.environ,
            "DASHSCOPE_API_KEY": KEY,
            "DASHSCOPE_HTTP_BASE_URL": f"http://127.0.0.1:{port}/api/v1",
        }
        cmd = [sys.executable, "-m", "runner", "--tasks", str(tasks), "--out", str(out)]
        cmd += ["--settings", str(tmp_path / "s.toml"), "-q", "--budget", "8"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, cwd=tmp_path)
        deadline = time_mod.time() + 60
        while len(emulator_get(port, "/_emulator/billed")) < 5 and time_mod.time() < deadline:
            time_mod.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed = len(emulator_get(port, "/_emulator/billed"))
        assert killed >= 5
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
        billed = emulator_get(port, "/_emulator/billed")
    print(f"BUDGET killed run billed {killed}, in all {len(billed)}")
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # the budget stopped it
    assert killed <= len(billed) <= 8, (killed, len(billed))  # 8 images of 1.0 at most
    assert max(billed_per_row(billed).values()) == 1
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert sum(r["images"] for r in summary["billed"]) == len(billed)


async def test_spend_counts_the_images_returned_not_the_n_asked(tmp_path: Path) -> None:
    """Two candidates a row, half of each n = 2 task's images failed: a row asks 2 + 1
    images and is billed 2; the ledger counts 2, not the 3 asked."""
    tasks = make_job(tmp_path, t2i=2)
    out = tmp_path / "out"
    async with fault_emulator(partial_success={"probability": 1.0}) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu, candidates={"t2i": 2}))
        assert summary.exit_code == 0, summary.failed
        assert images_per_row(emu.billed()) == {"1": 2, "2": 2}
        assert sum(b["n"] for b in emu.billed()) == 6
    assert [(r["model"], r["images"]) for r in summary.billed] == [(T2I, 4)]
    assert replay(out / JOURNAL_NAME).book.billed() == {T2I: 4}


# --------------------------------------------------------------------------- the folder


async def _wait_for(condition: Any, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


async def test_deleting_the_lock_file_lets_no_second_runner_in(tmp_path: Path) -> None:
    """The lock is on the folder: the note file can go, the lock holds. Before: 22 of 30 rows
    billed twice by a second runner."""
    tasks = make_job(tmp_path, t2i=4)
    out = tmp_path / "out"
    async with fault_emulator(time_scale=0.3) as emu:
        first = asyncio.ensure_future(run_all(tasks, out=out, settings=settings_for(emu)))
        await _wait_for(lambda: (out / ".runner.lock").exists())
        (out / ".runner.lock").unlink()
        with pytest.raises(FolderBusy, match="in use by another runner"):
            OutLock(out, "run").acquire()
        with pytest.raises(FolderBusy):
            await run_all(tasks, out=out, settings=settings_for(emu))
        summary = await first
        assert summary.exit_code == 0
        assert billed_per_row(emu.billed()) == once_each(4)


async def test_a_journal_deleted_mid_run_is_written_again_whole(tmp_path: Path) -> None:
    """Before: the run wrote into the unlinked file, exited 0, and the rerun paid every row
    again. Now the next commit restores it from the open file, earlier runs included."""
    tasks = make_job(tmp_path, t2i=4)
    out = tmp_path / "out"
    async with fault_emulator(time_scale=0.3) as emu:
        run = asyncio.ensure_future(run_all(tasks, out=out, settings=settings_for(emu)))
        await _wait_for(lambda: len(emu.billed()) >= 2)
        (out / JOURNAL_NAME).unlink()
        summary = await run
        assert summary.exit_code == 0
        assert len(records(out, "submitted")) == 4 and len(records(out, "run_start")) == 1
        again = await run_all(tasks, out=out, settings=settings_for(emu))
        assert again.exit_code == 0 and all(r.status == "skipped" for r in again.rows)
        assert billed_per_row(emu.billed()) == once_each(4)


async def test_a_journal_replaced_mid_run_stops_the_run_keeping_its_records(
    tmp_path: Path,
) -> None:
    tasks = make_job(tmp_path, t2i=4)
    out = tmp_path / "out"
    async with fault_emulator(time_scale=0.3) as emu:
        run = asyncio.ensure_future(run_all(tasks, out=out, settings=settings_for(emu)))
        await _wait_for(lambda: len(emu.billed()) >= 2)
        stale = out / "stale.jsonl"
        stale.write_text('{"ev": "run_start", "t": 1.0}\n', encoding="utf-8")
        os.replace(stale, out / JOURNAL_NAME)
        summary = await run
        assert summary.exit_code == 3
        assert "was replaced" in (summary.stopped_reason or "")
        state = replay(out / JOURNAL_NAME)  # the old content, this run's records after it
        paid = {p.task_id for p in state.book.requests.values() if p.task_id}
        assert len(paid) == len(emu.billed())
        again = await run_all(tasks, out=out, settings=settings_for(emu))
        assert again.exit_code == 0
        assert billed_per_row(emu.billed()) == once_each(4)


# --------------------------------------------------------------------------- a wrong service


async def test_a_task_id_already_another_rows_is_no_proof(tmp_path: Path) -> None:
    """The service answers a submit with an earlier row's task id: the request is uncertain,
    found again by its prompt, and every row gets its own picture. Before: 4 rows got another
    row's image, exit 0."""
    tasks = make_job(tmp_path, t2i=4)
    out = tmp_path / "out"
    async with fault_emulator(duplicate_task_id={"at": [2, 4]}) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert billed_per_row(emu.billed()) == once_each(4)
        owners = {b["id"]: b["prompt"] for b in emu.billed()}
    for rec in records(out, "done"):
        assert f"tag{rec['index']}x" in owners[rec["task_id"]]


@pytest.mark.parametrize("fault", ["poll_other_task", "poll_no_task_id"])
async def test_a_poll_answer_about_another_task_is_refused(tmp_path: Path, fault: str) -> None:
    tasks = make_job(tmp_path, t2i=3)
    out = tmp_path / "out"
    async with fault_emulator(**{fault: {"every_n": 2}}) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert billed_per_row(emu.billed()) == once_each(3)
        owners = {b["id"]: b["prompt"] for b in emu.billed()}
    for rec in records(out, "done"):
        assert f"tag{rec['index']}x" in owners[rec["task_id"]]


async def test_more_images_than_asked_are_refused_and_counted(tmp_path: Path) -> None:
    tasks = make_job(tmp_path, t2i=1)
    out = tmp_path / "out"
    async with fault_emulator(extra_images={"at": [1]}) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert images_per_row(emu.billed()) == {"1": 3}  # 2 for 1 asked, then 1
        assert paid_twice(out, emu.billed()) == {}
    assert replay(out / JOURNAL_NAME).book.billed() == {T2I: 3}


# --------------------------------------------------------------------------- rehearsals


async def test_an_interrupted_rehearsal_run_again_finishes(tmp_path: Path) -> None:
    """The emulator's tasks die with it: a rehearsal stopped mid-way and run again makes its
    rows anew on the new emulator instead of asking it for the old one's tasks. Before:
    exit 3 every time."""
    tasks = make_job(tmp_path, t2i=4, vttie=1)
    out = tmp_path / "out"
    settings = load_settings(
        judge={"enabled": False},
        models={"t2i": [T2I], "tie": [EDIT], "vttie": [SYNC]},
        candidates={"t2i": 1, "vttie": 1},
        emulator={"time_scale": 0.3},
    )
    first = asyncio.ensure_future(run_all(tasks, out=out, settings=settings))
    await _wait_for(lambda: (out / JOURNAL_NAME).exists() and records(out, "submitted"))
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    again = await run_all(tasks, out=out, settings=settings)
    assert again.exit_code == 0, again.failed


# --------------------------------------------------------------------------- exact cases

BASE = "https://dashscope.test/api/v1"
T2I_URL = f"{BASE}/services/aigc/text2image/image-synthesis"
RESULT = "https://oss.test/r/1.png?Expires=1&Signature=s"
DENIED = {"code": "AccessDenied", "message": "Access denied."}


def _exact(**kw: Any) -> Settings:
    base: dict[str, Any] = {
        "api_key": KEY,
        "base_url": BASE,
        "poll_first_s": 0.01,
        "backoff_max_s": 0.05,
        "judge": {"enabled": False},
        "models": {"t2i": [T2I]},
        "candidates": {"t2i": 1},
        "quotas": {T2I: FAST},
    }
    base.update(kw)
    return load_settings(**base)


async def test_a_poll_refused_for_good_fails_the_row_and_keeps_the_task(tmp_path: Path) -> None:
    """A 403 on a poll (the task exists; the poll is refused): the row fails with the task
    kept, once, and the rerun fetches it. Before: the error carried no model, the row "set
    aside" '' and sent paid submits in a loop with no pause (51 in a probe)."""
    from conftest import png_bytes
    from http_fakes import FakeTransport

    tasks = make_job(tmp_path, t2i=1)
    out = tmp_path / "out"
    submitted = {"output": {"task_id": "t-1", "task_status": "PENDING"}, "request_id": "r"}
    done = {"output": {"task_id": "t-1", "task_status": "SUCCEEDED", "results": [{"url": RESULT}]}}
    with FakeTransport() as m:
        m.post(T2I_URL, payload=submitted, repeat=True)
        m.get(f"{BASE}/tasks/t-1", status=403, payload=DENIED, repeat=True)
        first = await run_all(tasks, out=out, settings=_exact())
        assert len(m.calls("POST", T2I_URL)) == 1
    assert first.exit_code == 1 and "kept" in (first.failed[0].reason or "")
    with FakeTransport() as m:
        m.get(f"{BASE}/tasks/t-1", payload=done)
        m.get(RESULT, body=png_bytes(), content_type="image/png")
        again = await run_all(tasks, out=out, settings=_exact())
        assert not m.calls("POST", T2I_URL)  # fetched, not paid again
    assert again.exit_code == 0, again.failed


async def test_a_resumed_task_whose_poll_is_refused_fails_cleanly(tmp_path: Path) -> None:
    """Before: "internal error", and the task never closed."""
    from http_fakes import FakeTransport

    tasks = make_job(tmp_path, t2i=1)
    out = tmp_path / "out"
    submitted = {"output": {"task_id": "t-1", "task_status": "PENDING"}, "request_id": "r"}
    running = {"output": {"task_id": "t-1", "task_status": "RUNNING"}}
    with FakeTransport() as m:
        m.post(T2I_URL, payload=submitted)
        m.get(f"{BASE}/tasks/t-1", payload=running, repeat=True)
        first = await run_all(tasks, out=out, settings=_exact(task_timeout_s=0.2))
    assert "still running" in (first.failed[0].reason or "")
    with FakeTransport() as m:
        m.get(f"{BASE}/tasks/t-1", status=403, payload=DENIED, repeat=True)
        again = await run_all(tasks, out=out, settings=_exact())
        assert not m.calls("POST", T2I_URL)
    (row,) = again.failed
    assert "internal error" not in (row.reason or "") and "kept" in (row.reason or "")
    assert [p.task_id for p in replay(out / JOURNAL_NAME).rows["1"].pending] == ["t-1"]


@pytest.mark.parametrize("lost", [False, True])
async def test_a_prompt_that_looks_like_a_secret_is_still_its_own(
    tmp_path: Path, lost: bool
) -> None:
    """Words shaped like a key or a token ("a standard bearer holding ...", "sk-...") are
    redacted on disk; the service's copy of the prompt is still recognised as the one sent,
    by the wait and by the search for a lost answer. Before: each row taken for another
    request's task, sent again 6 times, 13 billed for 2 rows, the summary counting 1."""
    texts = (
        "a standard bearer holding a flag",
        "a street sign that reads sk-ChangeLaneNow",
        "Bearer abc.def-123 written on a wall",
    )
    rows = [(str(i), "t2i", row_prompt(i, t), "", "") for i, t in enumerate(texts, 1)]
    tasks = write_tasks(tmp_path / "task.csv", rows)
    out = tmp_path / "out"
    faults: dict[str, Any] = {}
    if lost:
        faults["answer_lost"] = {"every_n": 1, "endpoints": ["submit"]}
    async with fault_emulator(time_scale=0.005, **faults) as emu:
        summary = await run_all(tasks, out=out, settings=settings_for(emu))
        assert summary.exit_code == 0, summary.failed
        assert billed_per_row(emu.billed()) == once_each(3)
    journal = (out / JOURNAL_NAME).read_text(encoding="utf-8")
    assert "sk-ChangeLaneNow" not in journal  # still redacted on disk
    assert len([r for r in records(out, "submitted") if r.get("adopted")]) == (3 if lost else 0)


async def test_requests_sent_at_once_never_pass_the_budget(tmp_path: Path) -> None:
    """Eight slots free at once and each asks the budget before any is on disk: the
    budget counts the sends still being written. Before: a budget of 5 images paid 8."""
    tasks = make_job(tmp_path, t2i=12)
    async with fault_emulator(time_scale=0.02) as emu:
        settings = settings_for(
            emu, budget=5.0, prices={"cn": {"currency": "CNY", T2I: 1.0}}, region="cn"
        )
        summary = await run_all(tasks, out=tmp_path / "out", settings=settings)
        billed = emu.billed()
    assert summary.exit_code == 1  # the budget held the rest back
    assert len(billed) == 5, len(billed)
    assert max(billed_per_row(billed).values()) == 1


async def test_a_refusal_binds_a_rerun_only_where_it_was_made(tmp_path: Path) -> None:
    """A row every model refused for its content is bad input, held on a plain rerun with
    the same service; one that a model set aside for the run never saw stays "failed",
    and a verdict from one service (here one emulator) does not hold on another."""
    rows = [("1", "t2i", row_prompt(1, "a red bicycle"), "", "")]
    tasks = write_tasks(tmp_path / "task.csv", rows)
    refusing = {"data_inspection_words": ["bicycle"]}
    async with fault_emulator(**refusing) as emu:
        alone = settings_for(emu)
        first = await run_all(tasks, out=tmp_path / "a", settings=alone)
        assert [r.status for r in first.rows] == ["bad"]
        again = await run_all(tasks, out=tmp_path / "a", settings=alone)
        assert "not tried again" in (again.rows[0].reason or "")
        with_unserved = settings_for(emu, models={"t2i": [T2I, "no-such-model"]})
        other = await run_all(tasks, out=tmp_path / "b", settings=with_unserved)
        assert [r.status for r in other.rows] == ["failed"], other.rows[0].reason
    async with fault_emulator() as emu2:  # another service, which refuses nothing
        moved = await run_all(tasks, out=tmp_path / "a", settings=settings_for(emu2))
        assert [r.status for r in moved.rows] == ["done"], moved.rows[0].reason
        assert billed_per_row(emu2.billed()) == once_each(1)
