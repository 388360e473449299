"""The remote-task lifecycle step by step: each failure is retried by the step that failed,
and only a task that can give nothing is closed and paid for again."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import png_bytes

from runner.errors import DownloadError, ModelRefused, ResultExpired, ServerError
from runner.scheduling.lifecycle import Lifecycle, Request, Resubmit, ResultUnreachable
from runner.scheduling.polling import WatchTimeout
from runner.store.journal import JOURNAL_NAME, Journal, PendingTask, replay


class Watcher:
    """Hands out the terminal states it is given, in order (or raises them)."""

    def __init__(self, *states: Any) -> None:
        self.states = list(states)
        self.calls: list[tuple[str, float | None, bool]] = []

    async def wait_terminal(
        self, lane: Any, task_id: str, *, submitted_at: float | None, resumed: bool = False
    ) -> Any:
        self.calls.append((task_id, submitted_at, resumed))
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
        self.cancelled: list[str] = []
        self.submit_delay = 0.0

    async def submit_text2image(self, model: str, prompt: str, **kw: Any) -> Any:
        await asyncio.sleep(self.submit_delay)
        return SimpleNamespace(task_id=f"t{next(self.ids)}", model=model)

    async def submit_image_edit(self, model: str, prompt: str, image: str, **kw: Any) -> Any:
        return SimpleNamespace(task_id=f"t{next(self.ids)}", model=model)

    async def multimodal_edit(self, model: str, prompt: str, image: str, **kw: Any) -> Any:
        return SimpleNamespace(urls=[f"http://r/s{next(self.ids)}.png"], model=model)

    async def fetch_task(self, task_id: str) -> Any:
        return self.fetches.pop(0)

    async def cancel_task(self, task_id: str) -> None:
        self.cancelled.append(task_id)

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
    return Lifecycle(client, journal, watcher, cpu=cpu, backoff_max_s=0.01)  # type: ignore[arg-type]


def records(tmp_path: Path) -> list[str]:
    import json

    lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
    return [json.loads(x)["ev"] for x in lines]


LANE = SimpleNamespace(name="m")


async def test_submit_journals_the_id_before_anything_else(tmp_path: Path, journal) -> None:
    lc = life(Client(), journal, Watcher())
    paid = await lc.submit(Request(index="1", model="m", prompt="p", fp="abc"))
    state = replay(tmp_path / JOURNAL_NAME)
    assert state.rows["1"].pending[0].task_id == paid.task_id == "t1"
    assert state.rows["1"].pending[0].fp == "abc"
    assert lc.billed == {"m": 1}


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
    await lc.drain()
    assert [p.task_id for p in replay(tmp_path / JOURNAL_NAME).rows["3"].pending] == ["t1"]


@pytest.mark.parametrize(
    ("state", "cause", "why"),
    [
        (st("SUCCEEDED"), ServerError, "succeeded without images"),
        (st("FAILED", code="InternalError.Algo"), ServerError, "FAILED InternalError.Algo"),
        (st("FAILED", code="DataInspectionFailed"), ModelRefused, "FAILED DataInspectionFailed"),
        (st("UNKNOWN"), ResultExpired, "UNKNOWN"),
        (st("CANCELED"), ResultExpired, "CANCELED"),
    ],
)
async def test_a_task_that_gives_nothing_is_closed_then_resubmitted(
    tmp_path: Path, journal, state: Any, cause: type, why: str
) -> None:
    lc = life(Client(), journal, Watcher(state))
    paid = PendingTask(task_id="t9", model="m", submitted_at=0.0)
    with pytest.raises(Resubmit) as err:
        await lc.wait("4", LANE, paid, resumed=False)
    assert isinstance(err.value.cause, cause)
    assert replay(tmp_path / JOURNAL_NAME).rows["4"].pending == []
    assert records(tmp_path) == ["task_closed"]
    import json

    assert json.loads((tmp_path / JOURNAL_NAME).read_text())["why"] == why


async def test_a_watch_timeout_cancels_and_closes(tmp_path: Path, journal) -> None:
    client = Client()
    lc = life(client, journal, Watcher(WatchTimeout("t7", 900.0)))
    with pytest.raises(Resubmit):
        await lc.wait("5", LANE, PendingTask(task_id="t7", model="m", submitted_at=0), resumed=True)
    assert client.cancelled == ["t7"]


async def test_a_resumed_task_is_watched_with_its_journal_time(journal) -> None:
    """The watcher gets the journal's submit time and ``resumed``: it must not time the task
    out from that (a rerun 23 h later still polls)."""
    watcher = Watcher(st("SUCCEEDED", ["http://r/a.png"]))
    lc = life(Client(), journal, watcher)
    old = PendingTask(task_id="t1", model="m", submitted_at=1000.0)
    await lc.wait("6", LANE, old, resumed=True)
    assert watcher.calls == [("t1", 1000.0, True)]


async def test_downloads_are_retried_by_downloading_again(journal) -> None:
    client = Client()
    client.fail_downloads = [DownloadError("503"), DownloadError("reset"), DownloadError("429")]
    lc = life(client, journal, Watcher())
    paid = PendingTask(task_id="t1", model="m", submitted_at=0.0)
    got = await lc.fetch("7", paid, ["http://r/a.png"], None)
    assert len(got) == 1 and client.downloads == ["http://r/a.png"] * 4
    assert lc.retries == 3


async def test_an_expired_url_is_renewed_from_the_task(journal) -> None:
    client = Client()
    client.fail_downloads = [ResultExpired("403")]
    client.fetches = [st("SUCCEEDED", ["http://r/fresh.png"])]
    lc = life(client, journal, Watcher())
    paid = PendingTask(task_id="t1", model="m", submitted_at=0.0)
    await lc.fetch("8", paid, ["http://r/old.png"], None)
    assert client.downloads == ["http://r/old.png", "http://r/fresh.png"]


async def test_a_result_that_never_downloads_keeps_its_task(tmp_path: Path, journal) -> None:
    client = Client()
    client.fail_downloads = [DownloadError("503")] * 10
    lc = life(client, journal, Watcher())
    await journal.write("submitted", index="9", model="m", task_id="t1")
    paid = PendingTask(task_id="t1", model="m", submitted_at=0.0)
    with pytest.raises(ResultUnreachable, match="kept"):
        await lc.fetch("9", paid, ["http://r/a.png"], None)
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
    got = await lc.fetch("10", PendingTask(task_id="t", model="m", submitted_at=0), ["u"], None)
    assert len(got) == 1 and len(client.downloads) == 2


async def test_expired_sync_urls_cannot_be_renewed(tmp_path: Path, journal) -> None:
    client = Client()
    client.fail_downloads = [ResultExpired("403")]
    lc = life(client, journal, Watcher())
    paid = PendingTask(task_id="sync-1", model="qie", submitted_at=0.0, urls=["http://r/s.png"])
    with pytest.raises(Resubmit):
        await lc.fetch("11", paid, paid.urls, None)
    assert records(tmp_path) == ["task_closed"]
