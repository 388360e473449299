"""The scheduler's rules, against an in-memory service that checks every quota itself."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import png_bytes

from runner.errors import Fatal, ModelRefused, RateLimited, RowFailed, ServerError
from runner.scheduling.scheduler import Scheduler
from runner.settings import Quota, Settings
from runner.store.journal import Journal, replay
from runner.tasks import load_tasks


class FakeService:
    """Async tasks that take ``latency`` s; refuses (429) past a model's true quota."""

    def __init__(self, latency: float = 0.05, true_limit: dict[str, int] | None = None) -> None:
        self.latency = latency
        self.true_limit = true_limit or {}
        self.in_flight: dict[str, int] = {}
        self.max_seen: dict[str, int] = {}
        self.submits: list[tuple[str, str]] = []  # (model, prompt)
        self.tasks: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.throttled = 0
        self.behaviour: dict[str, Any] = {}  # model -> exception to raise on submit
        self.fail_task: dict[str, tuple[str, str]] = {}  # model -> (code, message) FAILED
        self.downloads = 0
        self.loop = asyncio.get_event_loop_policy()

    def _start(self, model: str, prompt: str, n: int = 1) -> str:
        if model in self.behaviour:
            exc = self.behaviour[model]
            raise exc() if callable(exc) and not isinstance(exc, Exception) else exc
        limit = self.true_limit.get(model, 2)
        if self.in_flight.get(model, 0) >= limit:
            self.throttled += 1
            raise RateLimited("quota", code="Throttling.RateQuota", status=429)
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        self.max_seen[model] = max(self.max_seen.get(model, 0), self.in_flight[model])
        self.submits.append((model, prompt))
        tid = f"t{next(self.ids)}"
        end = asyncio.get_running_loop().time() + self.latency
        self.tasks[tid] = {"model": model, "end": end, "n": n}
        return tid

    async def submit_text2image(self, model: str, prompt: str, **kw: Any) -> Any:
        tid = self._start(model, prompt, kw.get("n", 1))
        return SimpleNamespace(task_id=tid, request_id=None, model=model)

    async def submit_image_edit(self, model: str, prompt: str, image: str, **kw: Any) -> Any:
        assert image.startswith("data:image/jpeg;base64,")
        return SimpleNamespace(task_id=self._start(model, prompt), request_id=None, model=model)

    async def multimodal(self, model: str, prompt: str, images: list[str], **kw: Any) -> Any:
        tid = self._start(model, prompt)
        await asyncio.sleep(self.latency)
        self._finish(tid)
        return SimpleNamespace(urls=[f"http://x/{tid}.png"], request_id=None, model=model)

    def _finish(self, tid: str) -> None:
        t = self.tasks[tid]
        if not t.get("finished"):
            t["finished"] = True
            self.in_flight[t["model"]] -= 1

    async def fetch_task(self, task_id: str) -> Any:
        t = self.tasks.get(task_id)
        if t is None:
            return SimpleNamespace(status="UNKNOWN", urls=[], code=None, message=None)
        if asyncio.get_running_loop().time() < t["end"]:
            return SimpleNamespace(status="RUNNING", urls=[], code=None, message=None)
        self._finish(task_id)
        if t["model"] in self.fail_task:
            code, msg = self.fail_task[t["model"]]
            return SimpleNamespace(status="FAILED", urls=[], code=code, message=msg)
        urls = [f"http://x/{task_id}-{k}.png" for k in range(t["n"])]
        return SimpleNamespace(status="SUCCEEDED", urls=urls, code=None, message=None)

    async def download(self, url: str) -> bytes:
        self.downloads += 1
        return png_bytes()


def _settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {
        "models": {
            "t2i": ["m-a", "m-b"],
            "tie": ["edit-x", "edit-y"],
            "vttie": ["edit-y", "edit-x"],
        },
        "quotas": {
            "m-a": Quota(submits_per_second=200, in_flight=2),
            "m-b": Quota(submits_per_second=200, in_flight=2),
            "edit-x": Quota(submits_per_second=200, in_flight=2),
            "edit-y": Quota(submits_per_second=200, in_flight=2),
        },
        "poll_qps": 2000,
        "poll_first_s": 0.01,
        "backoff_max_s": 0.05,
    }
    base.update(kw)
    return Settings(**base)


