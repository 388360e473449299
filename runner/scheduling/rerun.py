"""What a rerun keeps: a done row whose image is whole and made from the same inputs, the
paid requests of the others that may still give their image (the ledger's open ones, on this
run's backend), and the verdict on a row whose own input was at fault while nothing that
decided it has changed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from runner.store.journal import JournalState, PaidRequest, RowState
from runner.tasks import Task, TaskList

__all__ = ["RowResume", "jpeg_whole", "resume_rows", "still_bad"]

# a row as this run takes it up: what the journal knows of it, and its paid requests worth
# another look (polled, looked for or fetched before any new request)
RowResume = tuple[RowState, list[PaidRequest]]


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


def resume_rows(
    tasklist: TaskList,
    state: JournalState,
    fps: dict[str, str],
    *,
    imgs_dir: Path,
    emulated: bool,
    backend: str | None = None,
) -> tuple[list[RowResume], Counter[str]]:
    """For each row: what the journal knows, and the paid requests worth another look; and
    why done rows are made again (reason -> rows).

    A done row is kept only when its image is whole, it was made from the same inputs, and
    it is not an emulator placeholder in a run with a key. A broken image is fetched again
    from the request that made it; a changed row's old requests are left alone (their
    images answer another prompt), and so are requests another backend took (``backend``:
    this run's; None takes every one). Nothing is dropped for its age on the local clock:
    the service says when a task is gone. Blocking (it reads the disk).
    """
    resumes: list[RowResume] = []
    redone: Counter[str] = Counter()
    for task in tasklist.tasks:
        prior = state.rows.get(task.index) or RowState(index=task.index)
        fp = fps.get(task.index)
        pending = [
            p
            for p in prior.pending
            if (p.fp is None or fp is None or p.fp == fp)
            and (backend is None or p.backend is None or p.backend == backend)
        ]
        if prior.done:
            why = _redo_reason(task, prior, fp, imgs_dir / f"{task.index}.jpg", emulated)
            if why is None:
                resumes.append((prior, []))
                continue
            if why == _DAMAGED:
                pending = _refetchable(state, prior, backend)
            redone[why] += 1
            prior = RowState(index=task.index)  # not done: make it (or fetch it) again
        resumes.append((prior, pending))
    return resumes, redone


def still_bad(prior: RowState, pending: list[PaidRequest], fp: str | None, setup: str) -> bool:
    """Whether a row failed for its own input (no face found, a source that is not an
    image, content every model refused) with the same inputs (``fp``) and the same
    ``setup`` (the face-swap backend, the models) as now, and no paid request of it open:
    trying it again would fail the same way, so it is not tried."""
    return (
        not prior.done
        and not pending
        and fp is not None
        and prior.bad_input is not None
        and prior.bad_input == (fp, setup)
    )


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


def _refetchable(state: JournalState, prior: RowState, backend: str | None) -> list[PaidRequest]:
    """The done row's own paid request, reopened: its task is asked again (or its sync URLs
    downloaded again); the service says whether it still has the image."""
    r = prior.result
    key: str | None = None
    if r.get("task_id"):
        key = state.book.by_task.get(str(r["task_id"]))
    elif r.get("url"):  # a sync call: found by its URL
        key = next((k for k, p in state.book.requests.items() if r["url"] in p.urls), None)
    paid = state.book.requests.get(key) if key is not None else None
    if paid is None:
        return []
    if backend is not None and paid.backend not in (None, backend):
        return []
    return [paid.model_copy(update={"phase": "answered" if paid.sync else "accepted"})]
