"""What happens after an error: one ``RetryPolicy`` decides, from the typed error (``errors``),
the step it came from (``errors.Step``) and the tries so far. The callers carry out the
decision; they look at error types only for bookkeeping (a 429 teaches a lane its quota; a
judge 429 is no billed call and pauses every judge call). The backoff every retry loop
waits (``backoff_delay``, Retry-After read by ``parse_retry_after``) is here too.

Who retries what (one owner per layer):

* A request (one HTTP call): the transport, ``backends/dashscope/requester.py``
  ``Requester._retrying``, retries 429s, 5xx, timeouts and resets of idempotent GETs (polls,
  downloads) up to ``max_retries`` (per call), honouring Retry-After up to the cap. Submits,
  the sync call and judge chats are sent once. What it gives up on reaches the callers below
  as a typed error (``errors``); ``errors.classify`` (via ``backends/dashscope/failures.py``)
  picks the class.
* A poll: ``scheduling/polling.py`` ``TaskWatcher.wait_terminal`` polls again after any
  ``Retryable`` (a 429 also pauses the shared poll budget): the task exists, it is never
  paid twice.
* A row: ``scheduling/rowsteps.py`` ``RowSteps._generate`` asks ``decide`` after a failed
  submit, sync call, local generation, or a task that ended without an image
  (``Resubmit``: the closed task's cause is decided), and carries it out in
  ``RowSteps._after_error``. A 429 on a submit also teaches the model's lane its quota
  (``scheduling/model_lane.py`` ``ModelLane.on_throttled``, from ``RowSteps._request``). A
  ``Fatal`` stops the run in ``scheduling/scheduler.py`` ``Scheduler._row``.
* A download: ``scheduling/lifecycle.py`` ``Lifecycle.fetch`` asks ``decide`` after each
  round that gave no usable image (an expired URL is renewed first, ``_fresh_urls``).
* A judge call: ``backends/judge/scorer.py`` ``Judge._call`` asks ``decide``.

Where each error class is handled (``decide`` is the rule, the caller acts):

=====================  =========================================================
error                  decision
=====================  =========================================================
RateLimited (429)      row: resubmit after backoff (Retry-After up to 120 s honoured)
                       until ``max_throttled``, then fail the row; judge: retry
                       up to ``call_retries``
TokensThrottled (429)  as RateLimited; the judge pauses all its calls instead, up
                       to ``tokens_pause_max_s`` in all
ServerError, other     row: resubmit after backoff until ``max_attempts``;
Retryable, ResultExp.  download: download again (expired: with renewed URLs)
                       until ``download_rounds``, then fail the row, task kept
Uncertain              fail the row (it may have been billed: another request
                       might pay twice), unless ``repay_uncertain`` (the user's
                       --repay-uncertain): then resubmit
ModelNotServed         set the model aside for the run; the row takes the next
ModelRefused           the row takes its next model
RowFailed, other       fail the row (judge: the candidate stays unscored)
Fatal                  stop the run
=====================  =========================================================
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from runner.errors import (
    TOKENS_RETRY_AFTER_S,
    DashScopeError,
    Fatal,
    ModelNotServed,
    ModelRefused,
    RateLimited,
    Resubmit,
    ResultExpired,
    Retryable,
    Step,
    TokensThrottled,
    Uncertain,
)

__all__ = [
    "REPAY_FLAG",
    "Action",
    "Decision",
    "RetryPolicy",
    "Tries",
    "backoff_delay",
    "parse_retry_after",
]

REPAY_FLAG = "--repay-uncertain"  # the user's word to pay again for an answer lost

# --------------------------------------------------------------------------- backoff
# the arithmetic every retry loop shares (the numbers of openai-python)

INITIAL_S = 0.5


def parse_retry_after(headers: Mapping[str, str], cap_s: float = 120.0) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, then ``retry-after``
    (seconds or an HTTP date). Only 0 < value <= cap is honoured."""
    lower = {k.lower(): v for k, v in headers.items()}
    value: float | None = None
    if "retry-after-ms" in lower:
        try:
            value = float(lower["retry-after-ms"]) / 1000.0
        except ValueError:
            value = None
    if value is None and "retry-after" in lower:
        raw = lower["retry-after"].strip()
        try:
            value = float(raw)
        except ValueError:
            # A malformed date (e.g. year 99999) must not crash the caller: ignore it.
            try:
                parsed = email.utils.parsedate_tz(raw)
                if parsed is not None:
                    value = email.utils.mktime_tz(parsed) - time.time()
            except (ValueError, OverflowError, IndexError, TypeError):
                value = None
    if value is None or not (0 < value <= cap_s):
        return None
    return value


def backoff_delay(
    attempt: int,
    retry_after: float | None = None,
    *,
    max_s: float = 8.0,
    rng: random.Random | None = None,
) -> float:
    """Pause before retry number ``attempt`` (1 = first retry)."""
    if retry_after is not None and retry_after > 0:
        return retry_after
    base = min(INITIAL_S * 2 ** (attempt - 1), max_s)
    jitter = (rng or random).uniform(0.75, 1.0)
    return base * jitter


# --------------------------------------------------------------------------- decisions


class Action(StrEnum):
    RETRY = "retry"  # the same step again (a download, a judge call) after ``delay_s``
    RESUBMIT = "resubmit"  # a new request for the row after ``delay_s``
    NEXT_MODEL = "next model"  # this row on its next model
    SET_ASIDE = "set aside"  # this model for the rest of the run, the row on its next one
    FAIL = "fail"  # the row fails (the judge: the candidate stays unscored)
    STOP = "stop"  # the whole run stops


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    reason: str = ""  # for FAIL: what the row (or the judge) reports
    attempts: int | None = None  # for FAIL: the attempts to report, where they are known
    model: str | None = None  # the model to blame, set aside or leave for the next