async def _run(tmp_path: Path, tasks: Path, svc: FakeService, settings: Settings | None = None):
    out = tmp_path / "out"
    journal = Journal(out)
    sched = Scheduler(
        settings or _settings(),
        out_dir=out,
        journal=journal,
        client=svc,
        emulated=True,
        backend="fake",
    )
    try:
        summary = await sched.run(load_tasks(tasks), replay(out / "journal.jsonl"))
    finally:
        journal.close()
    return summary, out


def _rows(n: int, kind: str = "t2i", start: int = 1) -> list[tuple[str, ...]]:
    if kind == "t2i":
        return [(str(i), "t2i", f"prompt {i}", "", "") for i in range(start, start + n)]
    return [(str(i), kind, f"edit {i}", f"s{i}.png", "") for i in range(start, start + n)]


async def test_quotas_are_never_exceeded_and_all_models_used(job, tmp_path: Path) -> None:
    tasks = job(_rows(24) + _rows(8, "tie", 101) + _rows(8, "vttie", 201), img_size=(300, 200))
    svc = FakeService(latency=0.03)
    summary, out = await _run(tmp_path, tasks, svc)
    assert summary.exit_code == 0, summary.failed
    assert svc.throttled == 0
    assert max(svc.max_seen.values()) <= 2
    assert set(svc.max_seen) == {"m-a", "m-b", "edit-x", "edit-y"}  # every listed model used
    assert len(svc.submits) == 40  # nothing paid twice
    assert sorted(p.name for p in (out / "imgs").iterdir()) == sorted(
        f"{i}.jpg" for i in [*range(1, 25), *range(101, 109), *range(201, 209)]
    )


async def test_overall_concurrency_cap(job, tmp_path: Path) -> None:
    tasks = job(_rows(12))
    svc = FakeService(latency=0.03)
    summary, _ = await _run(tmp_path, tasks, svc, _settings(concurrency=1))
    assert summary.exit_code == 0
    assert max(svc.max_seen.values()) == 1 and svc.max_seen.get("m-b", 0) == 0


async def test_learned_quota_shrinks_on_429(job, tmp_path: Path) -> None:
    tasks = job(_rows(16))
    svc = FakeService(latency=0.03, true_limit={"m-a": 1})
    s = _settings(
        models={"t2i": ["m-a"]},
        quotas={"m-a": Quota(submits_per_second=500, in_flight=4, learn=True)},
    )
    summary, _ = await _run(tmp_path, tasks, svc, s)
    assert summary.exit_code == 0
    assert 0 < svc.throttled < 16
    assert summary.models[0]["limit"] == 1


async def test_model_refusal_routes_to_next_model(job, tmp_path: Path) -> None:
    tasks = job(_rows(4))
    svc = FakeService()
    svc.behaviour["m-a"] = ModelRefused("no access", code="Model.AccessDenied", status=403)
    summary, _ = await _run(tmp_path, tasks, svc)
    assert summary.exit_code == 0
    assert {m for m, _ in svc.submits} == {"m-b"}


async def test_moderated_task_goes_to_next_model(job, tmp_path: Path) -> None:
    tasks = job(_rows(2))
    svc = FakeService()
    svc.fail_task["m-a"] = ("DataInspectionFailed", "moderation")
    summary, _ = await _run(tmp_path, tasks, svc, _settings(concurrency=1))
    assert summary.exit_code == 0
    assert [r.model for r in summary.rows] == ["m-b", "m-b"]


async def test_row_error_fails_only_that_row(job, tmp_path: Path) -> None:
    tasks = job(_rows(3) + _rows(2, "tie", 10))
    svc = FakeService()
    svc.behaviour["edit-x"] = RowFailed("bad parameter", code="InvalidParameter", status=400)
    summary, out = await _run(tmp_path, tasks, svc)
    assert summary.exit_code == 1
    failed = {r.index: r.reason for r in summary.failed}
    assert set(failed) == {"10", "11"} and "bad parameter" in failed["10"]
    assert len(list((out / "imgs").iterdir())) == 3


async def test_transient_errors_retried_then_given_up(job, tmp_path: Path) -> None:
    tasks = job(_rows(1))
    svc = FakeService()
    svc.fail_task["m-a"] = ("InternalError.Algo", "boom")
    svc.fail_task["m-b"] = ("InternalError.Algo", "boom")
    summary, _ = await _run(tmp_path, tasks, svc, _settings(max_attempts=3))
    assert summary.rows[0].status == "failed"
    assert "gave up after 3 attempts" in summary.rows[0].reason
    assert len(svc.submits) == 3


