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
from typing import Annotated, Any, Literal

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from runner.errors import DiskFull, RunnerError
from runner.logs import redactor

log = structlog.get_logger(__name__)

JOURNAL_NAME = "journal.jsonl"
# Task ids and result URLs live 24 h at the service; stop trusting them a little before.
TASK_ID_TTL_S = 24 * 3600 - 600


class JournalError(RunnerError):
    """The journal cannot be opened or read."""


class JournalUnwritable(DiskFull):
    """A journal write failed (permissions, I/O): every later one would too, stop the run."""


# --------------------------------------------------------------------------- records


class _Rec(BaseModel):
    model_config = ConfigDict(extra="allow")
    t: float = 0.0


class _RowRec(_Rec):
    index: str

    @field_validator("index", mode="before")
    @classmethod
    def _index_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class RunStart(_Rec):
    ev: Literal["run_start"]
    tasks: str | None = None
    tasks_fp: str | None = None
    emulated: bool = False


class RunEnd(_Rec):
    ev: Literal["run_end"]


class Submitted(_RowRec):
    """An async task the service accepted (paid for)."""

    ev: Literal["submitted"]
    task_id: str = Field(min_length=1)
    model: str = ""
    n: int = 1
    fp: str | None = None


class SyncAnswer(_RowRec):
    """A sync call's answer: its result URLs are the only proof of payment (no task id)."""

    ev: Literal["sync_answer"]
    call_id: str = Field(min_length=1)
    model: str = ""
    urls: list[str] = Field(min_length=1)
    fp: str | None = None


class TaskClosed(_RowRec):
    """A task id (or sync call) that can give no result any more: no rerun waits on it."""

    ev: Literal["task_closed"]
    task_id: str
    why: str = ""


class Done(_RowRec):
    ev: Literal["done"]
    file: str | None = None
    model: str | None = None
    emulated: bool = False
    fp: str | None = None
    task_id: str | None = None


class Failed(_RowRec):
    ev: Literal["failed"]
    reason: str | None = None
    task_id: str | None = None


class Judged(_RowRec):
    ev: Literal["judged"]
    file: str


class Chosen(_RowRec):
    ev: Literal["chosen"]
    file: str


class Reset(_RowRec):
    ev: Literal["reset"]


Record = Annotated[
    RunStart
    | RunEnd
    | Submitted
    | SyncAnswer
    | TaskClosed
    | Done
    | Failed
    | Judged
    | Chosen
    | Reset,
    Field(discriminator="ev"),
]
_RECORD: TypeAdapter[Record] = TypeAdapter(Record)
_KNOWN_EVENTS = {
    "run_start",
    "run_end",
    "submitted",
    "sync_answer",
    "task_closed",
    "done",
    "failed",
    "judged",
    "chosen",
    "reset",
}


# --------------------------------------------------------------------------- state


class PendingTask(BaseModel):
    """A paid request whose result has not been taken yet: an async task id, or a sync
    call's result URLs (``urls``; ``task_id`` is then the call's own id)."""

    task_id: str
    model: str
    submitted_at: float
    candidate: int = 0
    fp: str | None = None
    urls: list[str] = Field(default_factory=list)

    @property
    def sync(self) -> bool:
        return bool(self.urls)


class RowState(BaseModel):
    """What the journal knows of one row."""

    index: str
    done: bool = False
    file: str | None = None
    model: str | None = None
    emulated: bool = False
    fp: str | None = None
    failed_reason: str | None = None
    pending: list[PendingTask] = Field(default_factory=list)
    submits: int = 0  # accepted async tasks and answered sync calls: what was paid for
    result: dict[str, Any] = Field(default_factory=dict)
    judged: dict[str, dict[str, Any]] = Field(default_factory=dict)  # file -> judge record
    chosen: str | None = None  # the candidate file a rejudge copied to imgs/, if any


class JournalState(BaseModel):
    rows: dict[str, RowState] = Field(default_factory=dict)
    runs: int = 0
    runs_info: list[dict[str, Any]] = Field(default_factory=list)  # run_start / run_end
    damaged_lines: int = 0

    def row(self, index: str) -> RowState:
        if index not in self.rows:
            self.rows[index] = RowState(index=index)
        return self.rows[index]

    @property
    def last_run(self) -> dict[str, Any] | None:
        starts = [r for r in self.runs_info if r.get("ev") == "run_start"]
        return starts[-1] if starts else None


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
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                state.damaged_lines += 1
                continue
            if not isinstance(raw, dict) or raw.get("ev") not in _KNOWN_EVENTS:
                state.damaged_lines += 1
                continue
            try:
                rec = _RECORD.validate_python(raw)
            except ValidationError:
                state.damaged_lines += 1
                continue
            _apply(state, rec, raw, now)
    return state


def _apply(state: JournalState, rec: Any, raw: dict[str, Any], now: float) -> None:
    if isinstance(rec, RunStart):
        state.runs += 1
        state.runs_info.append(raw)
        return
    if isinstance(rec, RunEnd):
        state.runs_info.append(raw)
        return
    row = state.row(rec.index)
    if isinstance(rec, Submitted):
        row.submits += 1
        if now - rec.t < TASK_ID_TTL_S:
            row.pending.append(
                PendingTask(
                    task_id=rec.task_id,
                    model=rec.model,
                    submitted_at=rec.t,
                    candidate=int(raw.get("candidate", 0) or 0),
                    fp=rec.fp,
                )
            )
    elif isinstance(rec, SyncAnswer):
        row.submits += 1
        if now - rec.t < TASK_ID_TTL_S:
            row.pending.append(
                PendingTask(
                    task_id=rec.call_id,
                    model=rec.model,
                    submitted_at=rec.t,
                    fp=rec.fp,
                    urls=rec.urls,
                )
            )
    elif isinstance(rec, TaskClosed):
        row.pending = [p for p in row.pending if p.task_id != rec.task_id]
    elif isinstance(rec, Done):
        row.done = True
        row.file = rec.file
        row.model = rec.model
        row.emulated = rec.emulated
        row.fp = rec.fp
        row.failed_reason = None
        row.pending = []
        row.result = {k: v for k, v in raw.items() if k not in ("ev", "index", "t")}
        row.result["t"] = rec.t
    elif isinstance(rec, Failed):
        row.done = False
        row.failed_reason = rec.reason
        if rec.task_id:
            row.pending = [p for p in row.pending if p.task_id != rec.task_id]
    elif isinstance(rec, Judged):
        row.judged[rec.file] = {k: v for k, v in raw.items() if k not in ("ev", "index")}
    elif isinstance(rec, Chosen):
        row.chosen = rec.file
    elif isinstance(rec, Reset):
        state.rows[rec.index] = RowState(index=rec.index)


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
