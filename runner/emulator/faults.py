"""Fault injection: which answer gets which failure, by probability and/or schedule.

Every fault kind is a :class:`FaultRule` field of :class:`FaultConfig`. A rule fires on an
*eligible event* (a request to an endpoint in the rule's scope) when any of these holds:
the event's 1-based number is a multiple of ``every_n``, it is listed in ``at``, or a
seeded coin with ``probability`` comes up. Counters and coins are per kind, so a schedule
does not shift when other kinds fire. ``transient=p`` is the soak-test shorthand: each
answer, with probability p, gets one of :data:`TRANSIENT_KINDS` that applies to it.

Scopes (endpoint names): submit (both image-synthesis endpoints), poll (GET tasks), cancel,
generation (multimodal sync), judge (compatible-mode chat), upload, download (result files).
"""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class FaultKind(StrEnum):
    RATE_LIMIT_RETRY_AFTER = "rate_limit_retry_after"  # 429 Throttling.RateQuota + Retry-After
    RATE_LIMIT = "rate_limit"  # 429 Throttling.RateQuota, no Retry-After
    INTERNAL_ERROR = "internal_error"  # 500 InternalError
    MODEL_UNAVAILABLE = "model_unavailable"  # 503 ModelUnavailable
    CONNECTION_RESET = "connection_reset"  # TCP RST, no answer
    STALL = "stall"  # answer only after stall_s (longer than a client timeout)
    ARREARAGE = "arrearage"  # 400 Arrearage
    TASK_FAILED = "task_failed"  # task ends FAILED InternalError.Algo (sync: HTTP 500)
    PARTIAL_SUCCESS = "partial_success"  # n>1: some results carry code/message
    TASK_UNKNOWN = "task_unknown"  # task vanishes: polls answer UNKNOWN
    URL_NOT_FOUND = "url_not_found"  # result download 404 NoSuchKey
    URL_EXPIRED = "url_expired"  # result download 403 "Request has expired"
    TRUNCATED_DOWNLOAD = "truncated_download"  # Content-Length promised, half sent
    CORRUPT_IMAGE = "corrupt_image"  # 200 image/png, bytes are not a decodable PNG
    HTML_BODY = "html_body"  # 200 text/html error page instead of the image
    HUGE_BODY = "huge_body"  # 200 image/png streaming huge_body_bytes, no Content-Length
    # answers whose work is done (and billed) but which do not reach the client whole
    ANSWER_LOST = "answer_lost"  # the connection is reset instead of the answer
    ANSWER_CUT = "answer_cut"  # 200, then the body stops short of its Content-Length
    # a hostile or broken service
    DUPLICATE_TASK_ID = "duplicate_task_id"  # a submit answers an earlier task's id
    POLL_OTHER_TASK = "poll_other_task"  # a poll answers about another task
    POLL_NO_TASK_ID = "poll_no_task_id"  # a poll answer without output.task_id
    EXTRA_IMAGES = "extra_images"  # a task returns one image more than asked (and bills it)


API_ENDPOINTS: frozenset[str] = frozenset(
    {"submit", "poll", "cancel", "generation", "judge", "upload"}
)

DEFAULT_SCOPES: dict[FaultKind, frozenset[str]] = {
    FaultKind.RATE_LIMIT_RETRY_AFTER: API_ENDPOINTS,
    FaultKind.RATE_LIMIT: API_ENDPOINTS,
    FaultKind.INTERNAL_ERROR: API_ENDPOINTS,
    FaultKind.MODEL_UNAVAILABLE: API_ENDPOINTS,
    FaultKind.CONNECTION_RESET: API_ENDPOINTS | {"download"},
    FaultKind.STALL: API_ENDPOINTS | {"download"},
    FaultKind.ARREARAGE: frozenset({"submit", "generation", "judge"}),
    FaultKind.TASK_FAILED: frozenset({"submit", "generation"}),
    FaultKind.PARTIAL_SUCCESS: frozenset({"submit"}),
    FaultKind.TASK_UNKNOWN: frozenset({"submit"}),
    FaultKind.URL_NOT_FOUND: frozenset({"download"}),
    FaultKind.URL_EXPIRED: frozenset({"download"}),
    FaultKind.TRUNCATED_DOWNLOAD: frozenset({"download"}),
    FaultKind.CORRUPT_IMAGE: frozenset({"download"}),
    FaultKind.HTML_BODY: frozenset({"download"}),
    FaultKind.HUGE_BODY: frozenset({"download"}),
    FaultKind.ANSWER_LOST: frozenset({"submit", "generation"}),
    FaultKind.ANSWER_CUT: frozenset({"submit", "generation"}),
    FaultKind.DUPLICATE_TASK_ID: frozenset({"submit"}),
    FaultKind.POLL_OTHER_TASK: frozenset({"poll"}),
    FaultKind.POLL_NO_TASK_ID: frozenset({"poll"}),
    FaultKind.EXTRA_IMAGES: frozenset({"submit"}),
}

# Kinds the `transient` shorthand draws from: all are worth retrying.
TRANSIENT_KINDS: tuple[FaultKind, ...] = (
    FaultKind.RATE_LIMIT_RETRY_AFTER,
    FaultKind.RATE_LIMIT,
    FaultKind.INTERNAL_ERROR,
    FaultKind.MODEL_UNAVAILABLE,
    FaultKind.CONNECTION_RESET,
    FaultKind.TASK_FAILED,
    FaultKind.TRUNCATED_DOWNLOAD,
)

