"""The journal: an append-only JSON-lines file under ``--out``, the run's single source of truth.

Every record is typed (``Record``, a union keyed by ``ev``) and is on disk (fsync) before
``write`` returns. A paid request is written before it leaves and again at each step of its
life (runner.store.ledger): the task id the moment it is known, a sync call's result URLs the
moment its answer arrives. That is the proof of payment a rerun uses to fetch instead of
paying again. One writer thread commits records in groups, so a record never waits behind
image work in the default thread pool.

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
import stat
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from runner.errors import DiskFull, RunnerError
from runner.logs import redactor
from runner.store.ledger import PaidBook, PaidRequest
from runner.store.records import (
    Chosen,
    Done,
    Failed,
    Judged,
    Record,
    RunEnd,
    RunStart,
    parse_record,
)

__all__ = [
    "JOURNAL_NAME",
    "Journal",
    "JournalError",
    "JournalLost",
    "JournalState",
    "JournalUnwritable",
    "PaidRequest",
    "Record",
    "RowState",
    "check_journal_file",
    "last_tasks_path",
    "replay",
]

log = structlog.get_logger(__name__)

JOURNAL_NAME = "journal.jsonl"


class JournalError(RunnerError):
    """The journal cannot be opened or read."""


class JournalUnwritable(DiskFull):
    """A journal write failed (permissions, I/O): every later one would too, stop the run."""


class JournalLost(JournalUnwritable):
    """The journal file or the output folder was replaced under the run: stop, one line."""


def check_journal_file(path: Path) -> None:
    """A journal path is a regular file (a link to one is too) or nothing yet: a folder, a
    pipe, a device (/dev/full, /dev/zero) would hang, exhaust memory or lose records, so it
    is refused in one line (``JournalError``)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise JournalError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise JournalError(f"{path} is a folder, not a journal file; move it away")
    if not stat.S_ISREG(mode):
        raise JournalError(f"{path} is not a regular file (a pipe or a device); move it away")


# --------------------------------------------------------------------------- state


class RowState(BaseModel):
    """What the journal knows of one row."""

    index: str
    done: bool = False
    file: str | None = None
    model: str | None = None
    emulated: bool = False
    fp: str | None = None
    failed_reason: str | None = None
    bad_input: tuple[str, str] | None = None  # (fp, setup) of its last failure for its input
    pending: list[PaidRequest] = Field(default_factory=list)  # open paid requests
    result: dict[str, Any] = Field(default_factory=dict)
    judged: dict[str, dict[str, Any]] = Field(default_factory=dict)  # file -> judge record
    chosen: str | None = None  # the candidate file a rejudge copied to imgs/, if any


