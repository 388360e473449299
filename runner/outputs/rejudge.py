"""``runner rejudge``: score every output and candidate of a finished run, keep the best.

The judge backend (``runner.backends.judge``) scores; this module loads the run's tasks and
journal, picks per row, and rewrites ``imgs/<index>.jpg`` when another candidate wins.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, Field

from runner.backends.judge.scorer import ChatClient, Judge, JudgeBudgetExhausted, JudgeScore, pick
from runner.settings import Settings
from runner.store.files import write_atomic
from runner.store.journal import JOURNAL_NAME, Journal, RowState, replay
from runner.tasks import Task, load_tasks

log = structlog.get_logger(__name__)

__all__ = ["RejudgeSummary", "TypeStats", "candidate_files", "rejudge"]


class TypeStats(BaseModel):
    rows: int = 0  # rows with at least one output
    scored: int = 0  # rows whose chosen output is scored
    mean_sc: float | None = None
    mean_pq: float | None = None
    mean_overall: float | None = None
    mean_identity: float | None = None


class RejudgeSummary(BaseModel):
    rows: int = 0  # rows with outputs that were looked at
    files: int = 0  # outputs and candidates judged (scored or not)
    scored: int = 0
    unscored: int = 0
    changed: int = 0  # rows whose imgs/<index>.jpg became another candidate
    calls: int = 0
    throttled: int = 0
    budget_exhausted: bool = False
    by_type: dict[str, TypeStats] = Field(default_factory=dict)


def candidate_files(out_dir: Path, index: str, row: RowState) -> list[dict[str, Any]]:
    """The outputs of one row, relative to ``out_dir``: the current result's candidates (and
    any others under candidates/<index>/ when it had candidates), else imgs/<index>.jpg.

    Each entry: {"file", "model", "identity_target"} (the last two may be None).
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(rel: str, model: Any = None, identity: Any = None) -> None:
        rel = rel.replace("\\", "/")
        if rel in seen or not (out_dir / rel).is_file():
            return
        seen.add(rel)
        out.append({"file": rel, "model": model, "identity_target": identity})

    listed = row.result.get("candidates") or []
    for c in listed:
        if isinstance(c, dict) and isinstance(c.get("file"), str):
            add(c["file"], c.get("model"), c.get("identity_target"))
    folder = out_dir / "candidates" / index
    # Only a result made with candidates owns the folder: files left there by an earlier
    # result of the row are stale and must never replace the current image.
    if listed and folder.is_dir():
        files = [p for p in folder.iterdir() if p.suffix.lower() == ".jpg" and p.is_file()]
        files.sort(
            key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name)
        )
        for p in files:
            add(f"candidates/{index}/{p.name}")
    if not out:
        add(f"imgs/{index}.jpg", row.result.get("model"), row.result.get("identity_target"))
    return out


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


async def rejudge(
    out_dir: Path,
    tasks_path: Path,
    images: Path | None,
    settings: Settings,
    client: ChatClient,
    *,
    concurrency: int = 8,
) -> RejudgeSummary:
    """Score every existing output and candidate again (no generation), journal "judged"
    records, re-pick each row's best into imgs/<index>.jpg and journal "chosen".

    Holds the folder's lock: no run may write images or the journal meanwhile.
    """
    from runner.errors import TaskFileError
    from runner.store.files import OutLock

    out_dir = Path(out_dir)
    if not (out_dir / JOURNAL_NAME).is_file():
        raise TaskFileError(f"{out_dir} holds no run (no {JOURNAL_NAME}): nothing to rejudge")
    with OutLock(out_dir, "rejudge"):
        return await _rejudge(out_dir, tasks_path, images, settings, client, concurrency)


async def _rejudge(
    out_dir: Path,
    tasks_path: Path,
    images: Path | None,
    settings: Settings,
    client: ChatClient,
    concurrency: int,
) -> RejudgeSummary:
    # absolute: a relative path would be read against whatever folder the user is in
    tasklist = await asyncio.to_thread(lambda: load_tasks(Path(tasks_path).resolve(), images))
    state = await asyncio.to_thread(replay, out_dir / JOURNAL_NAME)
    judge = Judge(client, settings.judge, emulated=settings.emulated)
    summary = RejudgeSummary()
    chosen: dict[str, tuple[str, JudgeScore]] = {}
    gate = asyncio.Semaphore(max(1, concurrency))
    journal = Journal(out_dir)

    async def one(task: Task) -> None:
        row = state.rows.get(task.index)
        if row is None:
            return
        imgs_path = out_dir / "imgs" / f"{task.index}.jpg"
        if not (row.done or imgs_path.is_file()):
            return
        files = candidate_files(out_dir, task.index, row)
        if not files:
            return
        summary.rows += 1
        summary.by_type.setdefault(task.task_type, TypeStats()).rows += 1
        async with gate:
            scores: list[JudgeScore | None] = []
            for entry in files:
                if summary.budget_exhausted:
                    return  # a partly judged row keeps its current choice
                identity = entry["identity_target"]
                if identity is None and task.task_type == "deepfake":
                    identity = await asyncio.to_thread(
                        _same_file_identity, out_dir / entry["file"], imgs_path, row
                    )
                try:
                    s = await judge.score(
                        task.task_type,
                        task.prompt,
                        out_dir / entry["file"],
                        source=task.ori_image,
                        identity=identity,
                    )
                except JudgeBudgetExhausted as exc:
                    if not summary.budget_exhausted:
                        log.warning("judge.budget_exhausted", message=str(exc))
                    summary.budget_exhausted = True
                    return
                summary.files += 1
                if s.scored:
                    summary.scored += 1
                else:
                    summary.unscored += 1
                    log.info("judge.unscored", index=task.index, file=entry["file"], error=s.error)
                await journal.write("judged", index=task.index, file=entry["file"], **s.record())
                scores.append(s)
            best = pick(scores)
            if best is None:
                return
            rel = files[best]["file"]
            best_score = scores[best]
            assert best_score is not None
            chosen[task.index] = (rel, best_score)
            if rel != f"imgs/{task.index}.jpg":
                data = (out_dir / rel).read_bytes()
                if not imgs_path.is_file() or imgs_path.read_bytes() != data:
                    imgs_path.parent.mkdir(parents=True, exist_ok=True)
                    await write_atomic(imgs_path, data)
                    summary.changed += 1
            await journal.write("chosen", index=task.index, file=rel, overall=best_score.overall)

    try:
        await asyncio.gather(*(one(t) for t in tasklist.tasks))
    finally:
        journal.close()

    types = {t.index: t.task_type for t in tasklist.tasks}
    for ttype, stats in summary.by_type.items():
        picked = [s for idx, (_, s) in chosen.items() if types.get(idx) == ttype]
        stats.scored = len(picked)
        stats.mean_sc = _mean([min(s.sc) for s in picked if s.sc])
        stats.mean_pq = _mean([min(s.pq) for s in picked if s.pq])
        stats.mean_overall = _mean([s.overall for s in picked if s.overall is not None])
        stats.mean_identity = _mean([s.identity for s in picked if s.identity is not None])
    summary.calls = judge.calls
    summary.throttled = judge.throttled
    log.info("rejudge.done", **summary.model_dump(exclude={"by_type"}))
    return summary


def _same_file_identity(candidate: Path, chosen: Path, row: RowState) -> float | None:
    """The row's identity score applies to a candidate only if it is the chosen file."""
    value = row.result.get("identity_target")
    if value is None:
        return None
    try:
        if candidate == chosen or candidate.read_bytes() == chosen.read_bytes():
            return float(value)
    except OSError:
        return None
    return None