async def test_invalid_key_stops_the_run(job, tmp_path: Path) -> None:
    tasks = job(_rows(30))
    svc = FakeService(latency=0.2)
    svc.behaviour["m-b"] = Fatal("Invalid API-key provided.", code="InvalidApiKey", status=401)
    summary, _ = await _run(tmp_path, tasks, svc)
    assert summary.exit_code == 3
    assert "InvalidApiKey" in (summary.stopped_reason or "")
    assert sum(r.status == "stopped" for r in summary.rows) >= 20
    assert len(svc.submits) < 30


async def test_resume_polls_journaled_tasks_instead_of_resubmitting(job, tmp_path: Path) -> None:
    tasks = job(_rows(3))
    svc = FakeService(latency=0.01)
    # a previous run submitted rows 1 and 2 and was killed; row 3 has an id that expired
    out = tmp_path / "out"
    j = Journal(out)
    for idx in ("1", "2"):
        tid = svc._start("m-a", f"prompt {idx}")
        j.write_sync("submitted", index=idx, model="m-a", task_id=tid)
    j.write_sync("submitted", index="3", model="m-a", task_id="gone-1")
    j.close()
    before = len(svc.submits)
    summary, out = await _run(tmp_path, tasks, svc)
    assert summary.exit_code == 0
    new = svc.submits[before:]
    assert [p for _, p in new] == ["prompt 3"]  # only the lost one is paid again
    state = replay(out / "journal.jsonl")
    assert all(state.rows[i].done for i in ("1", "2", "3"))


async def test_done_rows_are_skipped_on_rerun(job, tmp_path: Path) -> None:
    tasks = job(_rows(4))
    svc = FakeService(latency=0.01)
    await _run(tmp_path, tasks, svc)
    first = len(svc.submits)
    downloads = svc.downloads
    # a lost file is fetched again from its journaled task: nothing is paid twice
    (tmp_path / "out" / "imgs" / "2.jpg").unlink()
    summary, _ = await _run(tmp_path, tasks, svc)
    assert [r.status for r in summary.rows] == ["skipped", "done", "skipped", "skipped"]
    assert len(svc.submits) == first
    assert svc.downloads == downloads + 1


async def test_bad_rows_reported_and_journaled(job, tmp_path: Path) -> None:
    tasks = job(_rows(2) + [("9", "tie", "edit", "nope.png", "")])
    (tmp_path / "imgs" / "nope.png").unlink()
    summary, out = await _run(tmp_path, tasks, FakeService())
    assert summary.exit_code == 1
    bad = [r for r in summary.rows if r.status == "bad"]
    assert [r.index for r in bad] == ["9"] and "not found" in bad[0].reason
    lines = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    assert any(x["ev"] == "failed" and x["index"] == "9" for x in lines)


async def test_unreadable_source_fails_row_with_reason(tmp_path: Path, job) -> None:
    tasks = job(_rows(1, "tie", 5))
    (tmp_path / "imgs" / "s5.png").write_bytes(b"<html>not an image</html>")
    summary, _ = await _run(tmp_path, tasks, FakeService())
    assert summary.rows[0].status == "bad"  # the row's own input: a rerun cannot help
    assert "not an image" in summary.rows[0].reason


async def test_long_prompt_is_shortened_before_sending(job, tmp_path: Path) -> None:
    long = "A cat on a mat. " * 100
    tasks = job([("1", "t2i", long, "", "")])
    svc = FakeService()
    await _run(tmp_path, tasks, svc)
    sent = svc.submits[0][1]
    assert len(sent) <= 800 and sent.endswith(".")


async def test_submit_pacing_respects_rate(job, tmp_path: Path) -> None:
    tasks = job(_rows(45))
    svc = FakeService(latency=0.0, true_limit={"m-a": 100})
    stamps: list[float] = []
    orig = svc.submit_text2image

    async def stamped(*a: Any, **kw: Any) -> Any:
        stamps.append(asyncio.get_running_loop().time())
        return await orig(*a, **kw)

    svc.submit_text2image = stamped  # type: ignore[method-assign]
    s = _settings(
        models={"t2i": ["m-a"]}, quotas={"m-a": Quota(submits_per_second=20, in_flight=6)}
    )
    await _run(tmp_path, tasks, svc, s)
    # the quota is a window: at most 20 submits in any one second
    spans = [stamps[i + 20] - stamps[i] for i in range(len(stamps) - 20)]
    assert len(stamps) == 45 and min(spans) >= 0.95


