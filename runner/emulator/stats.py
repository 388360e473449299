"""Counters the emulator keeps, and the snapshot model it hands out."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from pydantic import BaseModel


class EmulatorStats(BaseModel):
    """A point-in-time copy; dicts are keyed by model, code or fault kind."""

    uptime_s: float
    requests: int  # every HTTP request, admin endpoints excluded
    submits: dict[str, int]  # accepted async task submits
    submit_attempts: dict[str, int]  # async submits and sync calls that reached admission
    sync_calls: dict[str, int]  # accepted multimodal-generation calls
    polls: int  # GET /tasks/{id} answered
    cancels: int  # tasks actually canceled
    http_429: dict[str, int]  # by error code (Throttling, Throttling.RateQuota, ...)
    errors: dict[str, int]  # every error answer by code (429s included)
    quota_refusals: dict[str, int]  # attempts refused by the in-flight/rate quotas
    # Admissions past a model's quota: only possible with quotas off (a client's would-be
    # violations); stays 0 while the emulator enforces quotas.
    quota_overruns: dict[str, int]
    in_flight: dict[str, int]
    max_in_flight: dict[str, int]
    task_outcomes: dict[str, int]  # SUCCEEDED / FAILED / CANCELED / UNKNOWN
    faults_injected: dict[str, int]
    downloads: int  # result files served with status 200 (faulty bodies included)
    download_bytes: int
    uploads: int
    judge_calls: dict[str, int]
    prompts_truncated: int
    timeline: list[tuple[float, str, int]]  # (t since start in s, model, in_flight)


class StatsRecorder:
    """Mutable counters; lives on the emulator's loop, snapshot() copies them."""

    def __init__(self, timeline_cap: int) -> None:
        self._timeline_cap = timeline_cap
        self.reset()

    def reset(self) -> None:
        self.started = time.monotonic()
        self.requests = 0
        self.submits: Counter[str] = Counter()
        self.submit_attempts: Counter[str] = Counter()
        self.sync_calls: Counter[str] = Counter()
        self.polls = 0
        self.cancels = 0
        self.http_429: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.quota_refusals: Counter[str] = Counter()
        self.quota_overruns: Counter[str] = Counter()
        self.in_flight: defaultdict[str, int] = defaultdict(int)
        self.max_in_flight: Counter[str] = Counter()
        self.task_outcomes: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self.downloads = 0
        self.download_bytes = 0
        self.uploads = 0
        self.judge_calls: Counter[str] = Counter()
        self.prompts_truncated = 0
        self.timeline: list[tuple[float, str, int]] = []

    def error(self, status: int, code: str) -> None:
        self.errors[code] += 1
        if status == 429:
            self.http_429[code] += 1

    def change_in_flight(self, model: str, delta: int) -> int:
        value = self.in_flight[model] + delta
        self.in_flight[model] = value
        self.max_in_flight[model] = max(self.max_in_flight[model], value)
        if len(self.timeline) < self._timeline_cap:
            self.timeline.append((time.monotonic() - self.started, model, value))
        return value

    def snapshot(self) -> EmulatorStats:
        # model_construct: the values are ours already, and the timeline can be long.
        return EmulatorStats.model_construct(
            uptime_s=time.monotonic() - self.started,
            requests=self.requests,
            submits=dict(self.submits),
            submit_attempts=dict(self.submit_attempts),
            sync_calls=dict(self.sync_calls),
            polls=self.polls,
            cancels=self.cancels,
            http_429=dict(self.http_429),
            errors=dict(self.errors),
            quota_refusals=dict(self.quota_refusals),
            quota_overruns=dict(self.quota_overruns),
            in_flight=dict(self.in_flight),
            max_in_flight=dict(self.max_in_flight),
            task_outcomes=dict(self.task_outcomes),
            faults_injected=dict(self.faults_injected),
            downloads=self.downloads,
            download_bytes=self.download_bytes,
            uploads=self.uploads,
            judge_calls=dict(self.judge_calls),
            prompts_truncated=self.prompts_truncated,
            timeline=list(self.timeline),
        )
