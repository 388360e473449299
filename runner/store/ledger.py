"""The ledger: every request the service may bill, as one state machine the journal proves.

A paid request (``PaidRequest``) moves through these phases, each by one journal record:

=============  ==================  =============================================  ==========
phase          record (``ev``)     meaning                                        billed
=============  ==================  =============================================  ==========
sent           ``sending``         written to disk before the request leaves      n (maybe)
refused        ``not_accepted``    the service answered no (an error answer, or   0
                                   nothing was sent): nothing to pay
uncertain      ``uncertain``       sent, but the answer was lost: it may have     n (maybe)
                                   been accepted
accepted       ``submitted``       an async task id (``adopted`` when found again n
                                   in the service's task list)
answered       ``sync_answer``     a sync call's result URLs (its only proof)     the images
ended          ``ended``           the task SUCCEEDED (images counted) or         the images
                                   FAILED (0: failed images are not billed)
closed         ``task_closed``     no result will be taken from it any more       as before
taken          ``done``            the row's result is on disk                    as before
=============  ==================  =============================================  ==========

``PaidBook`` folds records into requests: ``replay`` (runner.store.journal) uses it over a
whole journal, ``Ledger`` over each record it writes, so the file and the live state can
never disagree. What was billed is read from here and nowhere else: the budget, the summary,
the report and a rerun count ``PaidBook.billed`` over every run in the folder, a crashed run's
records included (a request with no known outcome counts the images it asked for).
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from runner.errors import RunnerError, Uncertain
from runner.store.records import (
    Accepted,
    Done,
    Ended,
    Failed,
    NotAccepted,
    Record,
    Sending,
    SyncAnswer,
    TaskClosed,
    UncertainAnswer,
)

__all__ = ["BudgetReached", "Ledger", "PaidBook", "PaidRequest", "Phase"]

Phase = Literal["sent", "refused", "uncertain", "accepted", "answered", "ended", "closed", "taken"]
# phases whose request may still give (or owe) an image: a rerun looks at them again
OPEN_PHASES: frozenset[str] = frozenset({"sent", "uncertain", "accepted", "answered", "ended"})


class PaidRequest(BaseModel):
    """One request the service may bill: what it asked for, where it stands, what it cost."""

    key: str  # the runner's own id of the request ("req"); an old journal's task id
    index: str
    model: str
    n: int = 1
    fp: str | None = None
    sync: bool = False
    prompt: str | None = None  # as sent: a lost submit is found again by it
    backend: str | None = None  # where it was sent: only that backend can give its result
    emulated: bool = False
    phase: Phase = "sent"
    task_id: str | None = None
    urls: list[str] = Field(default_factory=list)
    sent_at: float = 0.0  # the journal's wall time of the send (a rerun's hint, never a clock)
    images: int | None = None  # billed images once the service said (answer, end)
    why: str | None = None  # why it was refused, uncertain or closed

    @property
    def billed(self) -> int:
        """Images the service billed, or may have billed while that is not known."""
        if self.phase == "refused":
            return 0
        return self.images if self.images is not None else self.n

    @property
    def open(self) -> bool:
        return self.phase in OPEN_PHASES

    @property
    def uncertain(self) -> bool:
        """Sent, and whether the service took it is not known (a lost answer, or a send
        whose answer a crash never recorded)."""
        return self.phase in ("sent", "uncertain")


class PaidBook:
    """Paid requests folded from journal records; the spend of a folder."""

    def __init__(self) -> None:
        self.requests: dict[str, PaidRequest] = {}
        self.by_task: dict[str, str] = {}  # task id -> request key
        self.backend: str | None = None  # the backend of the run whose records follow
        self.emulated = False

    def run_started(self, backend: str | None, emulated: bool) -> None:
        self.backend = backend
        self.emulated = emulated

    def apply(self, rec: Record) -> PaidRequest | None:
        """Fold one record; the request it moved, if any."""
        if isinstance(rec, Sending):
            paid = PaidRequest(
                key=rec.req,
                index=rec.index,
                model=rec.model,
                n=rec.n,
                fp=rec.fp,
                sync=rec.sync,
                prompt=rec.prompt,
                backend=rec.backend or self.backend,
                emulated=self.emulated,
                sent_at=rec.t,
            )
            self.requests[paid.key] = paid
            return paid
        if isinstance(rec, Accepted):
            paid = self._find(rec.req, None) or self._adopt_old(rec, rec.task_id, sync=False)
            paid.phase, paid.task_id = "accepted", rec.task_id
            self.by_task[rec.task_id] = paid.key
            return paid
        if isinstance(rec, SyncAnswer):
            paid = self._find(rec.req, None) or self._adopt_old(rec, rec.call_id, sync=True)
            paid.phase, paid.urls, paid.images = "answered", list(rec.urls), len(rec.urls)
            paid.task_id = rec.call_id
            self.by_task[rec.call_id] = paid.key
            return paid
        if isinstance(rec, NotAccepted | UncertainAnswer):
            found = self._find(rec.req, None)
            if found is not None:
                found.phase = "refused" if isinstance(rec, NotAccepted) else "uncertain"
                found.why = rec.why
                if found.task_id and self.by_task.get(found.task_id) == found.key:
                    del self.by_task[found.task_id]  # a task id that proved nothing
                found.task_id = None
            return found
        if isinstance(rec, Ended):
            found = self._find(rec.req, rec.task_id)
            if found is not None:
                found.phase, found.images = "ended", rec.images
            return found
        if isinstance(rec, TaskClosed):
            found = self._find(rec.req, rec.task_id)
            if found is not None:
                found.phase, found.why = "closed", rec.why
                if rec.images is not None:
                    found.images = rec.images
            return found
        if isinstance(rec, Done):
            for paid in self.open_for(rec.index):
                paid.phase = "taken"
            return None
        if isinstance(rec, Failed) and rec.task_id:
            found = self._find(None, rec.task_id)
            if found is not None and found.open:
                found.phase = "closed"
            return found
        return None

    def _find(self, key: str | None, task_id: str | None) -> PaidRequest | None:
        if key is not None and key in self.requests:
            return self.requests[key]
        if task_id is not None and task_id in self.by_task:
            return self.requests.get(self.by_task[task_id])
        return None

    def _adopt_old(self, rec: Accepted | SyncAnswer, task_id: str, *, sync: bool) -> PaidRequest:
        """An answer record with no ``sending`` before it (a journal from before the ledger):
        the request starts here."""
        paid = PaidRequest(
            key=rec.req or task_id,
            index=rec.index,
            model=rec.model,
            n=rec.n,
            fp=rec.fp,
            sync=sync,
            prompt=getattr(rec, "prompt_sent", None),
            backend=self.backend,
            emulated=self.emulated,
            sent_at=rec.t,
        )
        self.requests[paid.key] = paid
        return paid

    def open_for(self, index: str) -> list[PaidRequest]:
        return [p for p in self.requests.values() if p.index == index and p.open]

    def billed(self, *, emulated: bool | None = None) -> Counter[str]:
        """Images billed (or possibly billed) per model, over every run folded so far;
        ``emulated``: only requests to the emulator, or only real ones."""
        out: Counter[str] = Counter()
        for paid in self.requests.values():
            if emulated is not None and paid.emulated != emulated:
                continue
            if paid.billed:
                out[paid.model] += paid.billed
        return out


class BudgetReached(RunnerError):
    """The budget does not allow this request: nothing was sent."""


class _Journal(Protocol):
    """What the ledger writes on (``runner.store.journal.Journal``)."""

    async def write_record(self, ev: str, **fields: Any) -> Record: ...


class _Budget(Protocol):
    def allows(self, model: str, images: int, spent: Counter[str]) -> bool: ...
    def reason(self, spent: Counter[str]) -> str: ...


class Ledger:
    """The run's writer of paid-request transitions: each is journaled (fsynced), then
    folded into the book that replay rebuilt from the earlier runs.

    ``backend`` names where this run's requests go (the base URL, or the emulator instance):
    a rerun fetches a request's result only from the backend that took it.
    """

    def __init__(
        self,
        journal: _Journal,
        book: PaidBook,
        *,
        backend: str,
        emulated: bool,
        budget: _Budget | None = None,
    ) -> None:
        self.journal = journal
        self.book = book
        self.backend = backend
        self.emulated = emulated
        self.budget = budget
        self._this_run: set[str] = set()
        self._writing: Counter[str] = Counter()  # images per model of sends not yet on disk
        self.adopt(book)

    def adopt(self, book: PaidBook) -> None:
        """Write on ``book`` from now on (the one replay rebuilt for this run)."""
        self.book = book
        book.run_started(self.backend, self.emulated)

    async def _write(self, ev: str, **fields: Any) -> PaidRequest | None:
        rec = await self.journal.write_record(ev, **fields)
        return self.book.apply(rec)

    # --- transitions ---------------------------------------------------------
    async def send(
        self, index: str, model: str, *, n: int, fp: str | None, sync: bool, prompt: str
    ) -> PaidRequest:
        """prepared -> sent: on disk before the request leaves. ``BudgetReached`` when the
        budget cannot take ``n`` more images of ``model`` (nothing is written then); sends
        still being written count in ``spent``, so requests sent at once never pass it."""
        if self.budget is not None and not self.budget.allows(model, n, self.spent()):
            raise BudgetReached(self.budget.reason(self.spent()))
        key = uuid.uuid4().hex[:16]
        self._writing[model] += n
        try:
            paid = await self._write(
                "sending",
                index=index,
                req=key,
                model=model,
                n=n,
                fp=fp,
                sync=sync,
                prompt=prompt,
                backend=self.backend,
            )
        finally:
            self._writing[model] -= n
        assert paid is not None
        self._this_run.add(key)
        return paid

    async def accepted(self, paid: PaidRequest, task_id: str, *, adopted: bool = False) -> None:
        """sent | uncertain -> accepted. A task id the ledger already knows for another
        request proves neither: both become uncertain and are looked for by their prompts
        (the one that claimed it first may hold a wrong answer as well), unless the other's
        task has already ended as its own."""
        owner = self.book.by_task.get(task_id)
        if owner is not None and owner != paid.key:
            other = self.book.requests[owner]
            why = (
                f"the service answered task id {task_id}, which is already row "
                f"{other.index}'s: no proof that this request was accepted"
            )
            if other.phase == "accepted":
                await self.uncertain(other, f"row {paid.index} was answered its task id too")
            await self.uncertain(paid, why)
            exc = Uncertain(why, model=paid.model)
            exc.paid = paid
            raise exc
        await self._write(
            "submitted",
            index=paid.index,
            req=paid.key,
            task_id=task_id,
            model=paid.model,
            n=paid.n,
            fp=paid.fp,
            adopted=adopted,
        )

    async def answered(self, paid: PaidRequest, urls: list[str]) -> None:
        """sent -> answered: a sync call's result URLs, before any download."""
        await self._write(
            "sync_answer",
            index=paid.index,
            req=paid.key,
            call_id="sync-" + paid.key,
            urls=urls,
            model=paid.model,
            n=paid.n,
            fp=paid.fp,
        )

    async def refused(self, paid: PaidRequest, why: str) -> None:
        """sent -> refused: the service said no, or nothing left: nothing was billed."""
        await self._write("not_accepted", index=paid.index, req=paid.key, why=why)

    async def uncertain(self, paid: PaidRequest, why: str) -> None:
        """sent -> uncertain: the request left and its answer was lost."""
        await self._write("uncertain", index=paid.index, req=paid.key, why=why)

    async def ended(self, paid: PaidRequest, status: str, images: int) -> None:
        """accepted -> ended: the billing of the task is settled (failed images: 0)."""
        await self._write(
            "ended",
            index=paid.index,
            req=paid.key,
            task_id=paid.task_id,
            status=status,
            images=images,
        )

    async def close(self, paid: PaidRequest, why: str, *, images: int | None = None) -> None:
        """-> closed: no result will be taken from it; ``images`` settles its bill when the
        close says it (a task that FAILED billed nothing)."""
        await self._write(
            "task_closed",
            index=paid.index,
            req=paid.key,
            task_id=paid.task_id or "",
            why=why,
            images=images,
        )

    # --- reading -------------------------------------------------------------
    def spent(self) -> Counter[str]:
        """Images billed or possibly billed per model, every run in the folder of this
        run's kind (real or emulated), requests in flight included, and sends still being
        written (so every check of the budget sees them: the next send's, the judge's)."""
        spent = self.book.billed(emulated=self.emulated)
        spent.update(+self._writing)
        return spent

    def this_run(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for key in self._this_run:
            paid = self.book.requests[key]
            if paid.billed:
                out[paid.model] += paid.billed
        return out

    def taken(self) -> int:
        """This run's requests the service took (a task id or a sync answer)."""
        return sum(
            1
            for key in self._this_run
            if self.book.requests[key].phase not in ("sent", "refused", "uncertain")
        )

    def claimed(self, task_id: str) -> bool:
        return task_id in self.book.by_task
