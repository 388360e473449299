"""Atomic writes and the journal's durability rules."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from runner.errors import DiskFull
from runner.store import files as store
from runner.store.journal import Journal, replay


async def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "1.jpg"
    await store.write_atomic(target, b"old")
    await store.write_atomic(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["1.jpg"]


async def test_write_atomic_disk_full_leaves_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "1.jpg"
    await store.write_atomic(target, b"old")

    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(DiskFull, match="no space"):
        await store.write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["1.jpg"]  # no temp left


def test_sweep_removes_only_temp_files(tmp_path: Path) -> None:
    (tmp_path / "1.jpg").write_bytes(b"x")
    (tmp_path / f".2.jpg{store.TEMP_MARK}abcd").write_bytes(b"half")
    (tmp_path / ".hidden").write_bytes(b"keep")
    assert store.sweep_temp(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "1.jpg"]


def test_journal_replay_states(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.write_sync("run_start")
    j.write_sync("submitted", index="1", model="m", task_id="a")
    j.write_sync("submitted", index="2", model="m", task_id="b")
    j.write_sync("task_closed", index="2", task_id="b", why="UNKNOWN")
    j.write_sync("submitted", index="3", model="m", task_id="c")
    j.write_sync("done", index="3", model="m", task_id="c", file="imgs/3.jpg", emulated=True)
    j.write_sync("failed", index="4", reason="no face")
    j.close()
    # a kill in the middle of a line
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"ev": "submitted", "index": "5", "task_')
    st = replay(tmp_path / "journal.jsonl")
    assert [p.task_id for p in st.rows["1"].pending] == ["a"]
    assert st.rows["2"].pending == []
    assert st.rows["3"].done and st.rows["3"].emulated and st.rows["3"].pending == []
    assert st.rows["4"].failed_reason == "no face"
    assert st.damaged_lines == 1 and st.runs == 1
    # the next writer starts on a fresh line, so nothing after the damage is lost
    j2 = Journal(tmp_path)
    j2.write_sync("submitted", index="6", model="m", task_id="f")
    j2.close()
    st2 = replay(tmp_path / "journal.jsonl")
    assert st2.rows["6"].pending[0].task_id == "f" and st2.damaged_lines == 1


def test_journal_is_synced_per_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr("runner.store.journal.os.fsync", lambda fd: (calls.append(fd), real(fd)))
    j = Journal(tmp_path)
    file_fd = j._fd
    calls.clear()  # creating the file fsyncs its folder once
    j.write_sync("submitted", index="1", model="m", task_id="a")
    j.write_sync("submitted", index="2", model="m", task_id="b")
    j.close()
    assert calls == [file_fd, file_fd]
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["task_id"] for x in lines] == ["a", "b"]


def test_old_task_ids_are_kept_for_the_service_to_judge(tmp_path: Path) -> None:
    """A task id is never dropped for its age on the local clock (a clock that stepped would
    make a rerun pay for what it could fetch): the service answers UNKNOWN once it is gone."""
    (tmp_path / "journal.jsonl").write_text(
        json.dumps({"ev": "submitted", "index": "1", "model": "m", "task_id": "old", "t": 1000.0})
        + "\n"
    )
    pending = replay(tmp_path / "journal.jsonl").rows["1"].pending
    assert [(p.task_id, p.phase, p.billed) for p in pending] == [("old", "accepted", 1)]


def test_a_row_failed_for_its_input_is_held_only_while_nothing_changed(tmp_path: Path) -> None:
    """The rerun's verdict (runner.scheduling.rerun.still_bad): a row that failed for its
    own input is not tried again with the same inputs and setup, and is with either
    changed, with a request of it still open, or once it failed for another reason."""
    from runner.scheduling.rerun import still_bad

    j = Journal(tmp_path)
    j.write_sync(
        "failed", index="1", reason="no face", kind="input", fp="f1", setup="faceswap classic"
    )
    j.write_sync("failed", index="2", reason="timed out", kind="row")
    j.write_sync(
        "failed", index="3", reason="no face", kind="input", fp="f3", setup="faceswap classic"
    )
    j.write_sync("done", index="3", model="m", file="imgs/3.jpg", fp="f3")
    j.close()
    rows = replay(tmp_path / "journal.jsonl").rows
    assert still_bad(rows["1"], [], "f1", "faceswap classic")
    assert not still_bad(rows["1"], [], "f1-new", "faceswap classic")  # a new image
    assert not still_bad(rows["1"], [], "f1", "faceswap inswapper")  # another backend
    assert not still_bad(rows["2"], [], None, "models m")  # failed for another reason
    assert not still_bad(rows["3"], [], "f3", "faceswap classic")  # done since
