"""The account's quotas as the emulator keeps them: per-model in-flight slots and submit
rates, the account-wide poll budget, the judge's request and token rates."""

from __future__ import annotations

from collections import deque

from runner.emulator.config import EmulatorConfig, ModelSpec
from runner.emulator.stats import StatsRecorder


class RateWindow:
    """Events (or weights such as tokens) in the last `span` seconds (sliding window)."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def count(self, now: float) -> int:
        while self._events and now - self._events[0][0] >= self.span:
            self._total -= self._events.popleft()[1]
        return self._total

    def add(self, now: float, weight: int = 1) -> None:
        self._events.append((now, weight))
        self._total += weight


class QuotaBook:
    """Per-model in-flight slots and submit rates, the poll budget and judge rates."""

    def __init__(self, config: EmulatorConfig, stats: StatsRecorder) -> None:
        self.config = config
        self.stats = stats
        scale = config.time_scale if config.scale_windows else 1.0
        self._second = scale
        self._minute = 60.0 * scale
        self._submits: dict[str, RateWindow] = {}
        self._submits_min: dict[str, RateWindow] = {}
        self._judge: dict[str, RateWindow] = {}
        self._tokens: dict[str, RateWindow] = {}
        self._polls = RateWindow(self._second)

    @property
    def enabled(self) -> bool:
        return self.config.quotas_enabled

    def admit(self, spec: ModelSpec, now: float) -> bool:
        """Take an in-flight slot for `spec` if the quotas allow it."""
        window = self._submits.setdefault(spec.name, RateWindow(self._second))
        minute = self._submits_min.setdefault(spec.name, RateWindow(self._minute))
        in_flight = self.stats.in_flight[spec.name]
        self.stats.submit_attempts[spec.name] += 1
        over_slots = spec.max_in_flight is not None and in_flight >= spec.max_in_flight
        over_rate = spec.submits_per_s is not None and window.count(now) >= spec.submits_per_s
        over_minute = spec.submits_per_min is not None and minute.count(now) >= spec.submits_per_min
        if over_slots or over_rate or over_minute:
            if self.enabled:
                self.stats.quota_refusals[spec.name] += 1
                return False
            self.stats.quota_overruns[spec.name] += 1
        window.add(now)
        minute.add(now)
        self.stats.change_in_flight(spec.name, +1)
        return True

    def release(self, model: str) -> None:
        self.stats.change_in_flight(model, -1)

    def poll_allowed(self, now: float) -> bool:
        if self.enabled and self._polls.count(now) >= self.config.poll_qps:
            return False
        self._polls.add(now)
        return True

    def judge_allowed(self, spec: ModelSpec, now: float) -> bool:
        window = self._judge.setdefault(spec.name, RateWindow(self._minute))
        limit = spec.requests_per_min
        if self.enabled and limit is not None and window.count(now) >= limit:
            return False
        window.add(now)
        return True

    def judge_tokens_allowed(self, spec: ModelSpec, now: float, tokens: int) -> bool:
        """Tokens a minute: the judge's usual limit (1.3k tokens per 1024x1024 image)."""
        window = self._tokens.setdefault(spec.name, RateWindow(self._minute))
        limit = spec.tokens_per_min
        if self.enabled and limit is not None and window.count(now) + tokens > limit:
            return False
        window.add(now, tokens)
        return True
