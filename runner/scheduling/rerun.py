"""What a rerun keeps: a done row whose image is whole and made from the same inputs, and the
paid tasks of the others that are still worth fetching."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from runner.store.journal import TASK_ID_TTL_S, JournalState, PendingTask, RowState
from runner.tasks import Task, TaskList

__all__ = ["RowPlan", "jpeg_whole", "plan_rows"]

RowPlan = tuple[RowState, list[PendingTask]]


def jpeg_whole(path: Path) -> bool:
    """A cheap check that an output JPEG is whole: it starts with SOI and ends with EOI."""
    try:
        size = path.stat().st_size
        if size < 4:
            return False
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(size - 2)
            tail = f.read(2)
    except OSError:
        return False
    return head == b"\xff\xd8" and tail == b"\xff\xd9"


def plan_rows(
    tasklist: TaskList,
    state: JournalState,
    fps: dict[str, str],
    *,
    imgs_dir: Path,
    emulated: bool,
) -> tuple[list[RowPlan], Counter[str]]:
    """For each row: what the journal knows, and the paid tasks still worth fetching; and
    why done rows are made again (reason -> rows).

    A done row is kept only when its image is whole, it was made from the same inputs, and
    it is not an emulator placeholder in a run with a key. A broken image is fetched again
    from its journaled task while the id lives; a changed row's old tasks are left alone
    (their images answer another prompt). Blocking (it reads the disk).
    """
    now = time.time()
    plans: list[RowPlan] = []
    redone: Counter[str] = Counter()
    for task in tasklist.tasks:
        prior = state.rows.get(task.index) or RowState(index=task.index)
        fp = fps.get(task.index)
        pending = [p for p in prior.pending if p.fp is None or fp is None or p.fp == fp]
        if prior.done:
            why = _redo_reason(task, prior, fp, imgs_dir / f"{task.index}.jpg", emulated)
            if why is None:
                plans.append((prior, []))
                continue
            if why == _DAMAGED:
                pending = _refetchable(prior, now)
            redone[why] += 1
            prior = RowState(index=task.index)  # not done: make it (or fetch it) again
        plans.append((prior, pending))
    return plans, redone


_DAMAGED = "damaged or missing on disk"


def _redo_reason(
    task: Task, prior: RowState, fp: str | None, path: Path, emulated: bool
) -> str | None:
    """Why a done row must be made again; None when it is kept."""
    same = prior.fp is None or fp is None or prior.fp == fp
    if prior.fp is None and prior.result.get("prompt") not in (None, task.prompt):
        same = False  # a journal from before fingerprints: its prompt tells
    if not same:
        return "changed since they were made"
    if prior.emulated and not emulated:
        return "emulator placeholders"
    if not jpeg_whole(path):
        return _DAMAGED
    return None


def _refetchable(prior: RowState, now: float) -> list[PendingTask]:
    """The done row's own paid task, while the service still keeps it."""
    r = prior.result
    t = float(r.get("t") or 0.0)
    if now - t >= TASK_ID_TTL_S or not r.get("model"):
        return []
    if r.get("task_id"):
        return [PendingTask(task_id=r["task_id"], model=r["model"], submitted_at=t)]
    if r.get("url"):
        return [PendingTask(task_id="refetch", model=r["model"], submitted_at=t, urls=[r["url"]])]
    return []
