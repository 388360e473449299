"""The journal: an append-only JSON-lines file under ``--out``, fsynced per record.

It is the run's memory across crashes: every DashScope task id is written (durably) the
moment it is known, before the task is polled; every result and failure follows. Replaying
it tells a rerun which rows are done, which task ids it may still fetch (ids live 24 h),
and which must be submitted again.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .errors import DiskFull

JOURNAL_NAME = "journal.jsonl"
TASK_ID_TTL_S = 24 * 3600 - 600  # a little under the service's 24 h, to be safe


class PendingTask(BaseModel):
    task_id: str
    model: str
    submitted_at: float
    candidate: int = 0


class RowState(BaseModel):
    """What the journal knows of one row."""

    index: str
    done: bool = False
    file: str | None = None
    model: str | None = None
    emulated: bool = False
    failed_reason: str | None = None
    pending: list[PendingTask] = Field(default_factory=list)
    submits: int = 0
    result: dict[str, Any] = Field(default_factory=dict)
    judged: dict[str, dict[str, Any]] = Field(default_factory=dict)  # file -> judge record
    chosen: str | None = None  # the candidate file a rejudge copied to imgs/, if any


class JournalState(BaseModel):
    rows: dict[str, RowState] = Field(default_factory=dict)
    runs: int = 0
    damaged_lines: int = 0

    def row(self, index: str) -> RowState:
        if index not in self.rows:
            self.rows[index] = RowState(index=index)
        return self.rows[index]


def replay(path: Path) -> JournalState:
    """Rebuild the state from a journal; a half-written last line (a kill) is skipped."""
    state = JournalState()
    if not path.exists():
        return state
    now = time.time()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                state.damaged_lines += 1
                continue
            if not isinstance(rec, dict):
                state.damaged_lines += 1
                continue
            _apply(state, rec, now)
    return state


def _apply(state: JournalState, rec: dict[str, Any], now: float) -> None:
    ev = rec.get("ev")
    if ev == "run_start":
        state.runs += 1
        return
    index = rec.get("index")
    if index is None:
        return
    row = state.row(str(index))
    if ev == "submitted":
        row.submits += 1
        if now - float(rec.get("t", now)) < TASK_ID_TTL_S:
            row.pending.append(
                PendingTask(
                    task_id=rec["task_id"],
                    model=rec.get("model", ""),
                    submitted_at=float(rec.get("t", now)),
                    candidate=int(rec.get("candidate", 0)),
                )
            )
    elif ev == "task_closed":
        row.pending = [p for p in row.pending if p.task_id != rec.get("task_id")]
    elif ev == "done":
        row.done = True
        row.file = rec.get("file")
        row.model = rec.get("model")
        row.emulated = bool(rec.get("emulated", False))
        row.failed_reason = None
        row.pending = []
        row.result = {k: v for k, v in rec.items() if k not in ("ev", "index", "t")}
    elif ev == "failed":
        row.done = False
        row.failed_reason = rec.get("reason")
        row.pending = [p for p in row.pending if p.task_id != rec.get("task_id")]
    elif ev == "judged":
        file = rec.get("file")
        if file:
            row.judged[str(file)] = {k: v for k, v in rec.items() if k not in ("ev", "index")}
    elif ev == "chosen":
        row.chosen = rec.get("file")
    elif ev == "reset":
        state.rows[str(index)] = RowState(index=str(index))


class Journal:
    """Appends records; each ``write`` is on disk (fsync) before it returns."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / JOURNAL_NAME
        out_dir.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._needs_newline = self._ends_without_newline()

    def _ends_without_newline(self) -> bool:
        try:
            size = self.path.stat().st_size
            if size == 0:
                return False
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                return f.read(1) != b"\n"
        except OSError:
            return False

    def write_sync(self, ev: str, **fields: Any) -> None:
        rec = {"ev": ev, "t": round(time.time(), 3), **fields}
        line = json.dumps(rec, ensure_ascii=False, default=str)
        with self._lock:
            try:
                if self._needs_newline:  # a kill cut the last line short: start a fresh one
                    self._f.write("\n")
                    self._needs_newline = False
                self._f.write(line + "\n")
                self._f.flush()
                os.fsync(self._f.fileno())
            except OSError as exc:
                self._needs_newline = True  # part of the line may be on disk
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFull(f"no space left on the device writing {self.path}") from None
                raise

    async def write(self, ev: str, **fields: Any) -> None:
        # fsync takes milliseconds: keep it off the event loop
        await asyncio.to_thread(self.write_sync, ev, **fields)

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.close()


def last_tasks_path(out_dir: Path) -> Path | None:
    """The task file the last run in ``out_dir`` used (from its run_start record)."""
    path = out_dir / JOURNAL_NAME
    if not path.exists():
        return None
    found: str | None = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if '"run_start"' in line:
                try:
                    found = json.loads(line).get("tasks") or found
                except json.JSONDecodeError:
                    continue
    return Path(found) if found else None
