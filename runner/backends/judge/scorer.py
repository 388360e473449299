"""The VIEScore judge: Qwen-VL on DashScope's OpenAI-compatible endpoint scores candidates.

``Judge.score`` asks the SC and PQ questions (``questions``) of one image, parses the answers
strictly (``answers``; a bad answer is asked once more, then the candidate stays unscored
with the reason in ``error``) and combines them. Calls are paced by requests and tokens a
minute (``pacing``) and counted against the run's judge budget; what the transport gave up
on is retried or not as ``runner.policy`` decides (a tokens-a-minute 429 pauses every call).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from runner.backends.judge.answers import (
    AnswerError,
    JudgeScore,
    overall,
    overall_deepfake,
    parse_answer,
    pick,
)
from runner.backends.judge.pacing import MAX_TOKENS, Pacer, estimate_tokens
from runner.backends.judge.questions import CONTEXT, REASK, data_uri, pq_question, question
from runner.errors import DashScopeError, RateLimited, RunnerError, Step, TokensThrottled
from runner.images import ImageProblem
from runner.policy import Action, RetryPolicy, Tries
from runner.settings import JudgeSettings

log = structlog.get_logger(__name__)

__all__ = [
    "AnswerError",
    "ChatClient",
    "Judge",
    "JudgeBudgetExhausted",
    "JudgeScore",
    "estimate_tokens",
    "overall",
    "overall_deepfake",
    "parse_answer",
    "pick",
]

_PARSE_ATTEMPTS = 2  # the first answer and one retry
_ECHO_CHARS = 1000  # an unusable answer goes back this long at most, on the re-ask


class JudgeBudgetExhausted(RunnerError):
    """The run's judge call budget (``judge.budget``) is spent; no further calls are made."""


class ChatClient(Protocol):
    """What the judge needs of a chat endpoint (DashScope's OpenAI-compatible one)."""

    async def chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        temperature: float = ...,
        max_tokens: int = ...,
    ) -> str: ...


class _CallFailed(Exception):
    """Internal: one question could not be answered (transport or refusal)."""


