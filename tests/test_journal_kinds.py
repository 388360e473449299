"""The journal and the closing words where the folder is hostile: a journal path that is a
pipe, a device or a folder (at the start, or put there mid-run), and rows whose answer was
lost (a plain rerun cannot pay for them; the closing line names the flag that does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from runner.cli import print_summary
from runner.errors import SettingsError
from runner.job import check_out_dir
from runner.outcomes import RowResult, RunSummary
from runner.policy import REPAY_FLAG
from runner.progress import next_step
from runner.store.journal import (
    JOURNAL_NAME,
    Journal,
    JournalError,
    JournalLost,
    replay,
)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dev-full", "folder"])
def test_a_journal_that_is_no_regular_file_is_refused_in_one_line(
    tmp_path: Path, kind: str
) -> None:
    """Before: a pipe hung the run past two signals, /dev/zero or /dev/full read until the
    memory ran out, a folder exited 3 where every other such folder exits 2."""
    path = tmp_path / JOURNAL_NAME
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero" if kind == "dev-zero" else "/dev/full")
    with pytest.raises(JournalError, match="move it away"):
        replay(path)
    with pytest.raises(JournalError, match="move it away"):
        Journal(tmp_path)
    with pytest.raises(SettingsError, match=JOURNAL_NAME):  # the CLI's exit 2, one line
        check_out_dir(tmp_path)


def test_a_journal_replaced_by_a_folder_mid_run_stops_the_run(tmp_path: Path) -> None:
    """Before: every row failed "internal error: JournalError" with a traceback each."""
    j = Journal(tmp_path)
    j.write_sync("run_start")
    (tmp_path / JOURNAL_NAME).rename(tmp_path / "moved.jsonl")
    (tmp_path / JOURNAL_NAME).mkdir()
    with pytest.raises(JournalLost, match="folder, a pipe or a device"):
        j.write_sync("failed", index="1", reason="x")
    assert (tmp_path / "moved.jsonl").read_text(encoding="utf-8").count("\n") == 2


def _summary(*rows: RowResult) -> RunSummary:
    return RunSummary(rows=list(rows), elapsed_s=1.0, emulated=True, backend="emulator")


def test_rows_whose_answer_was_lost_are_named_with_the_flag_that_pays_again() -> None:
    lost = RowResult(
        index="1",
        task_type="vttie",
        status="failed",
        reason=f"uncertain: the answer was cut, so it was not sent again (run again with "
        f"{REPAY_FLAG} to pay for the row again)",
    )
    console = Console(record=True, width=200)
    print_summary(console, _summary(lost), Path("out"))
    text = console.export_text()
    assert "Run the same command again" not in text  # a plain rerun does not pay for it
    assert "1 row(s) may already be paid" in text and REPAY_FLAG in text
    assert REPAY_FLAG in next_step(_summary(lost))
    other = RowResult(index="2", task_type="t2i", status="failed", reason="gave up")
    console = Console(record=True, width=200)
    print_summary(console, _summary(lost, other), Path("out"))
    both = console.export_text()
    assert "retry the 1 failed" in both and "1 row(s) may already be paid" in both
