"""What a run produced, row by row and in total (the scheduler's output, the CLI's input)."""

from __future__ import annotations

import signal
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, computed_field, field_validator

from runner.logs import scrub_text

if TYPE_CHECKING:
    import pandas as pd

Status = Literal["done", "skipped", "failed", "bad", "stopped"]
INTERRUPTED = "interrupted"  # the reason of the rows a Ctrl-C or SIGTERM stopped
# Statuses as people read them; "bad" is the row's own input (one status everywhere: the
# progress bar, the summary, failed.csv and the report say "bad input").
STATUS_LABEL = {
    "done": "done",
    "skipped": "already done",
    "failed": "failed",
    "bad": "bad input",
    "stopped": "stopped",
}


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
    request_id: str | None = None  # the service's id of the request that failed the row
    held_back: int = 0  # candidates asked for that the budget held back (a done row)

    @field_validator("request_id")
    @classmethod
    def _no_secret(cls, value: str | None) -> str | None:
        """A hostile server may echo the key as its request id: never written anywhere."""
        return scrub_text(value) if value else value

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
    interrupted: str | None = None  # "SIGINT" / "SIGTERM": the run was asked to stop
    # a second signal: the run was left at once (rows under way abandoned, no report.html)
    left_early: bool = False
    # per model: images billed (accepted), list price, estimated cost (None: price unknown)
    billed: list[dict[str, Any]] = Field(default_factory=list)
    budget: float | None = None
    # every run in the output folder so far, this one last: when, how long, submits, 429s
    runs: list[dict[str, Any]] = Field(default_factory=list)
    # the judge's calls, 429s, estimated tokens and cost (runner.backends.judge.JudgeUsage)
    judge: dict[str, Any] | None = None

    def by_type(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for r in self.rows:
            out.setdefault(r.task_type, Counter())[r.status] += 1
        return out

    @property
    def failed(self) -> list[RowResult]:
        return [r for r in self.rows if not r.ok]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def short_of_budget(self) -> int:
        """Done rows that made fewer candidates than asked: the budget held the rest back."""
        return sum(1 for r in self.rows if r.held_back)

    @property
    def stopped_by_user(self) -> bool:
        """The run stopped because it was asked to (Ctrl-C, SIGTERM), not for a cause to fix."""
        return self.interrupted is not None and self.stopped_reason in (None, INTERRUPTED)

    @property
    def cost(self) -> float | None:
        """Estimated spend of this run at list prices; None when no model had a price."""
        known = [b["cost"] for b in self.billed if b.get("cost") is not None]
        return sum(known) if known else None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            # the shell's convention: 128 + the signal's number (130 Ctrl-C, 143 SIGTERM)
            return 128 + int(getattr(signal, self.interrupted, signal.SIGINT))
        if self.stopped_reason:
            return 3
        # rows this run made short for the budget: it stopped submitting (kept ones are done)
        held = any(r.held_back and r.status == "done" for r in self.rows)
        return 0 if not self.failed and not held else 1

    def to_frame(self) -> pd.DataFrame:
        """One row per task row (index, type, status, reason, model, ...), for pandas."""
        import pandas as pd

        cols = list(RowResult.model_fields)
        return pd.DataFrame([r.model_dump() for r in self.rows], columns=cols)

    def __repr__(self) -> str:
        # A notebook shows this for a bare ``summary``: counts, not a thousand rows.
        counts = Counter(r.status for r in self.rows)
        parts = [f"{n} {status}" for status, n in sorted(counts.items())]
        where = "emulator" if self.emulated else self.backend
        tail = ""
        if self.stopped_reason and not self.stopped_by_user:
            tail = f", stopped: {self.stopped_reason}"
        if self.interrupted:
            tail += f", interrupted ({self.interrupted})"
        cost = self.cost
        money = (
            f", est. cost {cost:.2f} {self.billed[0].get('currency', '')}".rstrip()
            if (cost is not None and self.billed)
            else ""
        )
        return (
            f"RunSummary({len(self.rows)} rows: {', '.join(parts) or 'none'}; "
            f"{self.elapsed_s:.1f} s on {where}; submits {self.submits}, "
            f"429s {self.throttled}{money}{tail}; exit {self.exit_code})"
        )

    __str__ = __repr__


def runs_view(runs_info: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run of an output folder, from its journal's run_start / run_end records, oldest
    first: when it started, and (when it closed) how long, submits, 429s, rows, billed."""
    runs: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for rec in runs_info:
        if rec.get("ev") == "run_start":
            run = {
                "run": rec.get("run"),
                "t": rec.get("t"),
                "emulated": bool(rec.get("emulated")),
                "tasks": rec.get("tasks"),
                "ended": False,
            }
            runs.append(run)
            if rec.get("run"):
                by_id[str(rec["run"])] = run
        elif rec.get("ev") == "run_end":
            run = by_id.get(str(rec.get("run")))
            if run is None:
                continue
            run["ended"] = True
            for k, v in rec.items():
                if k not in ("ev", "t", "run"):
                    run[k] = v
    return runs
