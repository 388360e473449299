"""What the judge answers: the answer read as the reference reads it, the VIEScore arithmetic,
the pick.

SC and PQ are each the minimum of their 0-10 sub-scores; overall = sqrt(SC x PQ). Deepfake
replaces SC by the face-identity cosine: overall = sqrt(10 x cos x PQ). An answer is read by
the reference's own parser (lmms-eval's ``mllm_output_to_dict``, ``reference``): JSON in prose
or a code fence, a bare list, a repaired object. What it returns must then hold 0-10 numbers;
a score is never invented (the reference's "guess a random score" fallback is never used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from runner.backends.judge.reference import reference

__all__ = ["AnswerError", "JudgeScore", "overall", "overall_deepfake", "parse_answer", "pick"]


class AnswerError(ValueError):
    """A judge answer from which no usable score can be read."""


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
    # what scoring it spent: calls the service served, estimated tokens (in, out) and cost
    # (None: no price); the journal's "judged" records are the judge's spend over the folder
    calls: int = 0
    input_size: int = 0
    output_size: int = 0
    cost: float | None = None

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


def parse_answer(text: str) -> tuple[list[float], str]:
    """(scores, reasoning) from one answer, read by the reference's parser.

    Raises AnswerError when the parser finds nothing, or what it found is not a non-empty
    list of numbers from 0 to 10 (the reference takes the minimum of whatever list it gets;
    a string, a boolean or an out-of-range number is no score here).
    """
    try:
        data = reference().parse(text)
    except Exception as exc:  # the reference's parser on input it never expected
        raise AnswerError(f"unreadable answer ({exc}): {_snippet(text)!r}") from None
    if not isinstance(data, dict):
        raise AnswerError(f"no score found in the answer: {_snippet(text)!r}")
    raw = data.get("score")
    if not isinstance(raw, list) or not raw:
        raise AnswerError(f'no "score" list in the answer: {_snippet(text)!r}')
    scores: list[float] = []
    for value in raw:
        # bool is an int in Python; "7" is a string: neither is a score
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AnswerError(f'"score" holds a non-number: {value!r}')
        if not (math.isfinite(value) and 0 <= value <= 10):
            raise AnswerError(f'"score" value {value!r} is outside 0-10')
        scores.append(float(value))
    reasoning = data.get("reasoning")
    return scores, reasoning.strip() if isinstance(reasoning, str) else ""


def _snippet(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat[:limit] + ("..." if len(flat) > limit else "")
