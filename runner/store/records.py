"""What the journal holds: its typed records, one JSON object a line (``Record``, a union
keyed by ``ev``), and the state ``replay`` (runner.store.journal) rebuilds from them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

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


def parse_record(line: str) -> tuple[Record, dict[str, Any]] | None:
    """One journal line as (typed record, its raw fields); None for a damaged or unknown one."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or raw.get("ev") not in _KNOWN_EVENTS:
        return None
    try:
        return _RECORD.validate_python(raw), raw
    except ValidationError:
        return None


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