class JournalState(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    rows: dict[str, RowState] = Field(default_factory=dict)
    runs: int = 0
    runs_info: list[dict[str, Any]] = Field(default_factory=list)  # run_start / run_end
    damaged_lines: int = 0
    book: PaidBook = Field(default_factory=PaidBook)  # every paid request (runner.store.ledger)

    def row(self, index: str) -> RowState:
        if index not in self.rows:
            self.rows[index] = RowState(index=index)
        return self.rows[index]

    @property
    def last_run(self) -> dict[str, Any] | None:
        starts = [r for r in self.runs_info if r.get("ev") == "run_start"]
        return starts[-1] if starts else None


# --------------------------------------------------------------------------- replay


def replay(path: Path) -> JournalState:
    """Rebuild the state from a journal. Damaged or malformed lines are counted, not fatal.

    Paid requests are never dropped on the local clock: a journaled task is asked again
    (the service answers UNKNOWN once it is gone), so a clock that jumped cannot make a rerun
    pay for what it could have fetched."""
    state = JournalState()
    check_journal_file(path)
    if not path.exists():
        return state
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
            _apply(state, parsed[0], parsed[1])
    for paid in state.book.requests.values():
        if paid.open:
            state.row(paid.index).pending.append(paid)
    return state


def _apply(state: JournalState, rec: Record, raw: dict[str, Any]) -> None:
    if isinstance(rec, RunStart | RunEnd):
        if isinstance(rec, RunStart):
            state.runs += 1
            state.book.run_started(rec.backend, rec.emulated)
        state.runs_info.append(raw)
        return
    state.book.apply(rec)
    row = state.row(rec.index)
    if isinstance(rec, Done):
        _apply_done(row, rec, raw)
    elif isinstance(rec, Failed):
        row.done = False
        row.failed_reason = rec.reason
        row.bad_input = (rec.fp, rec.setup or "") if rec.kind == "input" and rec.fp else None
    elif isinstance(rec, Judged):
        row.judged[rec.file] = {k: v for k, v in raw.items() if k not in ("ev", "index")}
    elif isinstance(rec, Chosen):
        row.chosen = rec.file


def _apply_done(row: RowState, rec: Done, raw: dict[str, Any]) -> None:
    row.done = True
    row.file = rec.file
    row.model = rec.model
    row.emulated = rec.emulated
    row.fp = rec.fp
    row.failed_reason = None
    row.bad_input = None
    row.result = {k: v for k, v in raw.items() if k not in ("ev", "index", "t")}
    row.result["t"] = rec.t


# --------------------------------------------------------------------------- writer

_STOP = object()


class Journal:
    """Appends records through one writer thread; ``write`` returns once the record is on disk.

    The record is queued before ``write`` first yields, and the wait is shielded: a caller
    cancelled while its record waits still gets it written (a paid id is never dropped).

    The file and the folder are checked, not trusted: after each group commit the journal's
    path must still name the file it writes, in the folder it opened. A journal deleted under
    the run is written again whole from the open file (every record, earlier runs' too); one
    replaced by another file, or a folder moved away, gets this run's records appended and
    stops the run (``JournalLost``).
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / JOURNAL_NAME
        out_dir.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = self._open()
        if created:  # the new name must survive a crash too
            _fsync_dir(out_dir)
        self._folder_id = _identity(out_dir)
        self._needs_newline = self._ends_without_newline()
        self._lock = threading.Lock()
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._this_run: list[bytes] = []  # every line written by this object, for a repair
        self.records = 0

    def _open(self) -> int:
        check_journal_file(self.path)
        try:
            return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open {self.path}: {exc.strerror}") from None

    def _ends_without_newline(self) -> bool:
        try:
            size = os.fstat(self._fd).st_size
            return size > 0 and os.pread(self._fd, 1, size - 1) != b"\n"
        except OSError:
            return False

    @staticmethod
    def encode(ev: str, fields: dict[str, Any]) -> bytes:
        rec = {"ev": ev, "t": round(time.time(), 3), **fields}
        # Text from the network may echo the key: scrub before it reaches the disk.
        rec = redactor().scrub(rec)
        return (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode("utf-8")

    def _commit(self, lines: list[bytes]) -> None:
        """Append lines and fsync once (group commit), then check the file is still the
        journal. Raises DiskFull / JournalUnwritable / JournalLost."""
        with self._lock:
            data = b"".join(lines)
            if self._needs_newline:  # a kill or a failed write cut the last line short
                data = b"\n" + data
            try:
                _write_all(self._fd, data)
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
                try:
                    self._fd = self._open()
                except JournalError as again:  # stop the run, in one line
                    raise JournalUnwritable(str(again)) from None
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFull(f"no space left on the device writing {self.path}") from None
                raise JournalUnwritable(f"cannot write {self.path}: {exc.strerror}") from None
            self._this_run.extend(lines)
            self.records += len(lines)
            self._check()

    def _check(self) -> None:
        """The path still names our file in our folder; repair or stop when it does not."""
        folder = self.path.parent
        if _identity(folder) != self._folder_id:
            raise JournalLost(
                f"the output folder {folder} was moved, deleted or replaced during the run; "
                "stopped (the files already written are where the folder went)"
            )
        ours = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            self._rewrite_deleted()
            return
        except OSError as exc:
            raise JournalUnwritable(f"cannot check {self.path}: {exc.strerror}") from None
        if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
            return
        if not stat.S_ISREG(now.st_mode):
            raise JournalLost(
                f"{self.path} was replaced by a folder, a pipe or a device during the run; "
                "stopped (this run's records are in the file that was moved away, if it was): "
                "put the journal back, then run again"
            )
        # Another file took the name: keep what it holds, add this run's records, stop.
        self._fd = self._reopen_appending(self._this_run)
        raise JournalLost(
            f"{self.path} was replaced by another file during the run; this run's "
            f"{len(self._this_run)} records were appended to it and the run stopped: check "
            "the file, then run again"
        )

    def _rewrite_deleted(self) -> None:
        """The journal was deleted: write everything the open file holds under its name."""
        size = os.fstat(self._fd).st_size
        content = _read_all(self._fd, size)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.restore")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.path.exists():  # taken meanwhile: not ours to overwrite
            tmp.unlink(missing_ok=True)
            self._fd = self._reopen_appending(self._this_run)
            raise JournalLost(
                f"{self.path} was deleted and replaced during the run; this run's records "
                "were appended to the new file and the run stopped: check it, then run again"
            )
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        os.close(self._fd)
        self._fd = self._open()
        log.warning("journal_restored", path=str(self.path), size=len(content))

    def _reopen_appending(self, lines: list[bytes]) -> int:
        try:
            os.close(self._fd)
        except OSError:
            pass
        fd = self._open()
        data = b"".join(lines)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        _write_all(fd, data)
        os.fsync(fd)
        return fd

    def write_sync(self, ev: str, **fields: Any) -> None:
        """For code outside the event loop (submit, report, rejudge's tools, tests)."""
        self._commit([self.encode(ev, fields)])

    async def write(self, ev: str, **fields: Any) -> None:
        await self._queue(self.encode(ev, fields))

    async def write_record(self, ev: str, **fields: Any) -> Record:
        """``write``, returning the typed record as it is on disk (the ledger folds it)."""
        line = self.encode(ev, fields)
        parsed = parse_record(line.decode("utf-8"))
        if parsed is None:
            raise JournalError(f"a {ev!r} record does not match its type: {fields}")
        await self._queue(line)
        return parsed[0]

    async def _queue(self, line: bytes) -> None:
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


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


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
