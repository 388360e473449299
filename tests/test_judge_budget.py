"""The judge's spend under ``--budget`` (runner.cost.Budget, the judge's "judged" records):
images and judge together never pass the budget, a rerun counts the earlier runs' judge
spend, and rows the budget left short of candidates are said."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from conftest import emulator_get, emulator_process
from rich.console import Console

from runner import run_all
from runner.backends.judge.usage import journal_usage
from runner.cli import print_summary
from runner.cost import Budget, PriceBook
from runner.settings import Settings, load_settings
from runner.store.journal import replay

pytestmark = pytest.mark.usefixtures("clean_env")

KEY = "sk-test0000000000000000"
T2I = "qwen-image-plus"  # 0.2 CNY an image at the built-in cn list price
PRICE = 0.2


def _tasks(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "task.csv"
    lines = ["index,task_type,prompt,ori_image,target_image"]
    lines += [f"{i},t2i,a red bicycle number {i} under a tree,," for i in range(1, rows + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _settings(port: int, budget: float | None, token_price: float) -> Settings:
    return load_settings(
        api_key=KEY,
        base_url=f"http://127.0.0.1:{port}/api/v1",
        poll_first_s=0.01,
        backoff_max_s=0.05,
        models={"t2i": [T2I]},
        quotas={T2I: {"submits_per_second": 100, "in_flight": 8}},
        concurrency=2,  # rows finish (and are judged) while others are still made
        candidates={"t2i": ["plain", "plain+extend"]},
        judge={"enabled": True, "input_price": token_price, "output_price": token_price},
        budget=budget,
    )


def _images_cost(billed: list[dict[str, Any]]) -> float:
    """What the emulator billed for images, at the list price."""
    images = sum(e["images"] if e["images"] is not None else e["n"] for e in billed)
    return images * PRICE


def _judge_cost(out: Path) -> tuple[int, float]:
    """The judge's calls and estimated cost over the folder, as its journal says."""
    usage = journal_usage(replay(out / "journal.jsonl"), "qwen-vl-max")
    return usage.calls, usage.cost or 0.0


def test_images_and_judge_stop_at_the_budget(tmp_path: Path) -> None:
    """12 rows of 2 candidates, a judge priced at 100 CNY a million tokens, --budget 4.
    Before: the judge's spend was counted but never refused, nor read back from the journal
    (hostile finding 3: 3.20 + 2.96 CNY against 3)."""
    tasks = _tasks(tmp_path, 12)
    out = tmp_path / "out"
    budget = 4.0
    with emulator_process("--time-scale", "0.05", "--no-quotas") as port:
        summary = asyncio.run(
            run_all(tasks, out=out, settings=_settings(port, budget, 100.0), progress=False)
        )
        billed = emulator_get(port, "/_emulator/billed")
        served = sum(emulator_get(port)["judge_calls"].values())
    calls, judge = _judge_cost(out)
    assert calls == served > 0  # every judge call the service served is in the journal
    assert _images_cost(billed) + judge <= budget + 1e-9
    assert summary.judge is not None and summary.judge["cost"] == pytest.approx(judge)
    assert summary.exit_code == 1
    for r in summary.rows:  # every row made all its candidates, or says why not
        if r.status == "done" and r.held_back:
            assert r.reason and r.reason.startswith("1 of 2 candidates: budget reached")
        elif r.status == "done" and r.reason:  # its candidates were not judged: said
            assert r.reason.startswith("the first candidate is kept (judge stopped: budget")
        elif r.status != "done":
            assert "budget" in (r.reason or "")


def test_rows_short_of_candidates_are_said_and_kept(tmp_path: Path) -> None:
    """--budget 0.7 holds 3 images of 0.2: an odd number, so a row of 2 candidates is left
    with 1. It is done and says so, the closing line names it, exit 1; a rerun with the same
    budget keeps it as done and pays nothing. Before: "Every row is done.", exit 0."""
    tasks = _tasks(tmp_path, 4)
    out = tmp_path / "out"
    with emulator_process("--time-scale", "0.05", "--no-quotas") as port:
        settings = _settings(port, 0.7, 0.0).model_copy(
            update={
                "judge": _settings(port, None, 0.0).judge.model_copy(
                    update={"input_price": None, "output_price": None}
                )
            }
        )
        summary = asyncio.run(run_all(tasks, out=out, settings=settings, progress=False))
        before = len(emulator_get(port, "/_emulator/billed"))
        again = asyncio.run(run_all(tasks, out=out, settings=settings, progress=False))
        after = len(emulator_get(port, "/_emulator/billed"))
    short = [r for r in summary.rows if r.held_back]
    assert short and all(r.status == "done" for r in short)
    assert all(r.reason == "1 of 2 candidates: budget reached" for r in short)
    assert summary.short_of_budget == len(short) and summary.exit_code == 1
    console = Console(file=io.StringIO(), width=400)
    print_summary(console, summary, out)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    named = ", ".join(r.index for r in short)
    assert f"{len(short)} row(s) made fewer candidates than asked: budget reached" in text
    assert f"(rows {named})" in text and "Every row is done" not in text
    assert after == before  # the kept rows did not pay again
    assert all(r.status == "skipped" for r in again.rows if r.index in {s.index for s in short})


def test_a_rerun_counts_the_first_runs_judge_spend(tmp_path: Path) -> None:
    """Run 1 stops at its budget with rows left; run 2 with a larger one goes on counting
    run 1's judge spend: the folder's images and judge stay within run 2's budget, and the
    summary's judge covers both runs. Before: run 2 started the judge at 0 (its summary said
    0 calls) and could spend run 1's judge money again."""
    tasks = _tasks(tmp_path, 8)
    out = tmp_path / "out"
    with emulator_process("--time-scale", "0.05", "--no-quotas") as port:
        first = asyncio.run(
            run_all(tasks, out=out, settings=_settings(port, 1.5, 20.0), progress=False)
        )
        first_calls, _ = _judge_cost(out)
        assert first.failed and first_calls > 0  # rows left for run 2, judge money spent
        second = asyncio.run(
            run_all(tasks, out=out, settings=_settings(port, 2.5, 20.0), progress=False)
        )
        billed = emulator_get(port, "/_emulator/billed")
    calls, judge = _judge_cost(out)
    assert calls > first_calls
    assert _images_cost(billed) + judge <= 2.5 + 1e-9
    assert second.judge is not None
    assert second.judge["calls"] == calls and second.judge["cost"] == pytest.approx(judge)
    assert second.runs[-1]["judge"]["calls"] == calls - first_calls  # run_end: this run's


def test_budget_holds_what_judge_calls_under_way_may_cost() -> None:
    """Judge calls under way hold their largest cost: neither another call nor an image
    passes the limit meanwhile; what a call did not use goes back."""
    images = {"m": 5}  # 1.00
    b = Budget(PriceBook(region="cn", currency="CNY", per_image={"m": 0.2}), limit=1.5)
    b.follow(lambda: images, judge_before=0.2)  # an earlier run's judge: 1.20 spent
    assert b.reserve_judge(0.25)  # 1.45 held
    assert not b.reserve_judge(0.1)  # 1.55 would pass 1.5
    assert not b.allows("m", 1, images)  # an image neither
    b.count_judge(0.05, reserved=0.25)  # the call cost 0.05: 1.25
    assert b.cost(images) == pytest.approx(1.25)
    assert b.reserve_judge(0.2) and b.judge_refused == 1
    b.release_judge(0.2)  # not served
    assert b.cost(images) == pytest.approx(1.25)
