"""The makespan an ideal scheduler would reach on the tasks the emulator drew.

The quota bound ignores that the last tasks cannot all end together and that a long task
started late ends late: on a short run, or a heavy-tailed one, it is far below anything
reachable. This replays the same rows on the same models (each model's latencies in the
order the emulator drew them) with no overhead at all: a task is seen the instant it ends,
a submit leaves the instant its slot and the quota window allow, rows go in order to the
most preferred model free. makespan / ideal is then the runner's own cost.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class SimModel:
    slots: int | None  # None: no in-flight limit
    per_window: int  # submits allowed in any window
    window_s: float
    latencies: Sequence[float]  # in the order the service draws them
    busy: int = 0
    drawn: int = 0
    sent: deque[float] = field(default_factory=deque)

    def opens_at(self, now: float) -> float | None:
        """When a submit could leave (None: only when a slot frees)."""
        if self.slots is not None and self.busy >= self.slots:
            return None
        while self.sent and self.sent[0] <= now - self.window_s:
            self.sent.popleft()
        if len(self.sent) < self.per_window:
            return now
        return self.sent[0] + self.window_s


def ideal_makespan(rows: Sequence[Sequence[str]], models: dict[str, SimModel]) -> float:
    """Seconds until the last of ``rows`` (each a model preference list) ends."""
    waiting = list(range(len(rows)))
    ends: list[tuple[float, str]] = []
    now = last = 0.0
    while waiting or ends:
        progressed = True
        while progressed and waiting:
            progressed = False
            for k, row in enumerate(waiting):
                for name in rows[row]:
                    m = models[name]
                    if m.opens_at(now) == now:
                        latency = m.latencies[m.drawn % len(m.latencies)]
                        m.drawn += 1
                        m.busy += 1
                        m.sent.append(now)
                        heapq.heappush(ends, (now + latency, name))
                        del waiting[k]
                        progressed = True
                        break
                if progressed:
                    break
        wakes = [t for m in models.values() if (t := m.opens_at(now)) is not None and t > now]
        nxt = min([ends[0][0]] if ends else [], default=None)
        if waiting and wakes:
            nxt = min(wakes) if nxt is None else min(nxt, min(wakes))
        if nxt is None:
            break
        now = nxt
        while ends and ends[0][0] <= now:
            t, name = heapq.heappop(ends)
            models[name].busy -= 1
            last = max(last, t)
    return last