# Kinds answered before the request is processed, in precedence order.
REQUEST_KINDS: tuple[FaultKind, ...] = (
    FaultKind.CONNECTION_RESET,
    FaultKind.ARREARAGE,
    FaultKind.RATE_LIMIT_RETRY_AFTER,
    FaultKind.RATE_LIMIT,
    FaultKind.INTERNAL_ERROR,
    FaultKind.MODEL_UNAVAILABLE,
)
TASK_KINDS: tuple[FaultKind, ...] = (
    FaultKind.TASK_FAILED,
    FaultKind.TASK_UNKNOWN,
    FaultKind.PARTIAL_SUCCESS,
    FaultKind.EXTRA_IMAGES,
)
DOWNLOAD_KINDS: tuple[FaultKind, ...] = (
    FaultKind.URL_NOT_FOUND,
    FaultKind.URL_EXPIRED,
    FaultKind.HTML_BODY,
    FaultKind.CORRUPT_IMAGE,
    FaultKind.HUGE_BODY,
    FaultKind.TRUNCATED_DOWNLOAD,
)


class FaultRule(BaseModel):
    """When one fault kind fires. A bare number means ``probability``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    probability: float = Field(0.0, ge=0.0, le=1.0)
    every_n: int | None = Field(None, ge=1)
    at: frozenset[int] = frozenset()  # 1-based eligible-event numbers
    endpoints: frozenset[str] | None = None  # None: the kind's default scope

    @classmethod
    def coerce(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"probability": 1.0 if value else 0.0}
        if isinstance(value, int | float):
            return {"probability": float(value)}
        return value


_KIND_FIELDS = [k.value for k in FaultKind]


class FaultConfig(BaseModel):
    """All fault kinds (None: off) and their parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_limit_retry_after: FaultRule | None = None
    rate_limit: FaultRule | None = None
    internal_error: FaultRule | None = None
    model_unavailable: FaultRule | None = None
    connection_reset: FaultRule | None = None
    stall: FaultRule | None = None
    arrearage: FaultRule | None = None
    task_failed: FaultRule | None = None
    partial_success: FaultRule | None = None
    task_unknown: FaultRule | None = None
    url_not_found: FaultRule | None = None
    url_expired: FaultRule | None = None
    truncated_download: FaultRule | None = None
    corrupt_image: FaultRule | None = None
    html_body: FaultRule | None = None
    huge_body: FaultRule | None = None
    answer_lost: FaultRule | None = None
    answer_cut: FaultRule | None = None
    duplicate_task_id: FaultRule | None = None
    poll_other_task: FaultRule | None = None
    poll_no_task_id: FaultRule | None = None
    extra_images: FaultRule | None = None

    transient: float = Field(0.0, ge=0.0, le=1.0)  # shorthand, see module docstring
    data_inspection_words: frozenset[str] = frozenset()  # prompt trigger words, case-folded
    invalidate_key_after: int | None = Field(None, ge=1)  # Nth API request on: 401
    retry_after_s: int = 1  # Retry-After header value of rate_limit_retry_after
    stall_s: float = 30.0  # real seconds, not scaled: it must outlast client timeouts
    huge_body_bytes: int = 60 * 1024 * 1024

    @field_validator(*_KIND_FIELDS, mode="before")
    @classmethod
    def _coerce_rule(cls, value: Any) -> Any:
        return FaultRule.coerce(value)

    def rule(self, kind: FaultKind) -> FaultRule | None:
        rule: FaultRule | None = getattr(self, kind.value)
        return rule


class FiredFaults:
    """The faults drawn for one answer, split by the phase that applies them."""

    def __init__(self, fired: list[FaultKind]) -> None:
        self.fired = fired

    def first(self, kinds: tuple[FaultKind, ...]) -> FaultKind | None:
        for kind in kinds:
            if kind in self.fired:
                return kind
        return None

    def has(self, kind: FaultKind) -> bool:
        return kind in self.fired


class FaultInjector:
    """Stateful evaluation of a FaultConfig: counters and seeded coins per kind."""

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._counts: dict[FaultKind, int] = dict.fromkeys(FaultKind, 0)
        self._rngs = {k: random.Random(f"{seed}:{k.value}") for k in FaultKind}
        self._transient_rng = random.Random(f"{seed}:transient")
        self._requests = 0

    def _fires(self, kind: FaultKind, endpoint: str) -> bool:
        rule = self.config.rule(kind)
        if rule is None:
            return False
        scope = rule.endpoints if rule.endpoints is not None else DEFAULT_SCOPES[kind]
        if endpoint not in scope:
            return False
        self._counts[kind] += 1
        count = self._counts[kind]
        fired = bool(rule.every_n and count % rule.every_n == 0) or count in rule.at
        # Always draw when a probability is set so the coin sequence stays reproducible.
        if rule.probability > 0 and self._rngs[kind].random() < rule.probability:
            fired = True
        return fired

    def draw(self, endpoint: str) -> FiredFaults:
        fired = [k for k in FaultKind if self._fires(k, endpoint)]
        if self.config.transient > 0 and self._transient_rng.random() < self.config.transient:
            options = [k for k in TRANSIENT_KINDS if endpoint in DEFAULT_SCOPES[k]]
            if options:
                fired.append(self._transient_rng.choice(options))
        return FiredFaults(fired)

    def key_revoked(self) -> bool:
        """Counts one authenticated API request; True once invalidate_key_after is reached."""
        self._requests += 1
        limit = self.config.invalidate_key_after
        return limit is not None and self._requests >= limit

    def inspection_hit(self, *texts: str) -> bool:
        words = self.config.data_inspection_words
        if not words:
            return False
        folded = " ".join(texts).casefold()
        return any(w.casefold() in folded for w in words)
