"""The journal: an append-only JSON-lines file under ``--out``, the run's single source of truth.

Every record is typed (``Record``, a union keyed by ``ev``) and is on disk (fsync) before
``write`` returns. A task the service accepted is written the moment its id is known, a sync
call's result URLs the moment its answer arrives: that is the proof of payment a rerun uses to
fetch instead of paying again. One writer thread commits records in groups, so a record never
waits behind image work in the default thread pool.

``replay`` is the one reader (scheduler, report, submit, rejudge and the tests use it): it
rebuilds what is known of each row; a half-written last line (a kill) or a malformed record is
counted and skipped, never a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from runner.errors import DiskFull, RunnerError
from runner.logs import redactor
from runner.store.records import (
    Chosen,
    Done,
    Failed,
    JournalState,
    Judged,
    PendingTask,
    Record,
    Reset,
    RowState,
    RunEnd,
    RunStart,
    Submitted,
    SyncAnswer,
    TaskClosed,
    parse_record,
)

# The record and state types live in runner.store.records; callers import them from here too.
__all__ = [
    "JOURNAL_NAME",
    "TASK_ID_TTL_S",
    "Journal",
    "JournalError",
    "JournalState",
    "JournalUnwritable",
    "PendingTask",
    "Record",
    "RowState",
    "last_tasks_path",
    "replay",
]

log = structlog.get_logger(__name__)

JOURNAL_NAME = "journal.jsonl"
# Task ids and result URLs live 24 h at the service; stop trusting them a little before.
TASK_ID_TTL_S = 24 * 3600 - 600


class JournalError(RunnerError):
    """The journal cannot be opened or read."""


class JournalUnwritable(DiskFull):
    """A journal write failed (permissions, I/O): every later one would too, stop the run."""


# --------------------------------------------------------------------------- replay


def replay(path: Path, *, now: float | None = None) -> JournalState:
    """Rebuild the state from a journal. Damaged or malformed lines are counted, not fatal."""
    state = JournalState()
    if not path.exists():
        return state
    if path.is_dir():
        raise JournalError(f"{path} is a folder, not a journal file; move it away")
    now = time.time() if now is None else now
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise JournalError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            parsed = parse_record(line)
            if parsed is None:
                state.damaged_lines += 1
                continue
            _apply(state, parsed[0], parsed[1], now)
    return state


def _apply(state: JournalState, rec: Record, raw: dict[str, Any], now: float) -> None:
    if isinstance(rec, RunStart | RunEnd):
        if isinstance(rec, RunStart):
            state.runs += 1
        state.runs_info.append(raw)
        return
    if isinstance(rec, Reset):
        state.rows[rec.index] = RowState(index=rec.index)
        return
    row = state.row(rec.index)
    if isinstance(rec, Submitted | SyncAnswer):
        row.submits += 1  # paid, whether or not its id is still worth fetching
        if now - rec.t < TASK_ID_TTL_S:
            row.pending.append(_pending(rec, raw))
    elif isinstance(rec, TaskClosed):
        row.pending = [p for p in row.pending if p.task_id != rec.task_id]
    elif isinstance(rec, Done):
        _apply_done(row, rec, raw)
    elif isinstance(rec, Failed):
        row.done = False
        row.failed_reason = rec.reason
        if rec.task_id:
            row.pending = [p for p in row.pending if p.task_id != rec.task_id]
    elif isinstance(rec, Judged):
        row.judged[rec.file] = {k: v for k, v in raw.items() if k not in ("ev", "index")}
    elif isinstance(rec, Chosen):
        row.chosen = rec.file


def _pending(rec: Submitted | SyncAnswer, raw: dict[str, Any]) -> PendingTask:
    """The paid request a record proves: an async task id, or a sync call's result URLs."""
    if isinstance(rec, SyncAnswer):
        return PendingTask(
            task_id=rec.call_id, model=rec.model, submitted_at=rec.t, fp=rec.fp, urls=rec.urls
        )
    candidate = int(raw.get("candidate", 0) or 0)
    return PendingTask(
        task_id=rec.task_id, model=rec.model, submitted_at=rec.t, candidate=candidate, fp=rec.fp
    )