class Judge:
    """Scores one image per call of :meth:`score`; one instance per run (its budget and rate
    limit are the run's). ``policy`` is the run's retry policy (``runner.policy``)."""

    def __init__(
        self,
        client: ChatClient,
        settings: JudgeSettings,
        *,
        emulated: bool,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.emulated = emulated
        self.policy = policy or RetryPolicy()
        self._pacer = Pacer(settings.requests_per_minute, settings.tokens_per_minute, clock, sleep)
        self._sleep = sleep
        self.calls = 0  # requests sent and not refused with a 429 (what the budget counts)
        self.throttled = 0
        self.retries = 0

    pick = staticmethod(pick)

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def remaining(self) -> int:
        return max(0, self.settings.budget - self.calls)

    def _unscored(self, error: str, **kw: Any) -> JudgeScore:
        return JudgeScore(judge_model=self.model, error=error, emulated=self.emulated, **kw)

    async def score(
        self,
        task_type: str,
        prompt: str,
        image: Path,
        *,
        source: Path | None = None,
        identity: float | None = None,
    ) -> JudgeScore:
        """Score ``image`` for its task. Raises JudgeBudgetExhausted (before spending part of
        a score) and Fatal; every other problem comes back as an unscored JudgeScore."""
        edit = task_type in ("tie", "vttie")
        if edit and source is None:
            return self._unscored(f"{task_type} needs its source image to be judged")
        if task_type == "deepfake" and identity is None:
            # No call is spent: without an identity score the row cannot be scored anyway.
            return self._unscored("no identity score for this face swap", identity=None)
        needed = 1 if task_type == "deepfake" else 2
        if self.remaining < needed:
            raise JudgeBudgetExhausted(
                f"judge budget of {self.settings.budget} calls is spent ({self.calls} made)"
            )
        try:
            result_uri = await asyncio.to_thread(data_uri, image, self.settings.max_side)
            source_uri = (
                await asyncio.to_thread(data_uri, source, self.settings.max_side)
                if edit and source is not None
                else None
            )
        except (ImageProblem, OSError) as exc:
            return self._unscored(f"cannot read the image: {exc}", identity=identity)
        if task_type == "deepfake":
            return await self._combine(None, result_uri, identity, [])
        try:
            sc, why = await self._ask(*question(task_type, prompt, result_uri, source_uri), "SC")
        except (AnswerError, _CallFailed) as exc:
            # PQ is not asked: the candidate is unscored either way, save the call.
            return self._unscored(f"SC: {exc}", identity=identity)
        return await self._combine(sc, result_uri, identity, [f"SC: {why}"])

    async def _combine(
        self, sc: list[float] | None, result_uri: str, identity: float | None, notes: list[str]
    ) -> JudgeScore:
        """Ask PQ and combine it with SC (or, for a deepfake, with the identity score)."""
        try:
            pq, why = await self._ask(pq_question(result_uri), 2, "PQ")
        except (AnswerError, _CallFailed) as exc:
            return self._unscored(
                f"PQ: {exc}", sc=sc, identity=identity, reasoning=" | ".join(notes)
            )
        notes.append(f"PQ: {why}")
        if sc is None:
            assert identity is not None
            value = overall_deepfake(identity, pq)
        else:
            value = overall(sc, pq)
        return JudgeScore(
            sc=sc,
            pq=pq,
            overall=value,
            identity=identity,
            judge_model=self.model,
            reasoning=" | ".join(notes),
            emulated=self.emulated,
        )

    async def _ask(self, parts: list[dict[str, Any]], n: int, what: str) -> tuple[list[float], str]:
        """One question, parsed strictly; one re-ask on a bad answer. Raises AnswerError
        (unusable twice) or _CallFailed."""
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": CONTEXT},
            {"role": "user", "content": parts},
        ]
        last: AnswerError | None = None
        answer = ""
        for attempt in range(_PARSE_ATTEMPTS):
            if attempt:
                # Turns must alternate (user, assistant, user): the unusable answer goes back
                # as the assistant's turn, shortened, before the request to answer again.
                messages = [
                    *messages,
                    {"role": "assistant", "content": answer[:_ECHO_CHARS] or "(empty)"},
                    {"role": "user", "content": REASK.format(n=n)},
                ]
            answer = await self._call(messages)
            try:
                return parse_answer(answer, n)
            except AnswerError as exc:
                last = exc
                log.warning("judge.bad_answer", question=what, attempt=attempt + 1, error=str(exc))
        assert last is not None
        raise AnswerError(f"unusable answer after {_PARSE_ATTEMPTS} tries ({last})")

    async def _call(self, messages: list[dict[str, Any]]) -> str:
        """One chat request under the rate limit and the budget; what the transport gave up
        on is retried as the policy decides."""
        tries = Tries()
        tokens = estimate_tokens(messages)
        while True:
            if self.calls >= self.settings.budget:
                raise JudgeBudgetExhausted(f"judge budget of {self.settings.budget} calls is spent")
            await self._pacer.wait(tokens)
            self.calls += 1
            try:
                return await self.client.chat(
                    self.model, messages, temperature=0.0, max_tokens=MAX_TOKENS
                )
            except DashScopeError as exc:
                error = exc.at(Step.JUDGE_CALL)
            if isinstance(error, RateLimited):  # a 429 is not a call the service served
                self.throttled += 1
                self.calls -= 1
            decision = self.policy.decide(error, tries)
            if decision.action is Action.STOP:
                raise error
            if decision.action is not Action.RETRY:
                raise _CallFailed(decision.reason) from None
            self.retries += 1
            if isinstance(error, TokensThrottled):
                # clears within a minute: every judge call waits, not only this one
                log.info("judge.tokens_throttled", delay_s=round(decision.delay_s, 2))
                self._pacer.pause(decision.delay_s)
                continue
            log.info(
                "judge.retry",
                attempt=tries.count,
                delay_s=round(decision.delay_s, 2),
                error=str(error),
            )
            await self._sleep(decision.delay_s)
