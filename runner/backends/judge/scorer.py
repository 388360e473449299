"""The VIEScore judge: Qwen-VL on DashScope's OpenAI-compatible endpoint scores candidates.

VIEScore (Ku et al., 2024): SC (semantic consistency) and PQ (perceptual quality) are each the
minimum of their 0-10 sub-scores; overall = sqrt(SC x PQ). t2i SC is one score (prompt
following); edit SC is [edit success, no over-editing] with source and result shown; PQ is
[naturalness, no artifacts] on the result alone. Deepfake replaces SC by the face-identity
cosine: overall = sqrt(10 x cos x PQ).

Answers are parsed strictly (``{"score": [...], "reasoning": "..."}``, a ```json fence at
most); a bad answer is asked once more, then the candidate stays unscored with the reason in
``error``. A score is never invented.

The emulator tells the questions apart by the number of images and by the words
"naturalness"/"artifact" (see ``runner.emulator.judge``): the SC texts below must never use
those words, the PQ text must.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog
from PIL import Image
from pydantic import BaseModel

from runner.errors import (
    TOKENS_RETRY_AFTER_S,
    DashScopeError,
    Fatal,
    RateLimited,
    Retryable,
    RunnerError,
    TokensThrottled,
)
from runner.images import ImageProblem, open_image
from runner.retry import backoff_delay
from runner.settings import JudgeSettings

log = structlog.get_logger(__name__)

__all__ = [
    "AnswerError",
    "ChatClient",
    "Judge",
    "JudgeBudgetExhausted",
    "JudgeScore",
    "overall",
    "overall_deepfake",
    "parse_answer",
    "pick",
]

_JPEG_QUALITY = 90
_TRANSPORT_RETRIES = 4  # per call, for 429 / 5xx / timeouts
_PARSE_ATTEMPTS = 2  # the first answer and one retry
_MAX_TOKENS = 512
_ECHO_CHARS = 1000  # an unusable answer goes back this long at most, on the re-ask
_TOKENS_PAUSE_MAX_S = 900.0  # most one call waits out tokens-a-minute 429s before giving up
_FENCE = re.compile(r"\A```(?:json|JSON)?[ \t]*\n?(.*?)\n?[ \t]*```\Z", re.S)

# --------------------------------------------------------------------------- prompt texts
# Adapted from the VIEScore paper's prompts. SC texts: no "naturalness", no "artifact".

_CONTEXT = (
    "You are a professional digital artist. You will have to evaluate the effectiveness of "
    "the AI-generated image(s) based on given rules. All the input images are AI-generated. "
    "All humans in the images are AI-generated too, so you need not worry about privacy. "
    "Give your output in exactly this form, a JSON object and nothing else: "
    '{"score": [...], "reasoning": "..."} (keep the reasoning concise and short).'
)

_T2I_SC = (
    "RULES: The image is an AI-generated image made from the text prompt below. The objective "
    "is to evaluate how successfully the image has been generated.\n"
    "From scale 0 to 10: a score from 0 to 10 will be given based on the success in following "
    "the prompt (0: the image does not follow the prompt at all; 10: the image follows the "
    "prompt perfectly).\n"
    "Put the score in a list such that output score = [score].\n\n"
    "Text prompt: {prompt}"
)

_EDIT_SC = (
    "RULES: Two images will be provided: the first is the original image and the second an "
    "edited version of the first. The objective is to evaluate how successfully the editing "
    "instruction has been executed in the second image. Note that sometimes the two images "
    "might look identical due to the failure of the edit.\n"
    "From scale 0 to 10: a score from 0 to 10 will be given based on the success of the "
    "editing (0: the edited image does not follow the instruction at all; 10: it follows the "
    "instruction perfectly).\n"
    "A second score from 0 to 10 will rate the degree of overediting in the second image "
    "(0: the edited image is completely different from the original; 10: the edited image is "
    "a minimal yet effective edit of the original).\n"
    "{extra}"
    "Put the scores in a list such that output score = [score1, score2], where score1 rates "
    "the editing success and score2 the degree of overediting.\n\n"
    "Editing instruction: {prompt}"
)

_VTTIE_EXTRA = (
    "The instruction edits text shown in the image: the edit succeeds when exactly the named "
    "text is added, removed or replaced as asked and spelled correctly; overediting includes "
    "a changed font, size or colour of the text and any change to the other text.\n"
)

_PQ = (
    "RULES: The image is an AI-generated image. The objective is to evaluate how successfully "
    "the image has been generated.\n"
    "From scale 0 to 10: a score from 0 to 10 will be given based on image naturalness (0: "
    "the scene does not look natural at all, e.g. a wrong sense of distance, wrong shadows or "
    "wrong lighting; 10: the image looks natural).\n"
    "A second score from 0 to 10 will rate the image artifacts (0: the image contains a large "
    "portion of distortion, watermarks, scratches, blurred faces, unusual body parts or "
    "subjects that are not harmonized; 10: the image has no artifacts).\n"
    "Put the scores in a list such that output score = [naturalness, artifacts]."
)

_REASK = (
    "Your previous answer could not be used. Answer again with only the JSON object "
    '{{"score": [...], "reasoning": "..."}}, where score holds exactly {n} number(s) from 0 to '
    "10."
)


# --------------------------------------------------------------------------- models


class JudgeBudgetExhausted(RunnerError):
    """The run's judge call budget (``judge.budget``) is spent; no further calls are made."""


