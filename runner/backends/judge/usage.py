"""What the judge costs: the calls, 429s and estimated tokens of a run (``JudgeUsage``), of
every run in a folder as its journal says (``journal_usage``), the line that shows them, and
the dry run's estimate before any call is made.

Tokens are estimated as the pacer counts them (``pacing``): Qwen-VL's 28 x 28 patches per
image, about two characters a text token; the cost is the ``[judge]`` list prices per
million tokens (input and output), in the region's currency, when both are set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from runner.backends.judge.pacing import MAX_TOKENS, pace
from runner.backends.judge.questions import IMAGE_AREA, target_size
from runner.backends.judge.reference import reference
from runner.settings import Settings
from runner.store.journal import JournalState

__all__ = [
    "JudgeEstimate",
    "JudgeUsage",
    "calls_per_candidate",
    "describe",
    "estimate",
    "journal_usage",
]

_PATCH = 28
_CHARS_PER_TOKEN = 2
_TYPICAL_PROMPT_CHARS = 120  # a competition prompt: one or two sentences


def calls_per_candidate(task_type: str) -> int:
    """Judge calls one candidate takes: SC and PQ; a face swap's SC is its identity score."""
    return 1 if task_type == "deepfake" else 2


class JudgeUsage(BaseModel):
    """What the judge spent: calls the service served, 429s, estimated tokens and cost."""

    model: str
    calls: int = 0
    throttled: int = 0
    retries: int = 0
    # estimated tokens (no key here holds "token": the log scrubber would redact its value)
    input_size: int = 0
    output_size: int = 0
    cost: float | None = None  # None: no price in [judge] input_price / output_price
    reference: str = ""  # where the question texts and the parser come from

    def plus(self, other: JudgeUsage) -> JudgeUsage:
        """Both together (the cost is known when either's is: a call with no price adds
        nothing to it)."""
        costs = [c for c in (self.cost, other.cost) if c is not None]
        models = sorted({m for u in (self, other) for m in u.model.split(", ") if m})
        return JudgeUsage(
            model=", ".join(models),
            calls=self.calls + other.calls,
            throttled=self.throttled + other.throttled,
            retries=self.retries + other.retries,
            input_size=self.input_size + other.input_size,
            output_size=self.output_size + other.output_size,
            cost=sum(costs) if costs else None,
            reference=other.reference or self.reference,
        )


def journal_usage(state: JournalState, model: str, *, emulated: bool | None = None) -> JudgeUsage:
    """The judge's calls, estimated tokens and cost as the journal's "judged" records say
    them (each record carries what scoring its file spent), every run in the folder, a killed
    run's included; ``emulated``: only the emulator's judge, or only the real one. A file
    judged again (``rejudge``) counts its latest record: the replayed state keeps no other."""
    out = JudgeUsage(model=model)
    costs: list[float] = []
    models: set[str] = set()
    for row in state.rows.values():
        for rec in row.judged.values():
            if emulated is not None and bool(rec.get("emulated")) != emulated:
                continue
            out.calls += int(rec.get("calls") or 0)
            out.input_size += int(rec.get("input_size") or 0)
            out.output_size += int(rec.get("output_size") or 0)
            if isinstance(rec.get("cost"), int | float):
                costs.append(float(rec["cost"]))
            if rec.get("calls") and rec.get("judge_model"):
                models.add(str(rec["judge_model"]))
    out.cost = sum(costs) if costs else None
    if models:
        out.model = ", ".join(sorted(models))
    return out


def _money(amount: float | None, currency: str) -> str:
    return "price unknown" if amount is None else f"{amount:,.4f} {currency}".strip()


def describe(usage: Mapping[str, Any], currency: str = "") -> str:
    """One line: the judge model, its calls and 429s, estimated tokens and cost."""
    tokens = int(usage.get("input_size") or 0) + int(usage.get("output_size") or 0)
    line = f"judge {usage.get('model')}: {usage.get('calls', 0)} calls"
    if usage.get("throttled"):
        line += f" ({usage['throttled']} × 429)"
    line += f", about {tokens:,} tokens, est. cost {_money(usage.get('cost'), currency)}"
    if usage.get("cost") is None and usage.get("calls"):
        line += " (set [judge] input_price and output_price)"
    return line


class JudgeEstimate(BaseModel):
    """The dry run's view of the judge: what a run of these rows would ask of it."""

    model: str
    enabled: bool
    calls: int = 0
    input_size: int = 0  # estimated tokens, as JudgeUsage
    output_size: int = 0  # at most: every answer its longest
    cost: float | None = None  # None: no price
    minutes: float = 0.0  # the quota bound: calls and tokens at the judge's pace
    reference: str = ""


def _image_tokens(width: int = 1024, height: int = 1024) -> int:
    w, h = target_size(width, height, IMAGE_AREA)
    return -(-w // _PATCH) * -(-h // _PATCH) + 2


def estimate(settings: Settings, rows_by_type: Mapping[str, int]) -> JudgeEstimate:
    """Judge calls, tokens, cost and time for ``rows_by_type`` rows with the settings'
    candidates: every candidate of a judged row gets SC and PQ (a deepfake row PQ alone),
    each question its images at the reference's size and its text."""
    ref = reference()
    counts = settings.candidate_counts()
    judged = settings.judge.enabled or max(counts.values()) > 1
    out = JudgeEstimate(model=settings.judge.model, enabled=judged, reference=ref.source)
    if not judged:
        return out
    prompt = _TYPICAL_PROMPT_CHARS
    texts = {
        "t2i": len(ref.t2i_question("")) + prompt,
        "edit": len(ref.edit_question("")) + prompt,
        "pq": len(ref.pq_question()),
    }
    image = _image_tokens()
    for ttype, rows in rows_by_type.items():
        k = counts.get(ttype, 1) if ttype != "deepfake" else 1
        candidates = rows * k
        out.calls += candidates * calls_per_candidate(ttype)
        per = image + texts["pq"] // _CHARS_PER_TOKEN  # PQ: the result alone
        if ttype == "t2i":
            per += image + texts["t2i"] // _CHARS_PER_TOKEN
        elif ttype in ("tie", "vttie"):
            per += 2 * image + texts["edit"] // _CHARS_PER_TOKEN
        out.input_size += candidates * per
    out.output_size = out.calls * MAX_TOKENS
    s = settings.judge
    if s.input_price is not None and s.output_price is not None:
        out.cost = (out.input_size * s.input_price + out.output_size * s.output_price) / 1e6
    rpm, tpm = pace(s, settings.region)
    out.minutes = max(out.calls / rpm, (out.input_size + out.output_size) / tpm)
    return out
