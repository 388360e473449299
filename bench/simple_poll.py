"""Simpler poll rules than the runner's planner, to measure it against
(``python -m bench.profiles --poll-rule every --poll-floor 1``; BENCHMARKS.md, "The
machinery, measured"). ``use`` puts one in place of ``runner.scheduling.polling.WatchedTask``
for this process.

- ``every``: each task polled every ``max(floor, waiting tasks / queries a second)`` from its
  submit; among the tasks due, the earliest expected finish (its submit plus its model's
  median duration so far) first.
- ``oldest``: whenever the budget has a turn, the task unseen for longest (round robin at the
  budget's pace).

Either way a task an earlier run left is polled at once.
"""

from __future__ import annotations

from typing import Any

from runner.scheduling import polling

_MIN_GAP_S = 0.02  # the planner's least gap between two looks at one task
_FIRST = 1e12  # a resumed task: before any other


class EveryTask(polling.WatchedTask):
    """A watched task polled at an even pace; ``floor``: its least gap (seconds)."""

    floor = 1.0

    def _resumed(self) -> bool:
        return self.polls == 0 and not self.fresh

    def due_at(self, now: float, spread: float = 0.0) -> float:
        if self._resumed():
            return self.hold_until
        last = self.last_sent if self.last_sent is not None else self.anchor
        return max(last + max(self.floor, spread, _MIN_GAP_S), self.hold_until)

    def score(self, now: float) -> float:
        if self._resumed():
            return _FIRST
        return -(self.anchor + (self.lane.stats.latency.quantile(0.5) or 0.0))


class OldestUnseen(EveryTask):
    """A watched task polled whenever it is the one unseen for longest."""

    floor = 0.0

    def due_at(self, now: float, spread: float = 0.0) -> float:
        if self._resumed():
            return self.hold_until
        last = self.last_sent if self.last_sent is not None else self.anchor
        return max(last + _MIN_GAP_S, self.hold_until)

    def score(self, now: float) -> float:
        if self._resumed():
            return _FIRST
        return now - (self.last_sent if self.last_sent is not None else self.anchor)


def use(rule: str, floor: float = 1.0) -> None:
    """Poll with ``rule`` ("every", least gap ``floor``; "oldest") instead of the planner."""
    chosen: Any = (
        type("EveryTask", (EveryTask,), {"floor": floor}) if rule == "every" else OldestUnseen
    )
    polling.WatchedTask = chosen  # type: ignore[misc]


def name() -> str:
    """The poll rule this process runs."""
    cls = polling.WatchedTask
    if issubclass(cls, OldestUnseen):
        return "oldest unseen first"
    if issubclass(cls, EveryTask):
        return f"every task, floor {cls.floor:g} s"
    return "planner"