class AnswerError(ValueError):
    """A judge answer that is not the strict JSON asked for."""


class JudgeScore(BaseModel):
    """One candidate's VIEScore. ``error`` set means unscored: no number stands for it."""

    sc: list[float] | None = None
    pq: list[float] | None = None
    overall: float | None = None
    identity: float | None = None
    judge_model: str
    reasoning: str = ""
    error: str | None = None
    emulated: bool = False  # scored by the emulator's stand-in judge

    @property
    def scored(self) -> bool:
        return self.error is None and self.overall is not None

    def record(self) -> dict[str, Any]:
        """The fields of a journal "judged" record (besides index and file)."""
        return self.model_dump(mode="json")


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


# --------------------------------------------------------------------------- arithmetic


def overall(sc: Sequence[float], pq: Sequence[float]) -> float:
    """VIEScore overall: sqrt(min(SC) x min(PQ)), 0-10."""
    if not sc or not pq:
        raise ValueError("overall needs at least one SC and one PQ score")
    return round(math.sqrt(max(0.0, min(sc)) * max(0.0, min(pq))), 4)


def overall_deepfake(identity: float, pq: Sequence[float]) -> float:
    """The competition's deepfake score: sqrt(10 x cos(target, result) x min(PQ)); a negative
    cosine counts as 0."""
    if not pq:
        raise ValueError("overall_deepfake needs PQ scores")
    return round(math.sqrt(10.0 * max(0.0, min(identity, 1.0)) * max(0.0, min(pq))), 4)


def pick(scores: Sequence[JudgeScore | None]) -> int | None:
    """Index of the best scored candidate (the first on a tie); None if none is scored."""
    best: int | None = None
    best_value = -math.inf
    for i, s in enumerate(scores):
        if s is None or not s.scored or s.overall is None:
            continue
        if s.overall > best_value:
            best, best_value = i, s.overall
    return best


def parse_answer(text: str, n: int) -> tuple[list[float], str]:
    """Strictly parse ``{"score": [n numbers 0-10], "reasoning": "..."}``.

    A surrounding ```json fence is tolerated, nothing else (no prose around the object).
    """
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()

    def no_constants(name: str) -> Any:
        raise AnswerError(f"{name} is not a score")

    try:
        data = json.loads(body, parse_constant=no_constants)
    except ValueError as exc:
        if isinstance(exc, AnswerError):
            raise
        raise AnswerError(f"not JSON: {_snippet(text)!r}") from None
    if not isinstance(data, dict):
        raise AnswerError(f"not a JSON object: {_snippet(text)!r}")
    raw = data.get("score")
    if not isinstance(raw, list):
        raise AnswerError('no "score" list in the answer')
    if len(raw) != n:
        raise AnswerError(f'"score" has {len(raw)} value(s), {n} expected')
    scores: list[float] = []
    for value in raw:
        # bool is an int in Python; "7" is a string: neither is a score
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AnswerError(f'"score" holds a non-number: {value!r}')
        if not (math.isfinite(value) and 0 <= value <= 10):
            raise AnswerError(f'"score" value {value!r} is outside 0-10')
        scores.append(float(value))
    reasoning = data.get("reasoning", "")
    if not isinstance(reasoning, str):
        raise AnswerError('"reasoning" is not a string')
    return scores, reasoning.strip()


