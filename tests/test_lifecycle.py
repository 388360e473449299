"""The paid-request lifecycle step by step: each failure is retried by the step that failed,
only a request that can give nothing is closed and paid for again, and every step is the
ledger's record."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import png_bytes

from runner.errors import (
    DownloadError,
    ModelRefused,
    ResultExpired,
    ServerError,
    StillRunning,
    Uncertain,
)
from runner.scheduling.lifecycle import Lifecycle, Request, Resubmit, ResultUnreachable
from runner.store.journal import JOURNAL_NAME, Journal, PaidRequest, replay
from runner.store.ledger import Ledger, PaidBook


class Watcher:
    """Hands out the terminal states it is given, in order (or raises them)."""

    def __init__(self, *states: Any) -> None:
        self.states = list(states)
        self.calls: list[tuple[str, float | None, float]] = []

    async def wait_terminal(
        self, lane: Any, task_id: str, *, started: float | None = None, age_s: float = 0.0
    ) -> Any:
        self.calls.append((task_id, started, age_s))
        state = self.states.pop(0)
        if isinstance(state, BaseException):
            raise state
        return state


def st(status: str, urls: list[str] | None = None, code: str | None = None) -> Any:
    return SimpleNamespace(
        status=status, urls=urls or [], code=code, message="m", item_errors=[], actual_prompts=[]
    )


class Client:
    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.downloads: list[str] = []
        self.fail_downloads: list[Exception] = []
        self.fetches: list[Any] = []
        self.submit_delay = 0.0
        self.submit_error: Exception | None = None

    async def submit_text2image(self, model: str, prompt: str, **kw: Any) -> Any:
        await asyncio.sleep(self.submit_delay)
        if self.submit_error is not None:
            raise self.submit_error
        return SimpleNamespace(task_id=f"t{next(self.ids)}", model=model)

    async def submit_image_edit(self, model: str, prompt: str, image: str, **kw: Any) -> Any:
        return SimpleNamespace(task_id=f"t{next(self.ids)}", model=model)

    async def multimodal(self, model: str, prompt: str, images: list[str], **kw: Any) -> Any:
        return SimpleNamespace(urls=[f"http://r/s{next(self.ids)}.png"], model=model)

    async def fetch_task(self, task_id: str) -> Any:
        return self.fetches.pop(0)

    async def download(self, url: str) -> bytes:
        self.downloads.append(url)
        if self.fail_downloads:
            raise self.fail_downloads.pop(0)
        return png_bytes()


async def cpu(fn: Any, *args: Any) -> Any:
    return fn(*args)


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    j = Journal(tmp_path)
    yield j
    j.close()


def life(client: Client, journal: Journal, watcher: Watcher) -> Lifecycle:
    ledger = Ledger(journal, PaidBook(), backend="https://svc/api/v1", emulated=False)
    return Lifecycle(client, ledger, watcher, cpu=cpu, backoff_max_s=0.01)  # type: ignore[arg-type]


def records(tmp_path: Path) -> list[str]:
    lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
    return [json.loads(x)["ev"] for x in lines]


async def accepted(lc: Lifecycle, index: str, task_id: str = "t9", **kw: Any) -> PaidRequest:
    """A request the service took, as the ledger knows it."""
    paid = await lc.ledger.send(index, "m", n=1, fp=None, sync=False, prompt="p")
    await lc.ledger.accepted(paid, task_id)
    return paid


LANE = SimpleNamespace(name="m")


async def test_submit_journals_the_id_before_anything_else(tmp_path: Path, journal) -> None:
    lc = life(Client(), journal, Watcher())
    paid = await lc.submit(Request(index="1", model="m", prompt="p", fp="abc"))
    state = replay(tmp_path / JOURNAL_NAME)
    assert state.rows["1"].pending[0].task_id == paid.task_id == "t1"
    assert state.rows["1"].pending[0].fp == "abc"
    assert records(tmp_path) == ["sending", "submitted"]  # on disk before it left
    assert lc.ledger.this_run() == {"m": 1}


async def test_a_sync_answer_is_journaled_with_its_urls(tmp_path: Path, journal) -> None:
    lc = life(Client(), journal, Watcher())
    paid = await lc.submit(Request(index="2", model="qie", prompt="p", source="data:", sync=True))
    pending = replay(tmp_path / JOURNAL_NAME).rows["2"].pending
    assert paid.sync and pending[0].urls == paid.urls == ["http://r/s1.png"]


async def test_a_cancelled_caller_still_gets_its_paid_id_journaled(tmp_path: Path, journal) -> None:
    client = Client()
    client.submit_delay = 0.05
    lc = life(client, journal, Watcher())
    caller = asyncio.ensure_future(lc.submit(Request(index="3", model="m", prompt="p")))
    await asyncio.sleep(0.01)  # the request is out; the answer has not come
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await lc.drain(5.0)
    assert [p.task_id for p in replay(tmp_path / JOURNAL_NAME).rows["3"].pending] == ["t1"]


@pytest.mark.parametrize(
    ("state", "cause", "why", "billed"),
    [
        (st("SUCCEEDED"), ServerError, "succeeded without images", 0),
        (st("FAILED", code="InternalError.Algo"), ServerError, "FAILED InternalError.Algo", 0),
        (
            st("FAILED", code="DataInspectionFailed"),
            ModelRefused,
            "FAILED DataInspectionFailed",
            0,
        ),
        (st("UNKNOWN"), ResultExpired, "UNKNOWN", 1),  # gone: whether it billed is not known
        (st("CANCELED"), ResultExpired, "CANCELED", 0),
    ],
)
async def test_a_task_that_gives_nothing_is_closed_then_resubmitted(
    tmp_path: Path, journal, state: Any, cause: type, why: str, billed: int
) -> None:
    lc = life(Client(), journal, Watcher(state))
    paid = await accepted(lc, "4")
    with pytest.raises(Resubmit) as err:
        await lc.wait(LANE, paid)
    assert isinstance(err.value.cause, cause)
    replayed = replay(tmp_path / JOURNAL_NAME)
    assert replayed.rows["4"].pending == []
    assert records(tmp_path)[-1] == "task_closed"
    last = json.loads((tmp_path / JOURNAL_NAME).read_text().splitlines()[-1])
    assert last["why"] == why
    assert replayed.book.billed() == ({"m": billed} if billed else {})


async def test_a_task_still_running_at_its_deadline_is_kept(tmp_path: Path, journal) -> None:
    """Never cancelled, closed nor paid again: the next run polls it."""
    lc = life(Client(), journal, Watcher(StillRunning("task t7 was still running")))
    paid = await accepted(lc, "5", "t7")
    with pytest.raises(StillRunning):
        await lc.wait(LANE, paid)
    assert records(tmp_path) == ["sending", "submitted"]
    assert [p.task_id for p in replay(tmp_path / JOURNAL_NAME).rows["5"].pending] == ["t7"]


async def test_a_resumed_task_is_watched_by_its_age_not_a_start(journal) -> None:
    """A task of an earlier run has no start on this run's clock: the watcher gets its age
    from the journal as a hint and times it from its own first poll."""
    watcher = Watcher(st("SUCCEEDED", ["http://r/a.png"]))
    lc = life(Client(), journal, watcher)
    old = PaidRequest(key="k", index="6", model="m", task_id="t1", phase="accepted", sent_at=1000.0)
    await lc.wait(LANE, old)
    assert watcher.calls[0][:2] == ("t1", None) and watcher.calls[0][2] > 1e9
    fresh = await lc.submit(Request(index="6b", model="m", prompt="p"))
    watcher.states.append(st("SUCCEEDED", ["http://r/b.png"]))
    await lc.wait(LANE, fresh)
    assert watcher.calls[1][1] is not None  # sent in this run: timed from its own start


async def test_a_lost_answer_is_uncertain_and_journaled(tmp_path: Path, journal) -> None:
    client = Client()
    client.submit_error = Uncertain("submit: no complete answer within 60 s")
    lc = life(client, journal, Watcher())
    with pytest.raises(Uncertain) as err:
        await lc.submit(Request(index="12", model="m", prompt="p", n=2))
    assert err.value.paid is not None and err.value.paid.phase == "uncertain"
    assert records(tmp_path) == ["sending", "uncertain"]
    assert replay(tmp_path / JOURNAL_NAME).book.billed() == {"m": 2}  # may have been billed


async def test_a_refusal_bills_nothing(tmp_path: Path, journal) -> None:
    client = Client()
    client.submit_error = ServerError("500 InternalError")
    lc = life(client, journal, Watcher())
    with pytest.raises(ServerError):
        await lc.submit(Request(index="13", model="m", prompt="p"))
    assert records(tmp_path) == ["sending", "not_accepted"]
    assert replay(tmp_path / JOURNAL_NAME).book.billed() == {}


async def test_a_task_id_another_row_owns_is_no_proof(tmp_path: Path, journal) -> None:
    """Two requests answered one task id: neither answer proves its request (the first may
    be the wrong one), so both are looked for by their prompts."""
    lc = life(Client(), journal, Watcher())
    await lc.submit(Request(index="14", model="m", prompt="p"))  # t1
    lc.client.ids = itertools.count(1)  # type: ignore[attr-defined]  # the service says t1 again
    with pytest.raises(Uncertain, match="already row 14"):
        await lc.submit(Request(index="15", model="m", prompt="q"))
    phases = {p.index: p.phase for p in replay(tmp_path / JOURNAL_NAME).book.requests.values()}
    assert phases == {"14": "uncertain", "15": "uncertain"}
    assert replay(tmp_path / JOURNAL_NAME).book.by_task == {}  # the id is no one's now


async def test_more_images_than_asked_are_counted_and_refused(tmp_path: Path, journal) -> None:
    urls = ["http://r/1.png", "http://r/2.png", "http://r/3.png"]
    lc = life(Client(), journal, Watcher(st("SUCCEEDED", urls)))
    paid = await accepted(lc, "16")
    with pytest.raises(Resubmit) as err:
        await lc.wait(LANE, paid)
    assert isinstance(err.value.cause, ServerError)
    assert replay(tmp_path / JOURNAL_NAME).book.billed() == {"m": 3}


async def test_downloads_are_retried_by_downloading_again(journal) -> None:
    client = Client()
    client.fail_downloads = [DownloadError("503"), DownloadError("reset"), DownloadError("429")]
    lc = life(client, journal, Watcher())
    paid = await accepted(lc, "7", "t1")
    got = await lc.fetch(paid, ["http://r/a.png"], None)
    assert len(got) == 1 and client.downloads == ["http://r/a.png"] * 4
    assert lc.retries == 3


async def test_an_expired_url_is_renewed_from_the_task(journal) -> None:
    client = Client()
    client.fail_downloads = [ResultExpired("403")]
    client.fetches = [st("SUCCEEDED", ["http://r/fresh.png"])]
    lc = life(client, journal, Watcher())
    paid = await accepted(lc, "8", "t1")
    await lc.fetch(paid, ["http://r/old.png"], None)
    assert client.downloads == ["http://r/old.png", "http://r/fresh.png"]


async def test_a_result_that_never_downloads_keeps_its_task(tmp_path: Path, journal) -> None:
    client = Client()
    client.fail_downloads = [DownloadError("503")] * 10
    lc = life(client, journal, Watcher())
    paid = await accepted(lc, "9", "t1")
    with pytest.raises(ResultUnreachable, match="kept"):
        await lc.fetch(paid, ["http://r/a.png"], None)
    assert [p.task_id for p in replay(tmp_path / JOURNAL_NAME).rows["9"].pending] == ["t1"]


async def test_html_instead_of_an_image_is_downloaded_again(journal) -> None:
    client = Client()
    lc = life(client, journal, Watcher())
    real = client.download
    bodies = [b"<html>502 Bad Gateway</html>"]

    async def flaky(url: str) -> bytes:
        if bodies:
            client.downloads.append(url)
            return bodies.pop()
        return await real(url)

    client.download = flaky  # type: ignore[method-assign]
    got = await lc.fetch(await accepted(lc, "10", "t"), ["u"], None)
    assert len(got) == 1 and len(client.downloads) == 2


async def test_expired_sync_urls_cannot_be_renewed(tmp_path: Path, journal) -> None:
    """A sync call's URLs refused past their life close the call: a new request is legit."""
    client = Client()
    client.fail_downloads = [ResultExpired("403")]
    lc = life(client, journal, Watcher())
    paid = PaidRequest(
        key="s", index="11", model="qie", sync=True, phase="answered", urls=["http://r/s.png"]
    )  # answered by a run long ago (journal time 0)
    with pytest.raises(Resubmit):
        await lc.fetch(paid, paid.urls, None)
    assert records(tmp_path) == ["task_closed"]


async def test_a_young_sync_url_refused_is_kept_not_paid_again(tmp_path: Path, journal) -> None:
    """A 403 seconds after the answer is no expiry: downloaded again, then kept."""
    client = Client()
    client.fail_downloads = [ResultExpired("403")] * 10
    lc = life(client, journal, Watcher())
    paid = await lc.submit(Request(index="17", model="qie", prompt="p", source="d", sync=True))
    with pytest.raises(ResultUnreachable, match="kept"):
        await lc.fetch(paid, paid.urls, None)
    assert records(tmp_path) == ["sending", "sync_answer"]  # nothing closed
    assert len(client.downloads) == lc.policy.download_rounds  # type: ignore[union-attr]
