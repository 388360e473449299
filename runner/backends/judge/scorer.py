"""The VIEScore judge: Qwen-VL on DashScope's OpenAI-compatible endpoint scores candidates.

``Judge.score`` asks the SC and PQ questions of one image as the reference does
(``questions``: one user message, images then text, images at a 512 x 512 area), reads each
answer with the reference's parser (``answers``; an unusable answer is asked once more, the
same request again as the reference does, then the candidate stays unscored with the reason
in ``error``) and combines them. Calls are paced by requests and tokens a minute
(``pacing``, from the model's published quota), counted against the run's judge
budget, and their estimated tokens and cost are kept (``usage``, and each score's own in its
``JudgeScore``, which the journal keeps). With a money budget (``--budget``, ``JudgeSpend``)
a call is made only when its largest possible cost fits: a score reserves what its questions
may cost before the first is asked. What the transport gave up on is retried or not as
``runner.policy`` decides (a tokens-a-minute 429 pauses every call).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from runner.backends.judge.pacing import (
    MAX_TOKENS,
    Pacer,
    estimate_tokens,
    input_tokens,
    output_tokens,
    pace,
)
from runner.backends.judge.questions import data_uri, message, pq_question, question
from runner.backends.judge.reference import reference
from runner.backends.judge.usage import JudgeUsage, calls_per_candidate
from runner.errors import DashScopeError, RateLimited, RunnerError, Step, TokensThrottled
from runner.images import ImageProblem
from runner.policy import Action, RetryPolicy, Tries
from runner.settings import JudgeSettings

log = structlog.get_logger(__name__)

__all__ = [
    "TEMPERATURE",
    "AnswerError",
    "ChatClient",
    "Judge",
    "JudgeBudgetExhausted",
    "JudgeScore",
    "JudgeUsage",
    "calls_per_candidate",
    "estimate_tokens",
    "overall",
    "overall_deepfake",
    "parse_answer",
    "pick",
]

_PARSE_ATTEMPTS = 2  # the first answer and the same question once more (the reference's)
TEMPERATURE = 0.1  # the reference's sampling temperature


class JudgeBudgetExhausted(RunnerError):
    """The run's judge call budget (``judge.budget``) is spent, or the next call could pass
    the money budget (``--budget``); no further calls are made."""


class JudgeSpend(Protocol):
    """The money budget the judge's calls count against (``runner.cost.Budget``)."""

    def reserve_judge(self, cost: float) -> bool:
        """Hold ``cost`` for calls about to be made; False when it would pass the limit."""
        ...

    def count_judge(self, cost: float | None, reserved: float) -> None:
        """One served call's estimated cost (None: no price), replacing ``reserved``."""
        ...

    def release_judge(self, reserved: float) -> None:
        """Give back what was held for calls not made or not served."""
        ...

    def judge_reason(self) -> str:
        """Why a judge call was not made."""
        ...


@dataclass
class _Spent:
    """What one score's calls spent, and what it holds of the money budget."""

    calls: int = 0
    input_size: int = 0
    output_size: int = 0
    cost: float | None = None
    reserved: float = 0.0


class ChatClient(Protocol):
    """What the judge needs of a chat endpoint (DashScope's OpenAI-compatible one)."""

    async def chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        temperature: float = ...,
        max_completion_tokens: int = ...,
    ) -> str: ...


class _CallFailed(Exception):
    """Internal: one question could not be answered (transport or refusal)."""


