"""The progress display: ETA from the quota bound, then from the observed rate; notices; a
live display in Jupyter as on a terminal."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from runner.outcomes import RowResult
from runner.progress import ProgressObserver
from runner.settings import load_settings
from runner.tasks import Task, TaskList


def _tasks(n: int, task_type: str = "t2i") -> TaskList:
    tasks = [Task(index=str(i), task_type=task_type, prompt="p") for i in range(n)]
    return TaskList(
        path="t.csv",
        images_dir=".",
        tasks=tasks,
        bad=[],
        order=[t.index for t in tasks],
        types={t.index: task_type for t in tasks},
    )


def _scheduler(views: list[dict[str, Any]]) -> Any:
    settings = load_settings(None, models={"t2i": ["m"]}, quotas={"m": {"in_flight": 2}})
    return SimpleNamespace(settings=settings, emulated=False, model_views=lambda: views)


def _observer(console: Console | None = None) -> tuple[ProgressObserver, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    console = console or Console(file=io.StringIO(), width=120)
    return ProgressObserver(console, lambda lvl, line: seen.append((lvl, line))), seen


def test_eta_is_the_quota_bound_then_the_observed_rate() -> None:
    obs, seen = _observer()
    view = {"model": "m", "p50_s": None, "limit": 2, "submits": 0, "in_flight": 0}
    obs.started(_tasks(100), _scheduler([view]), ["100 rows from t.csv"])
    assert seen == [("warning", "100 rows from t.csv")]
    # nothing observed: 100 tasks at min(2/s, 2 in flight / 10 s) = 0.2/s
    assert obs.eta_s() == pytest.approx(500.0)
    view["p50_s"] = 5.0  # the model turns out faster: the bound follows the observed latency
    assert obs.eta_s() == pytest.approx(250.0)
    obs._started -= 100.0  # move the clock: 10 rows in 100 s is slower than the bound
    for i in range(10):
        obs.row(RowResult(index=str(i), task_type="t2i", status="done"))
    assert obs.eta_s() == pytest.approx(90 / 0.1, rel=0.01)
    assert "ETA 15m" in obs._eta_text()


def test_failed_and_bad_rows_are_notices_with_one_status_each() -> None:
    obs, seen = _observer()
    obs.started(_tasks(3), _scheduler([]), [])
    obs.row(RowResult(index="1", task_type="t2i", status="bad", reason="'x.png' not found"))
    obs.row(RowResult(index="2", task_type="t2i", status="failed", reason="gave up"))
    assert ("warning", "row 1 (t2i, bad input): 'x.png' not found") in seen
    assert ("warning", "row 2 (t2i, failed): gave up") in seen
    assert "1 bad input" in obs._status() and "1 failed" in obs._status()


def test_live_display_in_jupyter(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ipywidgets (the notebook extra) Jupyter gets the redrawing display."""
    import importlib.util

    real = importlib.util.find_spec
    present = lambda name, *a: object() if name == "ipywidgets" else real(name)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", present)
    console = Console(file=io.StringIO(), force_jupyter=True, width=120)
    obs, _ = _observer(console)
    obs.started(_tasks(2), _scheduler([]), [])
    assert obs.live is not None  # a redrawing display, not a line every few seconds
    obs.row(RowResult(index="0", task_type="t2i", status="done"))
    obs.close()
    assert obs.live is None