@dataclass
class Tries:
    """Failures so far of one row, one download or one judge call; ``decide`` counts."""

    count: int = 0  # failures that count against the step's limit
    throttled: int = 0  # a row's 429s, which have their own, larger limit
    paused_s: float = 0.0  # a judge call's tokens-a-minute pauses

    @property
    def total(self) -> int:
        return self.count + self.throttled


class _Limits(Protocol):
    """The run settings the policy reads (``runner.settings.Settings`` has them)."""

    max_attempts: int
    max_throttled: int
    backoff_max_s: float
    retry_after_cap_s: float
    repay_uncertain: bool


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6  # a row's failed requests, across models
    max_throttled: int = 200  # a row's 429s
    backoff_max_s: float = 8.0
    retry_after_cap_s: float = 120.0
    download_rounds: int = 4  # each round is already the transport's retried GET
    call_retries: int = 4  # a judge call's, after the transport's own
    tokens_pause_max_s: float = 900.0  # a judge call's tokens-a-minute pauses, in all
    repay_uncertain: bool = False  # the user accepts paying again for a lost answer

    @classmethod
    def from_settings(cls, settings: _Limits) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            max_throttled=settings.max_throttled,
            backoff_max_s=settings.backoff_max_s,
            retry_after_cap_s=settings.retry_after_cap_s,
            repay_uncertain=settings.repay_uncertain,
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Backoff before retry ``attempt`` (1 = first); the server's hint wins (one over the
        cap was dropped when it was parsed)."""
        if retry_after is not None:
            retry_after = min(retry_after, self.retry_after_cap_s)
        return backoff_delay(attempt, retry_after, max_s=self.backoff_max_s)

    def decide(self, error: BaseException, tries: Tries) -> Decision:
        """What to do after ``error``; counts it in ``tries``. An error that is not a
        ``DashScopeError`` (a bad image, a result out of reach) fails the row."""
        if isinstance(error, Fatal):
            return Decision(Action.STOP, reason=str(error))
        if isinstance(error, Resubmit):  # the task is closed: only a new request can help
            cause = error.cause
            if isinstance(cause, Fatal):
                return Decision(Action.STOP, reason=str(cause))
            return self._row(cause, tries)
        if not isinstance(error, DashScopeError):
            return Decision(Action.FAIL, reason=str(error), attempts=tries.count + 1)
        if error.step is Step.DOWNLOAD:
            return self._download(error, tries)
        if error.step is Step.JUDGE_CALL:
            return self._judge_call(error, tries)
        return self._row(error, tries)

    def _row(self, exc: DashScopeError, tries: Tries) -> Decision:
        model = exc.model or None
        if isinstance(exc, Uncertain):
            tries.count += 1
            if self.repay_uncertain and tries.count < self.max_attempts:
                return Decision(Action.RESUBMIT, self.delay(tries.count), model=model)
            return Decision(
                Action.FAIL,
                reason=f"uncertain: {exc}, so it was not sent again (run again with "
                f"{REPAY_FLAG} to pay for the row again)",
                attempts=tries.count,
                model=model,
            )
        if isinstance(exc, RateLimited):
            tries.throttled += 1
            if tries.throttled > self.max_throttled:
                return Decision(Action.FAIL, reason=f"throttled {tries.throttled} times: {exc}")
            delay = self.delay(min(tries.throttled, 6), exc.retry_after)
            return Decision(Action.RESUBMIT, delay, model=model)
        if isinstance(exc, Retryable | ResultExpired):
            tries.count += 1
            if tries.count >= self.max_attempts:
                why = f"gave up after {tries.count} attempts: {exc}"
                return Decision(Action.FAIL, reason=why, attempts=tries.count)
            retry_after = exc.retry_after if isinstance(exc, Retryable) else None
            return Decision(Action.RESUBMIT, self.delay(tries.count, retry_after), model=model)
        if isinstance(exc, ModelNotServed):
            return Decision(Action.SET_ASIDE, reason=str(exc), model=model)
        if isinstance(exc, ModelRefused):
            return Decision(Action.NEXT_MODEL, reason=str(exc), model=model)
        return Decision(Action.FAIL, reason=str(exc), attempts=tries.count + 1, model=model)

    def _download(self, exc: DashScopeError, tries: Tries) -> Decision:
        if not isinstance(exc, Retryable | ResultExpired):
            return self._row(exc, tries)
        tries.count += 1
        if tries.count >= self.download_rounds:
            return Decision(Action.FAIL, reason=str(exc), attempts=tries.count)
        if isinstance(exc, ResultExpired):
            return Decision(Action.RETRY)  # renewed URLs are tried at once
        # the transport already honoured any Retry-After within the round
        return Decision(Action.RETRY, self.delay(tries.count + 1))

    def _judge_call(self, exc: DashScopeError, tries: Tries) -> Decision:
        if isinstance(exc, TokensThrottled):
            # clears within a minute: waited out, a candidate is not left unscored for it
            pause = min(exc.retry_after or TOKENS_RETRY_AFTER_S, self.retry_after_cap_s)
            tries.paused_s += pause
            if tries.paused_s > self.tokens_pause_max_s:
                why = f"judge throttled for {tries.paused_s:.0f} s: {exc}"
                return Decision(Action.FAIL, reason=why)
            return Decision(Action.RETRY, pause)
        if isinstance(exc, Retryable):
            tries.count += 1
            if tries.count > self.call_retries:
                return Decision(Action.FAIL, reason=f"judge call failed {tries.count} times: {exc}")
            return Decision(Action.RETRY, self.delay(tries.count, exc.retry_after))
        return Decision(Action.FAIL, reason=f"judge refused: {exc}")