def _apply_done(row: RowState, rec: Done, raw: dict[str, Any]) -> None:
    row.done = True
    row.file = rec.file
    row.model = rec.model
    row.emulated = rec.emulated
    row.fp = rec.fp
    row.failed_reason = None
    row.pending = []
    row.result = {k: v for k, v in raw.items() if k not in ("ev", "index", "t")}
    row.result["t"] = rec.t


# --------------------------------------------------------------------------- writer

_STOP = object()


class Journal:
    """Appends records through one writer thread; ``write`` returns once the record is on disk.

    The record is queued before ``write`` first yields, and the wait is shielded: a caller
    cancelled while its record waits still gets it written (a paid id is never dropped).
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / JOURNAL_NAME
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise JournalError(f"{self.path} is a folder, not a journal file; move it away")
        created = not self.path.exists()
        self._fd = self._open()
        if created:  # the new name must survive a crash too
            _fsync_dir(out_dir)
        self._needs_newline = self._ends_without_newline()
        self._lock = threading.Lock()
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.records = 0

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open {self.path}: {exc.strerror}") from None

    def _ends_without_newline(self) -> bool:
        try:
            size = os.fstat(self._fd).st_size
            if size == 0:
                return False
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                return f.read(1) != b"\n"
        except OSError:
            return False

    @staticmethod
    def encode(ev: str, fields: dict[str, Any]) -> bytes:
        rec = {"ev": ev, "t": round(time.time(), 3), **fields}
        # Text from the network may echo the key: scrub before it reaches the disk.
        rec = redactor().scrub(rec)
        return (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode("utf-8")

    def _commit(self, lines: list[bytes]) -> None:
        """Append lines and fsync once (group commit). Raises DiskFull / JournalError."""
        with self._lock:
            data = b"".join(lines)
            if self._needs_newline:  # a kill or a failed write cut the last line short
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
                self._needs_newline = False
            except OSError as exc:
                # Part of the batch may be on disk: start the next one on a fresh line, from
                # a fresh descriptor, so nothing half-written is flushed later.
                self._needs_newline = True
                try:
                    os.close(self._fd)
                except OSError:
                    pass
                self._fd = self._open()
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFull(f"no space left on the device writing {self.path}") from None
                raise JournalUnwritable(f"cannot write {self.path}: {exc.strerror}") from None
            self.records += len(lines)

    def write_sync(self, ev: str, **fields: Any) -> None:
        """For code outside the event loop (submit, report, rejudge's tools, tests)."""
        self._commit([self.encode(ev, fields)])

    async def write(self, ev: str, **fields: Any) -> None:
        line = self.encode(ev, fields)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._ensure_thread()
        self._q.put((line, fut, loop))
        await asyncio.shield(fut)

    def _ensure_thread(self) -> None:
        if self._closed:
            raise JournalError("the journal is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while True:  # everything queued meanwhile goes in the same fsync
                try:
                    more = self._q.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
            error: BaseException | None = None
            try:
                self._commit([line for line, _, _ in batch])
            except BaseException as exc:
                error = exc
            for _, fut, loop in batch:
                _settle(loop, fut, error)
            if stop:
                return

    def close(self) -> None:
        """Finish what is queued, then close the file."""
        if self._thread is not None:
            self._q.put(_STOP)
            self._thread.join()
            self._thread = None
        self._closed = True
        with self._lock:
            if self._fd >= 0:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
                self._fd = -1


def _settle(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], error: Any) -> None:
    def done() -> None:
        if fut.done():
            return
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)

    try:
        loop.call_soon_threadsafe(done)
    except RuntimeError:  # the loop is gone (the process is ending): the record is on disk
        pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def last_tasks_path(out_dir: Path) -> Path | None:
    """The task file the last run in ``out_dir`` used (from its run_start record)."""
    try:
        state = replay(out_dir / JOURNAL_NAME)
    except JournalError:
        return None
    last = state.last_run
    found = last.get("tasks") if last else None
    return Path(found) if found else None