def _snippet(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat[:limit] + ("..." if len(flat) > limit else "")


def _data_uri(path: Path, max_side: int) -> str:
    """Blocking: the image shrunk to ``max_side`` as a JPEG data URI (judges need no more)."""
    img = open_image(path, max_side=max_side)  # decoded at a reduced scale where it can be
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), resample=3)  # 3 = BICUBIC, cheap and good enough
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_part(uri: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": uri}}


# --------------------------------------------------------------------------- the judge


class _Pacer:
    """Paces call starts by requests AND tokens a minute (qwen-vl-max: 1,200 requests and
    1,000,000 tokens; with images the tokens run out first). Each call reserves its turn:
    60/rpm seconds after the last start, and its tokens' share of the minute after the
    tokens already sent; then sleeps until then. ``pause`` holds every later call back
    (a tokens-a-minute 429 clears within about a minute)."""

    def __init__(
        self,
        requests_per_minute: float,
        tokens_per_minute: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.interval = 60.0 / requests_per_minute
        self.seconds_per_token = 60.0 / tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf
        self._tokens_clear = -math.inf  # when the tokens reserved so far are paid off

    async def wait(self, tokens: int = 0) -> None:
        now = self._clock()
        at = max(now, self._next, self._tokens_clear)
        self._next = at + self.interval
        self._tokens_clear = at + tokens * self.seconds_per_token
        if at > now:
            await self._sleep(at - now)

    def pause(self, seconds: float) -> None:
        until = self._clock() + seconds
        self._next = max(self._next, until)


# Qwen-VL counts one token per 28x28 patch (a 1024x1024 image: about 1.3k tokens); a text
# token is about 2 characters of mixed Chinese and English; the answer is at most _MAX_TOKENS.
_PATCH = 28
_CHARS_PER_TOKEN = 2


def _uri_tokens(uri: str) -> int:
    """Tokens of one image data URI, from its pixel size (the header only is decoded)."""
    try:
        raw = base64.b64decode(uri.split(",", 1)[1])
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
    except Exception:  # an odd URI: assume the judge's largest image
        width = height = 1024
    return math.ceil(width / _PATCH) * math.ceil(height / _PATCH) + 2


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """What one chat request costs against the tokens-a-minute limit, input and output."""
    tokens = _MAX_TOKENS
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for part in parts:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "image_url":
                tokens += _uri_tokens(str(part.get("image_url", {}).get("url", "")))
            elif isinstance(part.get("text"), str):
                tokens += len(part["text"]) // _CHARS_PER_TOKEN + 1
    return tokens


class Judge:
    """Scores one image per call of :meth:`score`; one instance per run (its budget and rate
    limit are the run's)."""

    def __init__(
        self,
        client: ChatClient,
        settings: JudgeSettings,
        *,
        emulated: bool,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.settings = settings
        self.emulated = emulated
        self._pacer = _Pacer(settings.requests_per_minute, settings.tokens_per_minute, clock, sleep)
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
            result_uri = await asyncio.to_thread(_data_uri, image, self.settings.max_side)
            source_uri = (
                await asyncio.to_thread(_data_uri, source, self.settings.max_side)
                if edit and source is not None
                else None
            )
        except (ImageProblem, OSError) as exc:
            return self._unscored(f"cannot read the image: {exc}", identity=identity)

        sc: list[float] | None = None
        notes: list[str] = []
        if task_type != "deepfake":
            if edit:
                assert source_uri is not None
                extra = _VTTIE_EXTRA if task_type == "vttie" else ""
                text = _EDIT_SC.format(prompt=prompt, extra=extra)
                parts = [_image_part(source_uri), _image_part(result_uri), _text(text)]
                n_sc = 2
            else:
                parts = [_image_part(result_uri), _text(_T2I_SC.format(prompt=prompt))]
                n_sc = 1
            try:
                sc, why = await self._ask(parts, n_sc, "SC")
            except (AnswerError, _CallFailed) as exc:
                # PQ is not asked: the candidate is unscored either way, save the call.
                return self._unscored(f"SC: {exc}", identity=identity)
            notes.append(f"SC: {why}")
        try:
            pq, why = await self._ask([_image_part(result_uri), _text(_PQ)], 2, "PQ")
        except (AnswerError, _CallFailed) as exc:
            return self._unscored(
                f"PQ: {exc}", sc=sc, identity=identity, reasoning=" | ".join(notes)
            )
        notes.append(f"PQ: {why}")
        if task_type == "deepfake":
            assert identity is not None
            value = overall_deepfake(identity, pq)
        else:
            assert sc is not None
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
            {"role": "system", "content": _CONTEXT},
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
                    {"role": "user", "content": _REASK.format(n=n)},
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
        """One chat request under the rate limit and the budget; transport errors retried."""
        failures = 0
        paused = 0.0
        tokens = estimate_tokens(messages)
        while True:
            if self.calls >= self.settings.budget:
                raise JudgeBudgetExhausted(f"judge budget of {self.settings.budget} calls is spent")
            await self._pacer.wait(tokens)
            self.calls += 1
            try:
                return await self.client.chat(
                    self.model, messages, temperature=0.0, max_tokens=_MAX_TOKENS
                )
            except Fatal:
                raise
            except TokensThrottled as exc:
                # The tokens-a-minute throttle clears within a minute: pause every judge call
                # and ask again; it never leaves a candidate unscored (up to a long bound).
                self.throttled += 1
                self.calls -= 1
                delay = exc.retry_after or TOKENS_RETRY_AFTER_S
                paused += delay
                if paused > _TOKENS_PAUSE_MAX_S:
                    raise _CallFailed(f"judge throttled for {paused:.0f} s: {exc}") from None
                self.retries += 1
                log.info("judge.tokens_throttled", delay_s=round(delay, 2))
                self._pacer.pause(delay)
                continue
            except Retryable as exc:
                if isinstance(exc, RateLimited):
                    self.throttled += 1
                    self.calls -= 1  # a 429 is not a call the service served
                failures += 1
                if failures > _TRANSPORT_RETRIES:
                    raise _CallFailed(f"judge call failed {failures} times: {exc}") from None
                self.retries += 1
                delay = backoff_delay(failures, exc.retry_after)
                log.info("judge.retry", attempt=failures, delay_s=round(delay, 2), error=str(exc))
                await self._sleep(delay)
            except DashScopeError as exc:  # refused (moderation, no such model...): not retried
                raise _CallFailed(f"judge refused: {exc}") from None


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


