"""What the judge answers: the strict answer parser, the VIEScore arithmetic, the pick.

SC and PQ are each the minimum of their 0-10 sub-scores; overall = sqrt(SC x PQ). Deepfake
replaces SC by the face-identity cosine: overall = sqrt(10 x cos x PQ). Answers are parsed
strictly (``{"score": [...], "reasoning": "..."}``, a ```json fence at most); a score is
never invented.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

__all__ = ["AnswerError", "JudgeScore", "overall", "overall_deepfake", "parse_answer", "pick"]

_FENCE = re.compile(r"\A```(?:json|JSON)?[ \t]*\n?(.*?)\n?[ \t]*```\Z", re.S)


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
