"""``runner rejudge``: score every output and candidate of a finished run, keep the best.

The judge backend (``runner.backends.judge``) scores; this module loads the run's tasks and
journal, picks per row, and rewrites ``imgs/<index>.jpg`` when another candidate wins. The
caller hears the summary after every row (``on_row``: rows done of rows to judge, the
judge's calls, tokens and estimated cost so far).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, Field

from runner.backends.judge.scorer import ChatClient, Judge, JudgeBudgetExhausted, JudgeScore, pick
from runner.cost import price_book
from runner.outputs.candidates import candidate_files
from runner.policy import RetryPolicy
from runner.settings import Settings
from runner.store.files import write_atomic
from runner.store.journal import JOURNAL_NAME, Journal, JournalState, RowState, replay
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
    total: int = 0  # rows with outputs to judge
    rows: int = 0  # rows with outputs that were looked at
    files: int = 0  # outputs and candidates judged (scored or not)
    scored: int = 0
    unscored: int = 0
    changed: int = 0  # rows whose imgs/<index>.jpg became another candidate
    calls: int = 0
    throttled: int = 0
    budget_exhausted: bool = False
    by_type: dict[str, TypeStats] = Field(default_factory=dict)
    usage: dict[str, Any] = Field(default_factory=dict)  # the judge's (JudgeUsage)
    currency: str = ""  # of the usage's cost: the region's


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
    on_row: Callable[[RejudgeSummary], None] | None = None,
) -> RejudgeSummary:
    """Score every existing output and candidate again (no generation), journal "judged"
    records, re-pick each row's best into imgs/<index>.jpg and journal "chosen"; ``on_row``
    hears the summary so far after each row.

    Holds the folder's lock: no run may write images or the journal meanwhile.
    """
    from runner.errors import TaskFileError
    from runner.store.lock import OutLock

    out_dir = Path(out_dir)
    if not (out_dir / JOURNAL_NAME).is_file():
        raise TaskFileError(f"{out_dir} holds no run (no {JOURNAL_NAME}): nothing to rejudge")
    with OutLock(out_dir, "rejudge"):
        return await _rejudge(out_dir, tasks_path, images, settings, client, concurrency, on_row)


async def _rejudge(
    out_dir: Path,
    tasks_path: Path,
    images: Path | None,
    settings: Settings,
    client: ChatClient,
    concurrency: int,
    on_row: Callable[[RejudgeSummary], None] | None,
) -> RejudgeSummary:
    # absolute: a relative path would be read against whatever folder the user is in
    tasklist = await asyncio.to_thread(lambda: load_tasks(Path(tasks_path).resolve(), images))
    state = await asyncio.to_thread(replay, out_dir / JOURNAL_NAME)
    policy = RetryPolicy.from_settings(settings)
    judge = Judge(
        client, settings.judge, emulated=settings.emulated, policy=policy, region=settings.region
    )
    journal = Journal(out_dir)
    run = _Pass(out_dir, state, judge, journal, concurrency, on_row)
    run.summary.currency = price_book(settings).currency
    run.summary.total = sum(1 for t in tasklist.tasks if run.has_output(t))
    try:
        await asyncio.gather(*(run.row(t) for t in tasklist.tasks))
    finally:
        journal.close()

    summary = run.summary
    types = {t.index: t.task_type for t in tasklist.tasks}
    for ttype, stats in summary.by_type.items():
        _fill_stats(stats, [s for idx, (_, s) in run.chosen.items() if types.get(idx) == ttype])
    summary.calls = judge.calls
    summary.throttled = judge.throttled
    summary.usage = judge.usage.model_dump(mode="json")
    log.info("rejudge.done", **summary.model_dump(exclude={"by_type"}))
    return summary


def _fill_stats(stats: TypeStats, picked: list[JudgeScore]) -> None:
    """A type's means over the chosen scores of its rows."""
    stats.scored = len(picked)
    stats.mean_sc = _mean([min(s.sc) for s in picked if s.sc])
    stats.mean_pq = _mean([min(s.pq) for s in picked if s.pq])
    stats.mean_overall = _mean([s.overall for s in picked if s.overall is not None])
    stats.mean_identity = _mean([s.identity for s in picked if s.identity is not None])


