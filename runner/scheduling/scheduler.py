"""The scheduler: every row to its backend under the quotas, every result to disk.

One coroutine per row, fed per task type through a window of workers. A row whose result
is on disk, whole, and made from the same inputs is kept (``rerun``). API rows take what
tasks an earlier run paid for, then a slot of one of their models, submit, poll and
download (``rowsteps``, ``lifecycle``); deepfake rows go to the face-swap pool; either ends
written, judged and journaled (``finishing``). What an error means is ``runner.policy``'s
to decide: retried, rerouted, the row failed, or the whole run stopped (here).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from runner.errors import DiskFull, Fatal
from runner.logs import NOTICES
from runner.outcomes import RowResult, RunSummary
from runner.policy import RetryPolicy
from runner.scheduling.cpu import CpuPool
from runner.scheduling.finishing import Finisher, RowStop, failed
from runner.scheduling.lanes import LanePool
from runner.scheduling.learned import LEARNED_NAME, apply_learned, load_learned, save_learned
from runner.scheduling.lifecycle import Lifecycle
from runner.scheduling.model_lane import ModelLane
from runner.scheduling.polling import PollBudget, TaskWatcher
from runner.scheduling.rerun import jpeg_whole, resume_rows, still_bad
from runner.scheduling.rowsteps import RowSteps
from runner.settings import Settings
from runner.store.journal import Journal, JournalState, PaidRequest, RowState
from runner.store.ledger import Ledger, PaidBook
from runner.tasks import Task, TaskList

if TYPE_CHECKING:
    from runner.backends.faceswap.pool import FaceSwapPool
    from runner.backends.judge.scorer import Judge
    from runner.backends.local.pool import LocalPool
    from runner.cost import Budget

__all__ = ["RowResult", "RunSummary", "Scheduler", "jpeg_whole"]

log = structlog.get_logger(__name__)


def _kept_score(prior: RowState) -> float | None:
    """A kept row's score: a rejudge's pick's, else the one it was made with."""
    if prior.chosen:
        overall = prior.judged.get(prior.chosen, {}).get("overall")
        if isinstance(overall, int | float):
            return float(overall)
    score = prior.result.get("score")
    return float(score) if isinstance(score, int | float) else None


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        *,
        out_dir: Path,
        journal: Journal,
        client: Any,
        swapper: FaceSwapPool | None = None,
        swapper_problem: str | None = None,
        judge: Judge | None = None,
        emulated: bool,
        backend: str,
        on_row: Callable[[RowResult], None] | None = None,
        budget: Budget | None = None,
        local: LocalPool | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        # the run's one retry policy: the judge should be handed the same (``runner.job``)
        policy = policy or RetryPolicy.from_settings(settings)
        names = {m for models in settings.models.values() for m in models}
        lanes = {m: ModelLane(m, settings.quota(m)) for m in sorted(names)}
        self.settings, self.emulated, self.backend = settings, emulated, backend
        self.out_dir, self.journal, self.on_row = out_dir, journal, on_row
        self.lanes = lanes
        self.pool = LanePool(
            lanes, total_cap=settings.concurrency, cap_given=settings.concurrency_given
        )
        self.polls = PollBudget(settings.poll_qps)
        # result decoding/encoding, below the loop's priority (a source to prepare is on the
        # way to a slot: it stays on the default executor, at normal priority)
        self.cpu = CpuPool()
        self.finisher = Finisher(
            settings, out_dir, journal, judge, emulated, swapper, swapper_problem
        )
        self.budget = budget
        # every paid request: this run's, and the folder's earlier ones once ``run`` has the
        # journal's state (emulator rehearsals never count as real spend)
        self.ledger = Ledger(
            journal,
            PaidBook(),
            backend=backend,
            emulated=backend.startswith("emulator"),
            budget=budget,
        )
        self.life: Lifecycle | None = None
        self.steps: RowSteps | None = None
        if client is not None:
            watcher = TaskWatcher(
                client, self.polls, timeout_s=settings.task_timeout_s, first_s=settings.poll_first_s
            )
            self.life = Lifecycle(
                client,
                self.ledger,
                watcher,
                cpu=self.cpu.run,
                jpeg_quality=settings.jpeg_quality,
                policy=policy,
            )
            self.steps = RowSteps(
                settings, self.life, self.pool, self.cpu, self.finisher, policy, local
            )
        self.swapper = swapper  # read by the rows window
        self.redone: Counter[str] = Counter()  # why done rows were made again
        self._still_bad: set[str] = set()  # rows held as bad input, unchanged (rerun.still_bad)
        self._stop_reason: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def imgs_dir(self) -> Path:
        return self.out_dir / "imgs"

    @property
    def refused_models(self) -> dict[str, str]:
        """Models set aside for the whole run (not served here), and why."""
        return self.steps.refused_models if self.steps is not None else {}

    def _max_slots(self, model: str) -> int:
        quota = self.settings.quota(model)
        limit = quota.max_in_flight if quota.learn else quota.in_flight
        return min(limit or self.settings.concurrency, self.settings.concurrency)

    # --- the run -------------------------------------------------------------
    async def run(
        self,
        tasklist: TaskList,
        state: JournalState,
        fps: dict[str, str] | None = None,
    ) -> RunSummary:
        started = time.monotonic()
        fps = fps or {}
        self.ledger.adopt(state.book)
        self.imgs_dir.mkdir(parents=True, exist_ok=True)
        learned_path = self.out_dir / LEARNED_NAME
        apply_learned(self.lanes, await asyncio.to_thread(load_learned, learned_path))
        results: list[RowResult] = []
        for bad in tasklist.bad:
            res = RowResult(
                index=bad.index, task_type=bad.task_type, status="bad", reason=bad.reason
            )
            await self.journal.write("failed", index=bad.index, reason=bad.reason, kind="input")
            results.append(self._emit(res))
        resumes, self.redone = await asyncio.to_thread(
            resume_rows,
            tasklist,
            state,
            fps,
            imgs_dir=self.imgs_dir,
            emulated=self.emulated,
            backend=self.backend,
        )
        self._still_bad = {
            task.index
            for task, (prior, keep) in zip(tasklist.tasks, resumes, strict=True)
            if still_bad(prior, keep, fps.get(task.index), self._setup(task))
        }
        if self._still_bad:
            NOTICES.info(
                f"{len(self._still_bad)} row(s) with bad input unchanged since the last run are "
                "not tried again (change the row, its images, the models or the face-swap backend)"
            )
        if self.redone:
            why = ", ".join(f"{n} {why}" for why, n in self.redone.most_common())
            NOTICES.warning(f"{sum(self.redone.values())} done row(s) made again: {why}")
        # Rows are fed per task type through a window of workers, not all started at once:
        # memory stays flat on any number of rows, and every type keeps enough rows waiting
        # for its models' slots (the lanes stay work-conserving across types).
        queues: dict[str, deque[tuple[Task, RowState, list[PaidRequest]]]] = {}
        for task, (prior, keep) in zip(tasklist.tasks, resumes, strict=True):
            queues.setdefault(task.task_type, deque()).append((task, prior, keep))
        finished: dict[str, RowResult] = {}
        for kind, queue in queues.items():
            for k in range(min(self._window(kind), len(queue))):
                self._tasks.append(
                    asyncio.create_task(self._feed(queue, fps, finished), name=f"rows-{kind}-{k}")
                )
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # the run itself is cancelled (a caller's timeout, a notebook's interrupt): the
            # paid steps in flight still reach the journal before the client closes
            await self.drain()
            raise
        await self.drain()  # paid ids of cancelled rows reach the journal first
        for task in tasklist.tasks:
            if task.index in finished:
                results.append(finished[task.index])
            else:
                reason = self._stop_reason or "not finished"
                results.append(
                    self._emit(
                        RowResult(
                            index=task.index,
                            task_type=task.task_type,
                            status="stopped",
                            reason=reason,
                        )
                    )
                )
        order = {idx: i for i, idx in enumerate(tasklist.order)}
        results.sort(key=lambda r: order.get(r.index, len(order)))
        self.cpu.close()
        try:
            if self.out_dir.is_dir():  # a folder deleted under the run is not made again
                await asyncio.to_thread(save_learned, self.lanes, learned_path)
        except OSError as exc:
            log.warning("learned_quotas_not_saved", error=str(exc))
        return RunSummary(
            rows=results,
            elapsed_s=time.monotonic() - started,
            emulated=self.emulated,
            backend=self.backend,
            retries=self._retries(),
            throttled=sum(lane.stats.throttled for lane in self.lanes.values()),
            polls=self.polls.polls,
            submits=self.ledger.taken(),
            stopped_reason=self._stop_reason,
            models=self.model_views(),
        )

    async def drain(self) -> None:
        """Wait for the paid calls in flight to be answered and journaled: as long as a sync
        call may take (its timeout), a little more for the record."""
        if self.life is not None:
            await self.life.drain(self.settings.sync_timeout_s + 5.0)

    def _retries(self) -> int:
        """Requests sent again and download rounds repeated, all rows together."""
        if self.steps is None or self.life is None:
            return 0
        return self.steps.retries + self.life.retries

    def _setup(self, task: Task) -> str:
        """What besides its inputs decides whether a row's input is usable: the face-swap
        backend for a deepfake row; for the others the models tried and the service that
        refused it (an emulator's verdict never binds the real service, nor another run's
        emulator)."""
        if task.task_type == "deepfake":
            return f"faceswap {self.swapper.backend if self.swapper is not None else 'none'}"
        models = ",".join(self.settings.models.get(task.task_type, []))
        return f"models {models} on {self.backend}"

    def _window(self, kind: str) -> int:
        """How many rows of a type are under way at once: twice its models' slots (so a
        freed slot always finds a row ready), or twice the face-swap workers."""
        if kind == "deepfake":
            return 2 * (self.swapper.workers if self.swapper is not None else 2) + 2
        return 2 * sum(self._max_slots(m) for m in self.settings.models.get(kind, [])) + 2

    async def _feed(
        self,
        queue: deque[tuple[Task, RowState, list[PaidRequest]]],
        fps: dict[str, str],
        finished: dict[str, RowResult],
    ) -> None:
        while queue and self._stop_reason is None:
            task, prior, pending = queue.popleft()
            finished[task.index] = await self._row(task, prior, pending, fps.get(task.index))

    def model_views(self) -> list[dict[str, Any]]:
        """Each model's slots, pace and learned figures, for a live display."""
        return self.pool.views()

    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop the run from outside (Ctrl-C, SIGTERM): rows end as "stopped", paid ids
        still in flight are journaled, and ``run`` returns the summary."""
        self._stop(reason, by_user=True)

    def _emit(self, result: RowResult) -> RowResult:
        if self.on_row is not None:
            self.on_row(result)
        return result

    def _stop(self, reason: str, *, by_user: bool = False) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            log.info("run_stopped", reason=reason, by_user=by_user)  # the caller says it
            current = asyncio.current_task()
            for t in self._tasks:
                if t is not current and not t.done():
                    t.cancel()

    # --- one row -------------------------------------------------------------
    async def _row(
        self, task: Task, prior: RowState, pending: list[PaidRequest], fp: str | None
    ) -> RowResult:
        t0 = time.monotonic()
        path = self.imgs_dir / f"{task.index}.jpg"
        if prior.done:
            res = RowResult(
                index=task.index,
                task_type=task.task_type,
                status="skipped",
                model=prior.model,
                file=str(path.relative_to(self.out_dir)),
                emulated=prior.emulated,
                identity_target=prior.result.get("identity_target"),
                identity_ori=prior.result.get("identity_ori"),
                score=_kept_score(prior),
                reason=prior.result.get("note"),  # e.g. short of candidates: budget reached
                held_back=int(prior.result.get("held_back") or 0),
            )
            return self._emit(res)
        if task.index in self._still_bad:
            res = RowResult(
                index=task.index,
                task_type=task.task_type,
                status="bad",
                reason=f"{prior.failed_reason} (as in the last run; the row, its images and "
                + ("the face-swap backend" if task.task_type == "deepfake" else
                   "the models and the service")
                + " are unchanged, so it is not tried again)",
            )
            return self._emit(res)
        try:
            res = await self._make(task, pending, fp)
        except RowStop as stop:
            res = stop.result
            log.info("row_failed", index=task.index, type=task.task_type, reason=res.reason)
            try:
                bad = res.status == "bad"  # the row's own input: not tried again unchanged
                await self.journal.write(
                    "failed",
                    index=task.index,
                    reason=res.reason,
                    kind="input" if bad else "row",
                    fp=fp if bad else None,
                    setup=self._setup(task) if bad else None,
                )
            except DiskFull as exc:
                self._stop(f"DiskFull: {exc}")
        except (Fatal, DiskFull) as exc:
            self._stop(f"{type(exc).__name__}: {exc}")
            res = RowResult(
                index=task.index, task_type=task.task_type, status="stopped", reason=str(exc)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one row, visibly, not the run
            log.exception("row_error", index=task.index, error=repr(exc))
            res = RowResult(
                index=task.index,
                task_type=task.task_type,
                status="failed",
                reason=f"internal error: {type(exc).__name__}: {exc} (details in run.log)",
            )
        res.seconds = round(time.monotonic() - t0, 3)
        return self._emit(res)

    async def _make(self, task: Task, pending: list[PaidRequest], fp: str | None) -> RowResult:
        """The row made: a face swap, or an API (or local) model's image."""
        if task.task_type == "deepfake":
            return await self.finisher.swap_row(task, fp)
        if self.steps is None:
            raise failed(task, "no DashScope client")
        return await self.steps.api_row(task, pending, fp)