@pytest.mark.parametrize("exc", [ServerError("reset", code="", status=None)])
async def test_retryable_submit_error_then_success(job, tmp_path: Path, exc: Exception) -> None:
    tasks = job(_rows(1))
    svc = FakeService()
    calls = {"n": 0}
    orig = svc.submit_text2image

    async def flaky(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc
        return await orig(*a, **kw)

    svc.submit_text2image = flaky  # type: ignore[method-assign]
    summary, _ = await _run(tmp_path, tasks, svc)
    assert summary.exit_code == 0 and summary.retries == 1


async def test_prompt_frames_and_negative_prompt_are_sent(job, tmp_path: Path) -> None:
    tasks = job([("1", "t2i", "一只猫坐在窗台上", "", "")])
    svc = FakeService()
    seen: dict[str, Any] = {}
    orig = svc.submit_text2image

    async def spy(model: str, prompt: str, **kw: Any) -> Any:
        seen.update(kw, prompt=prompt)
        return await orig(model, prompt, **kw)

    svc.submit_text2image = spy  # type: ignore[method-assign]
    await _run(tmp_path, tasks, svc, _settings(candidates={"t2i": ["framed+negative"]}))
    assert seen["prompt"].startswith("一只猫坐在窗台上") and len(seen["prompt"]) > 10
    assert seen["negative_prompt"] and seen["n"] == 1


async def test_candidates_one_request_with_n_and_best_chosen(job, tmp_path: Path) -> None:
    tasks = job([("1", "t2i", "a cat", "", "")])
    svc = FakeService()
    ns: list[int] = []
    orig = svc.submit_text2image

    async def spy(model: str, prompt: str, **kw: Any) -> Any:
        ns.append(kw["n"])
        return await orig(model, prompt, **kw)

    svc.submit_text2image = spy  # type: ignore[method-assign]
    # a wan t2i model takes n up to 4 in one request (runner.models)
    s = _settings(
        candidates={"t2i": 3},
        models={"t2i": ["wan-test-t2i"]},
        quotas={"wan-test-t2i": Quota(submits_per_second=200, in_flight=2)},
    )
    summary, out = await _run(tmp_path, tasks, svc, s)
    assert summary.exit_code == 0 and ns == [3]
    cands = sorted((out / "candidates" / "1").iterdir())
    assert [p.name for p in cands] == ["0.jpg", "1.jpg", "2.jpg"]
    assert (out / "imgs" / "1.jpg").read_bytes() == cands[0].read_bytes()  # unjudged: first


async def test_edit_sources_are_prepared_a_few_rows_ahead_not_the_whole_window(
    job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prepared source is megabytes: rows waiting for a slot hold at most a few (the rows
    window of a rate-bound model is far larger), and a row drops its source once done."""
    from runner.scheduling import rowsteps

    prepared: list[int] = []
    live = {"n": 0, "peak": 0}
    real = rowsteps.prepare_source

    def counting(*a: Any, **kw: Any) -> Any:
        live["n"] += 1
        live["peak"] = max(live["peak"], live["n"])
        prepared.append(1)
        return real(*a, **kw)

    real_submit = FakeService._start

    def submitted(self: FakeService, model: str, prompt: str, n: int = 1) -> str:
        tid = real_submit(self, model, prompt, n)
        live["n"] -= 1  # the source went out with the request
        return tid

    monkeypatch.setattr(rowsteps, "prepare_source", counting)
    monkeypatch.setattr(FakeService, "_start", submitted)
    tasks = job(_rows(40, "tie", 1), img_size=(300, 200))
    svc = FakeService(latency=0.05, true_limit={"edit-x": 1000})
    # a rate-bound model: its rows window is large, and every row of it would prepare at once
    settings = _settings(
        models={"t2i": ["m-a"], "tie": ["edit-x"], "vttie": ["edit-x"]},
        quotas={"m-a": Quota(submits_per_second=200, in_flight=2),
                "edit-x": Quota(submits_per_second=10, in_flight=None)},
    )
    summary, _ = await _run(tmp_path, tasks, svc, settings)
    assert summary.exit_code == 0, summary.failed
    assert len(prepared) == 40
    # prepared and not yet sent: the ready places, plus the slot holders the rate-bound lane
    # lets wait for their turns (10: its window's count); unbounded, 30 of the 40 wait
    assert live["peak"] <= rowsteps.READY_SOURCES + 10