class Judge:
    """Scores one image per call of :meth:`score`; one instance per run (its budget and rate
    limit are the run's). ``policy`` is the run's retry policy (``runner.policy``); ``spend``
    is the run's ``--budget``, asked before each call and told what each served call cost."""

    def __init__(
        self,
        client: ChatClient,
        settings: JudgeSettings,
        *,
        emulated: bool,
        region: str = "cn",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        policy: RetryPolicy | None = None,
        spend: JudgeSpend | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.emulated = emulated
        self.policy = policy or RetryPolicy()
        rpm, tpm = pace(settings, region)
        self._pacer = Pacer(rpm, tpm, clock, sleep)
        self._sleep = sleep
        self._spend = spend
        self.usage = JudgeUsage(model=settings.model, reference=reference().source)
        if settings.input_price is not None and settings.output_price is not None:
            self.usage.cost = 0.0

    @property
    def calls(self) -> int:
        """Requests sent and not refused with a 429 (what the budget counts)."""
        return self.usage.calls

    @property
    def throttled(self) -> int:
        return self.usage.throttled

    pick = staticmethod(pick)

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def remaining(self) -> int:
        return max(0, self.settings.budget - self.calls)

    def _unscored(self, error: str, spent: _Spent | None = None, **kw: Any) -> JudgeScore:
        return self._spent(
            JudgeScore(judge_model=self.model, error=error, emulated=self.emulated, **kw), spent
        )

    @staticmethod
    def _spent(score: JudgeScore, spent: _Spent | None) -> JudgeScore:
        """``score`` with what its calls spent (for the journal's "judged" record)."""
        if spent is not None:
            score.calls, score.cost = spent.calls, spent.cost
            score.input_size, score.output_size = spent.input_size, spent.output_size
        return score

    def _max_cost(self, messages: list[dict[str, Any]]) -> float:
        """The most one call of ``messages`` may cost: its input and the longest answer."""
        s = self.settings
        if s.input_price is None or s.output_price is None:
            return 0.0
        return (input_tokens(messages) * s.input_price + MAX_TOKENS * s.output_price) / 1e6

    def _reserve(self, spent: _Spent, cost: float) -> None:
        """Hold ``cost`` more of the money budget for this score; raises
        JudgeBudgetExhausted when it would pass it."""
        if self._spend is None or cost <= 0:
            return
        if not self._spend.reserve_judge(cost):
            raise JudgeBudgetExhausted(f"judge stopped: {self._spend.judge_reason()}")
        spent.reserved += cost

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
        needed = calls_per_candidate(task_type)
        if self.remaining < needed:
            raise JudgeBudgetExhausted(
                f"judge budget of {self.settings.budget} calls is spent ({self.calls} made)"
            )
        try:
            result_uri = await asyncio.to_thread(data_uri, image)
            source_uri = (
                await asyncio.to_thread(data_uri, source) if edit and source is not None else None
            )
        except (ImageProblem, OSError) as exc:
            return self._unscored(f"cannot read the image: {exc}", identity=identity)
        pq_messages = message([result_uri], pq_question())
        sc_messages = None
        if task_type != "deepfake":
            images = [result_uri] if source_uri is None else [source_uri, result_uri]
            sc_messages = message(images, question(prompt, edit=source_uri is not None))
        spent = _Spent(cost=0.0 if self._priced else None)
        # both questions' largest cost is held before the first is asked: a score is not
        # begun that the budget cannot finish
        self._reserve(
            spent, sum(self._max_cost(m) for m in (sc_messages, pq_messages) if m is not None)
        )
        try:
            return await self._questions(sc_messages, pq_messages, identity, spent)
        except JudgeBudgetExhausted as exc:
            if not spent.calls:
                raise
            # what was spent reaches the journal; the next score is not begun
            return self._unscored(str(exc), spent, identity=identity)
        finally:
            if self._spend is not None and spent.reserved:
                self._spend.release_judge(spent.reserved)

    async def _questions(
        self,
        sc_messages: list[dict[str, Any]] | None,
        pq_messages: list[dict[str, Any]],
        identity: float | None,
        spent: _Spent,
    ) -> JudgeScore:
        """Ask SC (none for a deepfake) and PQ and combine them (a deepfake's PQ with its
        identity score)."""
        sc: list[float] | None = None
        notes: list[str] = []
        if sc_messages is not None:
            try:
                sc, why = await self._ask(sc_messages, "SC", spent)
            except (AnswerError, _CallFailed) as exc:
                # PQ is not asked: the candidate is unscored either way, save the call.
                return self._unscored(f"SC: {exc}", spent, identity=identity)
            notes.append(f"SC: {why}")
        try:
            pq, why = await self._ask(pq_messages, "PQ", spent)
        except (AnswerError, _CallFailed) as exc:
            return self._unscored(
                f"PQ: {exc}", spent, sc=sc, identity=identity, reasoning=" | ".join(notes)
            )
        notes.append(f"PQ: {why}")
        if sc is None:
            assert identity is not None
            value = overall_deepfake(identity, pq)
        else:
            value = overall(sc, pq)
        score = JudgeScore(
            sc=sc,
            pq=pq,
            overall=value,
            identity=identity,
            judge_model=self.model,
            reasoning=" | ".join(notes),
            emulated=self.emulated,
        )
        return self._spent(score, spent)

    @property
    def _priced(self) -> bool:
        return self.settings.input_price is not None and self.settings.output_price is not None

    async def _ask(
        self, messages: list[dict[str, Any]], what: str, spent: _Spent
    ) -> tuple[list[float], str]:
        """One question; an unusable answer is asked again once, the same request (as the
        reference does). Raises AnswerError (unusable twice) or _CallFailed."""
        last: AnswerError | None = None
        for attempt in range(_PARSE_ATTEMPTS):
            answer = await self._call(messages, spent)
            try:
                return parse_answer(answer)
            except AnswerError as exc:
                last = exc
                log.warning("judge.bad_answer", question=what, attempt=attempt + 1, error=str(exc))
        assert last is not None
        raise AnswerError(f"unusable answer after {_PARSE_ATTEMPTS} tries ({last})")

    async def _call(self, messages: list[dict[str, Any]], spent: _Spent) -> str:
        """One chat request under the rate limit and the budgets (calls, and money: what
        the score holds, more held when an answer is asked again); what the transport gave
        up on is retried as the policy decides."""
        tries = Tries()
        tokens = estimate_tokens(messages)
        most = self._max_cost(messages)
        while True:
            if self.calls >= self.settings.budget:
                raise JudgeBudgetExhausted(f"judge budget of {self.settings.budget} calls is spent")
            if spent.reserved < most:
                self._reserve(spent, most - spent.reserved)
            await self._pacer.wait(tokens)
            self.usage.calls += 1
            try:
                answer = await self.client.chat(
                    self.model, messages, temperature=TEMPERATURE, max_completion_tokens=MAX_TOKENS
                )
            except DashScopeError as exc:
                error = exc.at(Step.JUDGE_CALL)
            else:
                self._count(input_tokens(messages), output_tokens(answer), spent, most)
                return answer
            if isinstance(error, RateLimited):  # a 429 is not a call the service served
                self.usage.throttled += 1
                self.usage.calls -= 1
            decision = self.policy.decide(error, tries)
            if decision.action is Action.STOP:
                raise error
            if decision.action is not Action.RETRY:
                raise _CallFailed(decision.reason) from None
            self.usage.retries += 1
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

    def _count(self, tokens_in: int, tokens_out: int, spent: _Spent, held: float) -> None:
        """One served call's estimated tokens and cost: kept in the run's usage and the
        score's, and told to ``spend`` in place of the ``held`` part of what it holds."""
        self.usage.input_size += tokens_in
        self.usage.output_size += tokens_out
        spent.calls += 1
        spent.input_size += tokens_in
        spent.output_size += tokens_out
        cost = None
        s = self.settings
        if s.input_price is not None and s.output_price is not None:
            cost = (tokens_in * s.input_price + tokens_out * s.output_price) / 1e6
            self.usage.cost = (self.usage.cost or 0.0) + cost
            spent.cost = (spent.cost or 0.0) + cost
        if self._spend is not None:
            held = min(held, spent.reserved)
            spent.reserved -= held
            self._spend.count_judge(cost, held)
