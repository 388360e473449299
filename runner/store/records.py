"""What the journal holds: its typed records, one JSON object a line (``Record``, a union
keyed by ``ev``). ``replay`` (runner.store.journal) rebuilds the state from them; the paid
requests' records are the ledger's (runner.store.ledger).
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
    backend: str | None = None  # where its paid requests go (runner.store.ledger)


class RunEnd(_Rec):
    ev: Literal["run_end"]


class Sending(_RowRec):
    """A paid request about to leave (runner.store.ledger): on disk before it is sent."""

    ev: Literal["sending"]
    req: str = Field(min_length=1)
    model: str = ""
    n: int = 1
    fp: str | None = None
    sync: bool = False
    prompt: str | None = None
    backend: str | None = None


class Accepted(_RowRec):
    """An async task the service accepted (paid for); ``adopted``: found again in the
    service's task list after its answer was lost."""

    ev: Literal["submitted"]
    task_id: str = Field(min_length=1)
    req: str | None = None  # None in journals from before the ledger
    model: str = ""
    n: int = 1
    fp: str | None = None
    adopted: bool = False


class SyncAnswer(_RowRec):
    """A sync call's answer: its result URLs are the only proof of payment (no task id)."""

    ev: Literal["sync_answer"]
    call_id: str = Field(min_length=1)
    req: str | None = None
    model: str = ""
    n: int = 1
    urls: list[str] = Field(min_length=1)
    fp: str | None = None


class NotAccepted(_RowRec):
    """The service refused a sent request (an error answer), or it never left: not billed."""

    ev: Literal["not_accepted"]
    req: str = Field(min_length=1)
    why: str = ""


class UncertainAnswer(_RowRec):
    """A sent request whose answer was lost: the service may have accepted and billed it."""

    ev: Literal["uncertain"]
    req: str = Field(min_length=1)
    why: str = ""


class Ended(_RowRec):
    """A task's end as a poll saw it: what it billed (SUCCEEDED: its images; FAILED: 0)."""

    ev: Literal["ended"]
    task_id: str = Field(min_length=1)
    req: str | None = None
    status: str
    images: int = 0


class TaskClosed(_RowRec):
    """A paid request that can give no result any more: no rerun waits on it. ``images``
    settles its bill where the close says it (FAILED: 0)."""

    ev: Literal["task_closed"]
    task_id: str = ""
    req: str | None = None
    why: str = ""
    images: int | None = None


class Done(_RowRec):
    ev: Literal["done"]
    file: str | None = None
    model: str | None = None
    emulated: bool = False
    fp: str | None = None
    task_id: str | None = None


class Failed(_RowRec):
    """A row not done. ``kind`` "input": the row's own input is at fault (no face found, a
    source that is not an image, content every model refused); ``fp`` and ``setup`` (what
    else decided it: the face-swap backend, the models tried) let a rerun tell whether
    anything changed since."""

    ev: Literal["failed"]
    reason: str | None = None
    task_id: str | None = None
    kind: Literal["input", "row"] | None = None
    fp: str | None = None
    setup: str | None = None


class Judged(_RowRec):
    ev: Literal["judged"]
    file: str


class Chosen(_RowRec):
    ev: Literal["chosen"]
    file: str


Record = Annotated[
    RunStart
    | RunEnd
    | Sending
    | Accepted
    | SyncAnswer
    | NotAccepted
    | UncertainAnswer
    | Ended
    | TaskClosed
    | Done
    | Failed
    | Judged
    | Chosen,
    Field(discriminator="ev"),
]
_RECORD: TypeAdapter[Record] = TypeAdapter(Record)
_KNOWN_EVENTS = {
    "run_start",
    "run_end",
    "sending",
    "submitted",
    "sync_answer",
    "not_accepted",
    "uncertain",
    "ended",
    "task_closed",
    "done",
    "failed",
    "judged",
    "chosen",
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
