"""What a run produced, row by row and in total (the scheduler's output, the CLI's input)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["done", "skipped", "failed", "bad", "stopped"]


class RowResult(BaseModel):
    index: str
    task_type: str
    status: Status
    reason: str | None = None
    model: str | None = None
    attempts: int = 0
    file: str | None = None
    emulated: bool = False
    identity_target: float | None = None
    identity_ori: float | None = None
    score: float | None = None  # the judge's overall score of the chosen image
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")


class RunSummary(BaseModel):
    rows: list[RowResult]
    elapsed_s: float
    emulated: bool
    backend: str  # "emulator" or the base URL
    retries: int = 0
    throttled: int = 0
    polls: int = 0
    submits: int = 0
    stopped_reason: str | None = None
    models: list[dict[str, Any]] = Field(default_factory=list)
    faceswap: str | None = None
    report: str | None = None  # path of report.html

    def by_type(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for r in self.rows:
            out.setdefault(r.task_type, Counter())[r.status] += 1
        return out

    @property
    def failed(self) -> list[RowResult]:
        return [r for r in self.rows if not r.ok]

    @property
    def exit_code(self) -> int:
        if self.stopped_reason:
            return 3
        return 0 if not self.failed else 1