class _Pass:
    """One rejudge of a run folder: what the rows, judged concurrently, share."""

    def __init__(
        self,
        out_dir: Path,
        state: JournalState,
        judge: Judge,
        journal: Journal,
        concurrency: int,
        on_row: Callable[[RejudgeSummary], None] | None,
    ) -> None:
        self.on_row = on_row
        self.out_dir = out_dir
        self.state = state
        self.judge = judge
        self.journal = journal
        self.summary = RejudgeSummary()
        self.chosen: dict[str, tuple[str, JudgeScore]] = {}  # index -> file, its score
        self.gate = asyncio.Semaphore(max(1, concurrency))

    def has_output(self, task: Task) -> bool:
        """Whether the row has anything to judge."""
        row = self.state.rows.get(task.index)
        if row is None:
            return False
        if not (row.done or (self.out_dir / "imgs" / f"{task.index}.jpg").is_file()):
            return False
        return bool(candidate_files(self.out_dir, task.index, row))

    async def row(self, task: Task) -> None:
        """Judge every output of a row that has any, then keep its best."""
        if not self.has_output(task):
            return
        row = self.state.rows[task.index]
        imgs_path = self.out_dir / "imgs" / f"{task.index}.jpg"
        files = candidate_files(self.out_dir, task.index, row)
        async with self.gate:
            scores = await self._score_all(task, row, files, imgs_path)
            if scores is not None:
                await self._keep_best(task, files, scores, imgs_path)
        self.summary.rows += 1
        self.summary.by_type.setdefault(task.task_type, TypeStats()).rows += 1
        if self.on_row is not None:
            self.summary.calls = self.judge.calls
            self.summary.throttled = self.judge.throttled
            self.summary.usage = self.judge.usage.model_dump(mode="json")
            self.on_row(self.summary)

    async def _score_all(
        self, task: Task, row: RowState, files: list[dict[str, Any]], imgs_path: Path
    ) -> list[JudgeScore | None] | None:
        """The files' scores in order; None once the judge's budget is spent (a partly judged
        row keeps its current choice)."""
        scores: list[JudgeScore | None] = []
        for entry in files:
            if self.summary.budget_exhausted:
                return None
            s = await self._score(task, row, entry, imgs_path)
            if s is None:
                return None
            scores.append(s)
        return scores

    async def _score(
        self, task: Task, row: RowState, entry: dict[str, Any], imgs_path: Path
    ) -> JudgeScore | None:
        """One file judged and journalled; None when the judge's budget is spent."""
        identity = entry["identity_target"]
        if identity is None and task.task_type == "deepfake":
            identity = await asyncio.to_thread(
                _same_file_identity, self.out_dir / entry["file"], imgs_path, row
            )
        try:
            s = await self.judge.score(
                task.task_type,
                task.prompt,
                self.out_dir / entry["file"],
                source=task.ori_image,
                identity=identity,
            )
        except JudgeBudgetExhausted as exc:
            if not self.summary.budget_exhausted:
                log.warning("judge.budget_exhausted", message=str(exc))
            self.summary.budget_exhausted = True
            return None
        self.summary.files += 1
        if s.scored:
            self.summary.scored += 1
        else:
            self.summary.unscored += 1
            log.info("judge.unscored", index=task.index, file=entry["file"], error=s.error)
        await self.journal.write("judged", index=task.index, file=entry["file"], **s.record())
        return s

    async def _keep_best(
        self,
        task: Task,
        files: list[dict[str, Any]],
        scores: list[JudgeScore | None],
        imgs_path: Path,
    ) -> None:
        """The best scored file becomes imgs/<index>.jpg (when it is another), journalled."""
        best = pick(scores)
        if best is None:
            return
        rel = files[best]["file"]
        best_score = scores[best]
        assert best_score is not None
        self.chosen[task.index] = (rel, best_score)
        if rel != f"imgs/{task.index}.jpg":
            data = await asyncio.to_thread(_replacement, self.out_dir / rel, imgs_path)
            if data is not None:
                await write_atomic(imgs_path, data)
                self.summary.changed += 1
        await self.journal.write("chosen", index=task.index, file=rel, overall=best_score.overall)


def _replacement(src: Path, dst: Path) -> bytes | None:
    """Blocking: src's bytes when dst is missing or holds others (its folder made), else None."""
    data = src.read_bytes()
    if dst.is_file() and dst.read_bytes() == data:
        return None
    dst.parent.mkdir(parents=True, exist_ok=True)
    return data


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
