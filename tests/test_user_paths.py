"""The user's paths around the core run (issue 13): a safe submit, the script and notebook
API, a dead network, cost up front (dry run, budget), the whole folder in the summary and
report, Ctrl-C and SIGTERM, and the small items of the closing list."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import free_port, make_image, write_tasks
from rich.console import Console

from runner import run_all
from runner.cli import print_summary
from runner.outcomes import RowResult, RunSummary
from runner.outputs.submit import SubmitRefused, pack
from runner.settings import RegionPrices, load_settings
from runner.store.fingerprint import fingerprints, tasklist_fingerprint
from runner.store.journal import Journal, replay
from runner.tasks import load_tasks

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "RUNNER_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _cli(*args: str, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _fast_settings(folder: Path, extra: str = "") -> Path:
    path = folder / "fast.toml"
    path.write_text(
        "poll_first_s = 0.02\nbackoff_max_s = 0.2\n[emulator]\ntime_scale = 0.01\n" + extra,
        encoding="utf-8",
    )
    return path


def _t2i_rows(n: int, start: int = 1) -> list[tuple[str, ...]]:
    return [(str(i), "t2i", f"a red fox number {i}", "", "") for i in range(start, start + n)]


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    s = load_settings(poll_first_s=0.02, backoff_max_s=0.2)
    return s.model_copy(update={"emulator": s.emulator.model_copy(update={"time_scale": 0.01})})


# --------------------------------------------------------------------------- 1. submit


async def test_submit_refuses_an_empty_folder_and_another_task_list(
    job, tmp_path: Path, quick
) -> None:
    with pytest.raises(SubmitRefused, match="holds no run"):
        pack(tmp_path / "typo", "team", allow_emulated=True)
    assert not (tmp_path / "typo").exists()  # nothing written, not even the folder

    tasks = job(_t2i_rows(3) + [("4", "tie", "make it blue", "a.png", "")])
    out = tmp_path / "out"
    started = Journal(out)  # a run that started and made nothing (killed, dead network)
    started.write_sync("run_start", run="r0", tasks=str(tasks.resolve()))
    started.close()
    with pytest.raises(SubmitRefused, match=r"no row of the run .* has a result"):
        pack(out, "team", allow_emulated=True)
    await run_all(tasks, out=out, settings=quick, progress=False)
    other = write_tasks(tmp_path / "other.csv", _t2i_rows(4))  # the sample's, say
    with pytest.raises(SubmitRefused, match="not the task list the run"):
        pack(out, "team", tasks=other, allow_emulated=True)
    assert not list(out.glob("*.zip"))
    # a copy of the same list elsewhere is the same list: packed
    same = tmp_path / "copy.csv"
    shutil.copy(tasks, same)
    assert pack(out, "team", tasks=same, images=tmp_path / "imgs", allow_emulated=True).rows == 4


async def test_submit_refuses_a_row_changed_since_its_image(job, tmp_path: Path, quick) -> None:
    tasks = job([("1", "tie", "make it blue", "a.png", ""), *_t2i_rows(2, start=2)])
    out = tmp_path / "out"
    await run_all(tasks, out=out, settings=quick, progress=False)
    # the source changes, and a run of the changed list starts but is killed at once: the
    # journal's last run is this list, while row 1's image was made from the old source
    (tmp_path / "imgs" / "a.png").write_bytes((tmp_path / "imgs" / "a.png").read_bytes() + b"x")
    changed = load_tasks(tasks)
    j = Journal(out)
    j.write_sync(
        "run_start",
        run="killed",
        tasks=str(tasks.resolve()),
        tasks_fp=tasklist_fingerprint(changed, fingerprints(changed)),
    )
    j.close()
    with pytest.raises(SubmitRefused, match=r"1 row\(s\) changed .*rows 1\)"):
        pack(out, "team", allow_emulated=True)


def test_make_submit_passes_only_what_it_is_given(tmp_path: Path) -> None:
    """`make submit` in a temporary copy of the Makefile: no --sample, no --tasks unless
    TASKS= is given, so the run's own task list is packed (and nothing else is written)."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    res = subprocess.run(
        ["make", "-s", "submit", "OUT=nowhere", "TEAM=t"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert "holds no run" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "nowhere").exists()  # no sample/ written anywhere
    dry = subprocess.run(
        ["make", "-n", "submit", "OUT=o", "TEAM=t"], cwd=tmp_path, capture_output=True, text=True
    )
    assert "--sample" not in dry.stdout and "--tasks" not in dry.stdout
    dry = subprocess.run(
        ["make", "-n", "submit", "OUT=o", "TEAM=t", "TASKS=x.csv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert '--tasks "x.csv"' in dry.stdout


def test_make_submit_packs_the_runs_own_list(job, tmp_path: Path) -> None:
    tasks = job(_t2i_rows(2))
    fast = _fast_settings(tmp_path)
    res = _cli("--tasks", str(tasks), "--out", "out", "--settings", str(fast), "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    res = subprocess.run(
        ["make", "-s", "submit", "OUT=out", "TEAM=t", "SUBMIT_FLAGS=--allow-emulated"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert f"2 rows of {tasks.resolve()}" in res.stdout
    assert not (tmp_path / "out" / "sample").exists()


# --------------------------------------------------------------------------- 2. script API

_SCRIPT = """
import sys
import runner

{body}
"""


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    path = tmp_path / "myjob.py"
    path.write_text(_SCRIPT.format(body=textwrap.dedent(body)), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=_env(RUNNER_POLL_FIRST_S="0.02", RUNNER_EMULATOR__TIME_SCALE="0.01"),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_script_runs_twice_under_the_guard(job, tmp_path: Path) -> None:
    job(_t2i_rows(2))
    res = _script(
        tmp_path,
        """
        if __name__ == "__main__":
            a = runner.run("task.csv", out="out", progress=False)
            b = runner.run("task.csv", out="out", progress=False)
            print("codes", a.exit_code, b.exit_code, sum(r.status == "skipped" for r in b.rows))
        """,
    )
    assert res.returncode == 0, res.stderr
    assert "codes 0 0 2" in res.stdout


def test_script_without_the_guard_refuses_in_one_line(job, tmp_path: Path) -> None:
    job([("1", "deepfake", "", "f1.png", "f2.png"), *_t2i_rows(1, start=2)])
    t0 = time.monotonic()
    res = _script(tmp_path, 'summary = runner.run("task.csv", out="out")\n')
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert 'if __name__ == "__main__":' in lines[0] and "myjob.py:5" in lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "out" / "imgs").exists()  # refused before anything started
    assert time.monotonic() - t0 < 60


def test_spawned_child_refuses_at_once(tmp_path: Path) -> None:
    """The backstop: a worker that re-imports a script calling runner leaves with one line."""
    res = _script(
        tmp_path,
        """
        import multiprocessing
        from runner.script_guard import check_script_guard

        if __name__ == "__mp_main__":  # the worker's re-import, which the parent's check
            check_script_guard()  # would have caught from the source: the backstop alone

        def noop():
            pass

        if __name__ == "__main__":
            p = multiprocessing.get_context("spawn").Process(target=noop)
            p.start()
            p.join(60)
            print("child exit", p.exitcode)
        """,
    )
    assert "child exit 1" in res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "spawned worker" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------- 3. dead network


def test_dead_network_stops_with_exit_3_and_one_line(job, tmp_path: Path) -> None:
    # enough rows that attempts go on past the breaker's window (about 30 s)
    tasks = job(_t2i_rows(80))
    port = free_port()  # bound then released: nothing listens there
    t0 = time.monotonic()
    res = _cli(
        "--tasks",
        str(tasks),
        "--out",
        "out",
        "-q",
        cwd=tmp_path,
        timeout=180,
        DASHSCOPE_API_KEY="sk-test0000000000000000",
        DASHSCOPE_HTTP_BASE_URL=f"http://127.0.0.1:{port}/api/v1",
    )
    elapsed = time.monotonic() - t0
    assert res.returncode == 3, res.stdout + res.stderr
    assert elapsed < 120
    stopped = [line for line in res.stdout.splitlines() if "Run stopped" in line]
    assert len(stopped) == 1 and f"127.0.0.1:{port}" in stopped[0]
    # the rows the stop left are counted, not listed one by one with the same reason
    assert re.search(r"\d+ row\(s\) not finished", res.stdout)
    assert len(res.stdout.splitlines()) < 60
    assert "Traceback" not in res.stdout + res.stderr
    assert (tmp_path / "out" / "failed.csv").is_file()
    assert (tmp_path / "out" / "journal.jsonl").is_file()


# --------------------------------------------------------------------------- 4. every run


async def test_summary_and_report_cover_every_run(job, tmp_path: Path, quick) -> None:
    tasks = job(_t2i_rows(3))
    out = tmp_path / "out"
    first = await run_all(tasks, out=out, settings=quick, progress=False)
    write_tasks(tasks, _t2i_rows(5))  # two rows added
    second = await run_all(tasks, out=out, settings=quick, progress=False)
    assert first.submits == 3 and second.submits == 2
    assert [r["submits"] for r in second.runs] == [3, 2]
    assert all(r["ended"] and r["elapsed_s"] > 0 for r in second.runs)
    billed = {b["model"]: b["images"] for b in second.billed}
    assert sum(billed.values()) == 5  # the whole folder, not the last invocation
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(data["runs"]) == 2
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Runs in this folder" in page
    assert page.count("<td>emulator</td>") == 2
    assert "5 images billed" in page


# --------------------------------------------------------------------------- 5. notebook


async def test_api_notices_short_repr_and_frame(
    job, tmp_path: Path, quick, capfd: pytest.CaptureFixture[str]
) -> None:
    tasks = job([*_t2i_rows(2), ("9", "tie", "edit", "gone.png", "")])
    (tmp_path / "imgs" / "gone.png").unlink()
    summary = await run_all(tasks, out=tmp_path / "out", settings=quick)
    err = capfd.readouterr().err
    assert "EMULATOR" in err  # the same notices as the CLI, through logging
    assert "row 9 (tie, bad input)" in err and "gone.png" in err
    assert f"1 row(s) not done (listed in {tmp_path / 'out' / 'failed.csv'})" in err
    text = repr(summary)
    assert len(text) < 300 and text == str(summary)
    assert "2 done" in text and "1 bad" in text and "exit 1" in text
    frame = summary.to_frame()
    assert list(frame["index"]) == ["1", "2", "9"]
    assert set(frame.columns) >= {"index", "task_type", "status", "reason", "model"}


# --------------------------------------------------------------------------- cost


def test_dry_run_prints_cost_and_duration_without_a_request(job, tmp_path: Path) -> None:
    tasks = job(
        [
            *_t2i_rows(40),
            ("41", "tie", "edit", "gone.png", ""),
            ("42", "tie", "e", "junk.png", ""),
            ("43", "deepfake", "", "junk.png", "face.png"),
        ]
    )
    (tmp_path / "imgs" / "gone.png").unlink()
    (tmp_path / "imgs" / "junk.png").write_bytes(b"not a picture at all")
    settings = tmp_path / "intl.toml"
    settings.write_text(
        'region = "intl"\n[models]\nt2i = ["wan2.1-t2i-turbo"]\n[candidates]\nt2i = 2\n'
        '[prices.intl]\ncurrency = "USD"\n"wan2.1-t2i-turbo" = 0.025\n',
        encoding="utf-8",
    )
    res = _cli(
        "--tasks",
        str(tasks),
        "--out",
        "out",
        "--settings",
        str(settings),
        "--dry-run",
        cwd=tmp_path,
        DASHSCOPE_API_KEY="sk-test0000000000000000",
        DASHSCOPE_HTTP_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1",  # never asked
    )
    assert res.returncode == 1, res.stdout + res.stderr  # the bad row is named
    out = res.stdout
    assert "row 41 (tie, bad input)" in out
    # in the run's words, with the task type
    assert "row 42 (tie, bad input): ori_image: junk.png: not an image file" in out
    assert (
        "row 43 (deepfake, bad input): ori_image is not a readable image: junk.png: not an "
        "image file"
    ) in out
    assert "3 unusable" in out
    assert "wan2.1-t2i-turbo" in out and "80" in out  # 40 rows x 2 candidates
    assert "2.00 USD" in out  # 80 x $0.025, the intl page's list price
    # quota bound: 40 requests (n=2 in one) at min(2/s, 2 in flight / 10 s) = 0.2/s
    assert "at least 3m 20s" in out
    assert not (tmp_path / "out").exists()  # nothing run, nothing written


async def test_budget_stops_submitting_and_names_the_rows(job, tmp_path: Path, quick) -> None:
    tasks = job(_t2i_rows(8))
    settings = quick.model_copy(
        update={
            "models": {**quick.models, "t2i": ["wanx2.1-t2i-turbo"]},
            "prices": {
                **quick.prices,
                quick.region: RegionPrices(currency="CNY", per_image={"wanx2.1-t2i-turbo": 0.2}),
            },
            "budget": 0.5,
        }
    )
    summary = await run_all(tasks, out=tmp_path / "out", settings=settings, progress=False)
    done = [r for r in summary.rows if r.status == "done"]
    assert len(done) == 2  # 0.4 spent; a third image would pass 0.5
    assert summary.exit_code == 1
    assert all("budget" in (r.reason or "") for r in summary.failed) and len(summary.failed) == 6
    assert summary.billed == [
        {
            "model": "wanx2.1-t2i-turbo",
            "images": 2,
            "price": 0.2,
            "cost": pytest.approx(0.4),
            "currency": "CNY",
        }
    ]
    # a budget that cannot see a model's price guards nothing: refused before any request
    with pytest.raises(Exception, match="needs a list price"):
        await run_all(
            tasks,
            out=tmp_path / "out2",
            settings=quick.model_copy(
                update={"budget": 1.0, "models": {**quick.models, "t2i": ["wanx2.1-t2i-turbo"]}}
            ),
            progress=False,
        )


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_writes_the_closing_files(job, tmp_path: Path, sig: int, code: int) -> None:
    tasks = job(_t2i_rows(12))
    slow = tmp_path / "slow.toml"
    slow.write_text("[emulator]\ntime_scale = 1.0\n", encoding="utf-8")  # 5-15 s a task
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "--tasks", str(tasks), "--out", "out"]
        + ["--settings", str(slow), "-q"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    journal = tmp_path / "out" / "journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.is_file() and '"sending"' in journal.read_text(encoding="utf-8"):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the run never sent a request")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stdout + stderr
    name = signal.Signals(sig).name
    assert f"Interrupted ({name})" in stdout and "Traceback" not in stdout + stderr
    out = tmp_path / "out"
    failed = (out / "failed.csv").read_text(encoding="utf-8-sig")
    assert "interrupted" in failed
    assert json.loads((out / "summary.json").read_text())["interrupted"] == name
    assert (out / "report.html").is_file()
    state = replay(journal)
    assert [r.get("interrupted") for r in state.runs_info if r.get("ev") == "run_end"] == [name]


# --------------------------------------------------------------------------- 6. small items


def _printed(summary: RunSummary) -> str:
    console = Console(record=True, width=200)
    print_summary(console, summary, Path("out"))
    return console.export_text()


def _summary(*rows: RowResult, emulated: bool = True) -> RunSummary:
    return RunSummary(rows=list(rows), elapsed_s=1.0, emulated=emulated, backend="emulator")


def test_closing_list_says_run_again_only_for_rows_that_can_succeed() -> None:
    bad = RowResult(index="1", task_type="tie", status="bad", reason="'x.png' not found")
    text = _printed(_summary(bad))
    assert "Run the same command again" not in text
    assert "bad input" in text and "out/failed.csv" in text
    failed = RowResult(index="2", task_type="t2i", status="failed", reason="gave up")
    text = _printed(_summary(bad, failed))
    assert "Run the same command again to retry the 1 failed" in text


def test_no_emulator_line_for_a_deepfake_only_run() -> None:
    swap = RowResult(index="1", task_type="deepfake", status="done", emulated=False)
    assert "EMULATOR" not in _printed(_summary(swap))
    api = RowResult(index="2", task_type="t2i", status="done", emulated=True)
    assert "EMULATOR" in _printed(_summary(swap, api))


def test_report_command_prints_one_line_and_rejudge_finds_the_list(job, tmp_path: Path) -> None:
    job(_t2i_rows(4))
    fast = _fast_settings(tmp_path)
    # a relative --tasks in the task file's folder ...
    res = _cli("--tasks", "task.csv", "--out", "out", "--settings", str(fast), "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = str(tmp_path / "out")
    # ... is found again from another folder (absolute in the journal)
    rep = _cli("report", "--out", out, cwd=elsewhere)
    assert rep.returncode == 0 and rep.stderr == ""
    assert rep.stdout.strip().splitlines() == [f"wrote {out}/report.html"]
    rej = _cli("rejudge", "--out", out, "--settings", str(fast), cwd=elsewhere)
    assert rej.returncode == 0, rej.stderr
    assert "rejudged 4 rows" in rej.stdout
    none = _cli("report", "--out", str(tmp_path / "empty"), cwd=elsewhere)
    assert none.returncode == 2 and "holds no run" in none.stderr


def test_missing_source_is_bad_input_everywhere(job, tmp_path: Path) -> None:
    tasks = job([*_t2i_rows(1), ("2", "tie", "edit", "gone.png", "")])
    (tmp_path / "imgs" / "gone.png").unlink()
    res = _cli(
        "--tasks",
        str(tasks),
        "--out",
        "out",
        "--settings",
        str(_fast_settings(tmp_path)),
        cwd=tmp_path,
    )
    assert res.returncode == 1
    assert "row 2 (tie, bad input)" in res.stdout  # progress notice and closing list
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'data-status="bad input"' in page and 'data-status="failed"' not in page
    failed = (tmp_path / "out" / "failed.csv").read_text(encoding="utf-8-sig")
    assert "2,tie,bad input," in failed  # the status as the README and the summary say it


async def test_deepfake_only_run_names_no_emulator(
    job, tmp_path: Path, quick, capfd: pytest.CaptureFixture[str]
) -> None:
    tasks = job([("1", "deepfake", "", "f1.png", "f2.png")])
    summary = await run_all(tasks, out=tmp_path / "out", settings=quick)
    err = capfd.readouterr().err
    assert "EMULATOR" not in err and "face swap only" in err
    assert not any(r.emulated for r in summary.rows)
    assert "EMULATOR" not in _printed(summary)


def test_api_names_are_not_shadowed_by_submodules() -> None:
    """Importing every submodule (as a run does) leaves runner.run a function."""
    import importlib
    import inspect
    import pkgutil

    import runner

    names = [m.name for m in pkgutil.iter_modules(runner.__path__)]
    assert not set(names) & set(runner.__all__)
    for name in names:
        if name != "__main__":
            importlib.import_module(f"runner.{name}")
    assert inspect.isfunction(runner.run) and inspect.iscoroutinefunction(runner.run_all)


def test_budget_flag_on_the_command_line(job, tmp_path: Path) -> None:
    tasks = job(_t2i_rows(5))
    fast = _fast_settings(
        tmp_path,
        '[models]\nt2i = ["wanx2.1-t2i-turbo"]\n'
        '[prices.cn]\ncurrency = "CNY"\n"wanx2.1-t2i-turbo" = 0.2\n',
    )
    args = ("--tasks", str(tasks), "--out", "out", "--settings", str(fast), "-q")
    res = _cli(*args, "--budget", "0.4", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "3 row(s) not done" in res.stdout
    assert "3 row(s) were not submitted: the budget 0.4 was reached" in res.stdout
    assert "Run the same command again" not in res.stdout  # it would stop there again
    assert "0.40 CNY" in res.stdout  # images billed and the estimated cost, per model
    # a rerun with a larger budget goes on; the folder's earlier spend counts against it
    res = _cli(*args, "--budget", "0.8", cwd=tmp_path)
    assert res.returncode == 1 and "1 row(s) not done" in res.stdout  # 0.4 + 0.4
    res = _cli(*args, "--budget", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1.00 CNY" in res.stdout  # 5 images over the three runs
    bad = _cli(*args, "--budget", "-1", cwd=tmp_path)
    assert bad.returncode == 2 and "budget" in bad.stderr


async def test_run_in_a_running_loop_says_to_await_run_all(tmp_path: Path) -> None:
    import runner
    from runner.errors import SettingsError

    with pytest.raises(SettingsError, match=r"await runner\.run_all"):
        runner.run(tmp_path / "task.csv")


async def test_submit_and_rejudge_wait_for_no_run(job, tmp_path: Path, quick) -> None:
    """A run holds the folder: submit and rejudge refuse with one line naming the holder."""
    from runner.outputs.rejudge import rejudge
    from runner.store.lock import FolderBusy, OutLock

    tasks = job(_t2i_rows(1))
    out = tmp_path / "out"
    await run_all(tasks, out=out, settings=quick, progress=False)
    with OutLock(out, "run"):
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):
            pack(out, "team", allow_emulated=True)
        with pytest.raises(FolderBusy, match="in use"):
            await rejudge(out, tasks, None, quick, client=None)  # type: ignore[arg-type]
    assert pack(out, "team", allow_emulated=True).rows == 1  # free again


# --------------------------------------------------------------------------- issue 25


_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def test_quiet_script_still_names_the_bad_row(job, tmp_path: Path) -> None:
    """progress=False hides the display only: the banner, the bad row and the closing line
    reach the script's stderr as plain lines."""
    job([*_t2i_rows(1), ("2", "tie", "make it blue", "gone.png", "")])
    (tmp_path / "imgs" / "gone.png").unlink()
    res = _script(
        tmp_path,
        """
        if __name__ == "__main__":
            raise SystemExit(runner.run("task.csv", out="out", progress=False).exit_code)
        """,
    )
    assert res.returncode == 1, res.stderr
    lines = res.stderr.splitlines()
    assert any("EMULATOR" in line for line in lines)
    assert "row 2 (tie, bad input): ori_image 'gone.png' not found in imgs" in lines
    closing = [line for line in lines if line.startswith("RunSummary(")]
    assert len(closing) == 1 and "1 row(s) not done" in closing[0]
    assert "fix the rows with bad input" in closing[0]  # no rerun offered: it cannot help
    assert not any(_TIMESTAMP.search(line) or "[warning" in line for line in lines), lines
    assert "Traceback" not in res.stderr


def test_notebook_without_ipywidgets_gets_progress_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rich's live display needs ipywidgets in Jupyter: without them, lines stand in (no
    empty box, no warning)."""
    import importlib.util
    import io

    from runner.progress import ProgressObserver
    from runner.tasks import Task, TaskList

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name)
    )
    console = Console(file=io.StringIO(), force_jupyter=True)
    lines: list[str] = []
    observer = ProgressObserver(console, lambda level, line: lines.append(line))
    tasks = [Task(index=str(i), task_type="deepfake", prompt="") for i in (1, 2)]
    tasklist = TaskList(
        path=Path("t.csv"), images_dir=Path("imgs"), tasks=tasks, bad=[], order=["1", "2"]
    )
    observer.started(tasklist, None, ["a banner line"])  # type: ignore[arg-type]
    assert observer.live is None
    observer.row(RowResult(index="1", task_type="deepfake", status="done"))
    observer.row(RowResult(index="2", task_type="deepfake", status="bad", reason="no face"))
    observer.finished(_summary())
    assert lines[0] == "a banner line"
    assert "row 2 (deepfake, bad input): no face" in lines
    assert lines[-1].startswith("progress: 2/2 rows")


def test_no_face_is_bad_input_and_not_offered_for_a_rerun(job, tmp_path: Path) -> None:
    tasks = job([("1", "deepfake", "", "plain.png", "other.png"), *_t2i_rows(1, start=2)])
    fast = _fast_settings(tmp_path, '[faceswap]\nbackend = "classic"\nworkers = 1\n')
    res = _cli("--tasks", str(tasks), "--out", "out", "--settings", str(fast), "-q", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "row 1 (deepfake, bad input): no face found in ori_image" in res.stdout
    assert "Run the same command again" not in res.stdout
    assert "1 row(s) have bad input" in res.stdout
    failed = (tmp_path / "out" / "failed.csv").read_text(encoding="utf-8-sig").splitlines()
    assert failed == [
        "index,task_type,status,reason,request_id",
        "1,deepfake,bad input,no face found in ori_image,",
    ]
    records = [
        json.loads(line)
        for line in (tmp_path / "out" / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [r["kind"] for r in records if r["ev"] == "failed"] == ["input"]

    def failures() -> int:
        lines = (tmp_path / "out" / "journal.jsonl").read_text(encoding="utf-8").splitlines()
        return sum(json.loads(line)["ev"] == "failed" for line in lines)

    # a rerun with nothing changed says it again and does not swap again (no new verdict)
    again = _cli("--tasks", str(tasks), "--out", "out", "--settings", str(fast), "-q", cwd=tmp_path)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "row 1 (deepfake, bad input): no face found in ori_image (as in the last run" in (
        again.stdout
    )
    assert "the row, its images and the face-swap backend are unchanged, so it is not tried " \
        "again)" in again.stdout.replace("\n", " ")
    assert failures() == 1
    # a new ori_image (still faceless here) is tried again: the swap runs and fails anew
    make_image(tmp_path / "imgs" / "plain.png", (320, 240))
    third = _cli("--tasks", str(tasks), "--out", "out", "--settings", str(fast), "-q", cwd=tmp_path)
    assert third.returncode == 1 and "not tried again" not in third.stdout, third.stdout
    assert "row 1 (deepfake, bad input): no face found in ori_image" in third.stdout
    assert failures() == 2


@pytest.mark.parametrize("team", ["../evil", "a/b", "", ".hidden", "x\ny"])
def test_team_must_be_a_name(job, tmp_path: Path, quick, team: str) -> None:
    tasks = job(_t2i_rows(1))
    asyncio_run_all(tasks, tmp_path / "out", quick)
    res = _cli("submit", "--out", "out", "--team", team, "--allow-emulated", cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a team name" in lines[0], res.stderr
    assert not list(tmp_path.rglob("*.zip"))  # nothing written, above --out or in it


def asyncio_run_all(tasks: Path, out: Path, settings) -> RunSummary:
    import asyncio

    return asyncio.run(run_all(tasks, out=out, settings=settings, progress=False))


def test_script_read_from_stdin_is_refused_in_one_line(job, tmp_path: Path) -> None:
    job([("1", "deepfake", "", "f1.png", "f2.png")])
    res = subprocess.run(
        [sys.executable, "-"],
        input='import runner\nif __name__ == "__main__":\n    runner.run("task.csv", out="out")\n',
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "stdin" in lines[0] and "save the script" in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


async def test_a_rerun_keeps_the_scores(job, tmp_path: Path, quick) -> None:
    tasks = job(_t2i_rows(3))
    judged = quick.model_copy(update={"judge": quick.judge.model_copy(update={"enabled": True})})
    first = await run_all(tasks, out=tmp_path / "out", settings=judged, progress=False)
    scores = list(first.to_frame()["score"])
    assert all(s is not None for s in scores), scores
    again = await run_all(tasks, out=tmp_path / "out", settings=judged, progress=False)
    frame = again.to_frame()
    assert list(frame["status"]) == ["skipped"] * 3
    assert list(frame["score"]) == scores


def test_a_file_where_a_folder_goes_is_one_line(job, tmp_path: Path) -> None:
    tasks = job(_t2i_rows(1))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "imgs").write_text("not a folder")
    (tmp_path / "file").write_text("not a folder either")
    for out, bad in (("out", "out/imgs"), ("file", "file")):
        res = _cli("--tasks", str(tasks), "--out", out, "-q", cwd=tmp_path)
        assert res.returncode == 2, res.stdout + res.stderr
        assert (
            res.stderr.strip() == f"error: {bad} is a file, not a folder: move it away "
            "or give another --out"
        )


def test_a_full_disk_under_run_log_is_one_line(job, tmp_path: Path) -> None:
    """run.log on a device that is always full (/dev/full): the run goes on, one line."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    tasks = job(_t2i_rows(2))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.log").symlink_to("/dev/full")
    fast = _fast_settings(tmp_path)
    res = _cli("--tasks", str(tasks), "--out", "out", "--settings", str(fast), "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "cannot write" in lines[0] and "No space left on device" in lines[0]
    assert "Traceback" not in res.stderr and "Logging error" not in res.stderr


def test_make_targets_take_paths_with_spaces(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    folder = tmp_path / "my data"
    folder.mkdir()
    write_tasks(folder / "task.csv", _t2i_rows(2))
    env = _env(RUNNER_EMULATOR__TIME_SCALE="0.01", RUNNER_POLL_FIRST_S="0.02")

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-s", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    paths = ("TASKS=my data/task.csv", "OUT=my out")
    dry = make("dry-run", *paths)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    run = make("run", *paths)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in (tmp_path / "my out" / "imgs").iterdir()) == ["1.jpg", "2.jpg"]
    sub = make("submit", "OUT=my out", "TEAM=my team", "SUBMIT_FLAGS=--allow-emulated")
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert (tmp_path / "my out" / "my team_图片生成_result.zip").is_file()


async def test_failed_csv_names_the_request_support_asks_for(tmp_path: Path) -> None:
    from http_fakes import FakeTransport

    base = "https://dashscope.test/api/v1"
    tasks = write_tasks(tmp_path / "task.csv", [("1", "t2i", "a cat", "", "")])
    with FakeTransport() as m:
        m.post(
            f"{base}/services/aigc/text2image/image-synthesis",
            status=400,
            payload={"code": "InvalidParameter", "message": "bad size", "request_id": "req-7f3"},
        )
        settings = load_settings(
            api_key="sk-test0000000000000000",
            base_url=base,
            poll_first_s=0.01,
            judge={"enabled": False},
            models={"t2i": ["wanx2.1-t2i-turbo"]},
        )
        summary = await run_all(tasks, out=tmp_path / "out", settings=settings, progress=False)
    assert summary.rows[0].status == "failed" and summary.rows[0].request_id == "req-7f3"
    failed = (tmp_path / "out" / "failed.csv").read_text(encoding="utf-8-sig").splitlines()
    assert failed[0] == "index,task_type,status,reason,request_id"
    assert failed[1].startswith("1,t2i,failed,") and failed[1].endswith(",req-7f3")


def test_limit_column_and_spend_shown_without_none(job, tmp_path: Path) -> None:
    """A sync model has no in-flight limit: "none", not "None"; the progress lines carry the
    folder's estimated spend against the budget."""
    tasks = job(_t2i_rows(3))
    fast = _fast_settings(
        tmp_path,
        '[models]\nt2i = ["wanx2.1-t2i-turbo"]\n'
        '[quotas."wanx2.1-t2i-turbo"]\nin_flight = "none"\n'
        '[prices.cn]\ncurrency = "CNY"\n"wanx2.1-t2i-turbo" = 0.2\n',
    )
    res = _cli(
        "--tasks",
        str(tasks),
        "--out",
        "out",
        "--settings",
        str(fast),
        "--budget",
        "5",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "None" not in res.stdout
    models = res.stdout.split("Models (this run)")[1].splitlines()
    assert any("wanx2.1-t2i-turbo" in line and "none" in line for line in models)
    assert "progress: 3/3 rows" in res.stdout and "spent 0.60 CNY of 5.00 CNY" in res.stdout


def test_report_redacts_a_typed_key_and_marks_chinese_prompts(job, tmp_path: Path) -> None:
    key = "sk-" + "a1b2c3d4" * 4
    tasks = job([("1", "t2i", f"a cat, my key is {key}", "", ""), ("2", "t2i", "一只猫", "", "")])
    res = _cli(
        "--tasks",
        str(tasks),
        "--out",
        "out",
        "--settings",
        str(_fast_settings(tmp_path)),
        "-q",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert key not in page and "my key is [redacted]" in page
    assert '<div class="prompt" lang="zh">一只猫</div>' in page
    assert '"Noto Sans CJK SC"' in page and '"Microsoft YaHei"' in page  # a CJK font stack


def test_a_quoted_prompt_past_the_csv_field_limit_is_one_bad_row(job, tmp_path: Path) -> None:
    """A properly quoted 200,000-character prompt (past the csv module's 131,072 default)
    is read: that row is bad input for its length, the others are priced and run."""
    tasks = job([
        ("1", "t2i", "a cat", "", ""),
        ("2", "t2i", "a dog, on a hill. " * 11_112, "", ""),
        ("3", "t2i", "a fox", "", ""),
    ])
    res = _cli("--tasks", str(tasks), "--dry-run", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "(1 unusable)" in res.stdout and "not valid CSV" not in res.stdout + res.stderr
    bad = [ln for ln in res.stdout.splitlines() if "bad input" in ln]
    assert len(bad) == 1 and bad[0].strip().startswith("row 2 (t2i, bad input): prompt is ")
    assert "far beyond any model's limit" in bad[0]
    tl = load_tasks(tasks)
    assert [t.index for t in tl.tasks] == ["1", "3"] and [b.index for b in tl.bad] == ["2"]
