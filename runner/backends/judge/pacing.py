"""The judge's pace: each judge model's published quota per region (requests and tokens a
minute), the share of it a run keeps to (``pace``), the ``Pacer`` that keeps to it, and what
one request costs in tokens.

The quotas are the reference's quota table (shared/reference/dashscope.md, 2026 editions). A
model not listed gets qwen-vl-max's figures until the settings say otherwise.
qwen2.5-vl-72b-instruct is the open model GEdit-Bench reports as its second judge; its quota
is twenty times below qwen-vl-max's, so a run judged by it is paced by the judge.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from runner.settings import JudgeSettings

__all__ = [
    "GEDIT_OPEN_JUDGE",
    "JUDGE_MODELS",
    "MAX_TOKENS",
    "QUOTA_SHARE",
    "JudgeQuota",
    "Pacer",
    "estimate_tokens",
    "input_tokens",
    "judge_quota",
    "output_tokens",
    "pace",
]


QUOTA_SHARE = 0.5  # of the model's published quota, when the settings name no rate


@dataclass(frozen=True)
class JudgeQuota:
    requests_per_minute: float
    tokens_per_minute: float
    published: bool = True  # False: not in the table, qwen-vl-max's figures assumed


GEDIT_OPEN_JUDGE = "qwen2.5-vl-72b-instruct"

# model -> region -> quota
JUDGE_MODELS: dict[str, dict[str, JudgeQuota]] = {
    "qwen-vl-max": {r: JudgeQuota(1200, 1_000_000) for r in ("cn", "intl")},
    "qwen-vl-plus": {r: JudgeQuota(1200, 1_000_000) for r in ("cn", "intl")},
    "qwen3-vl-plus": {"cn": JudgeQuota(3000, 5_000_000), "intl": JudgeQuota(1200, 1_000_000)},
    "qwen3-vl-flash": {"cn": JudgeQuota(3000, 5_000_000), "intl": JudgeQuota(1200, 1_000_000)},
    GEDIT_OPEN_JUDGE: {r: JudgeQuota(60, 100_000) for r in ("cn", "intl")},
}


def judge_quota(model: str, region: str) -> JudgeQuota:
    """The model's published quota in the region (qwen-vl-max's, marked unpublished, for a
    model the table does not know)."""
    by_region = JUDGE_MODELS.get(model)
    if by_region is None or region not in by_region:
        fallback = JUDGE_MODELS["qwen-vl-max"]["cn"]
        return JudgeQuota(fallback.requests_per_minute, fallback.tokens_per_minute, False)
    return by_region[region]


def pace(settings: JudgeSettings, region: str) -> tuple[float, float]:
    """(requests, tokens) a minute the judge keeps to: the settings', else a share of the
    model's published quota in the region."""
    quota = judge_quota(settings.model, region)
    return (
        settings.requests_per_minute or quota.requests_per_minute * QUOTA_SHARE,
        settings.tokens_per_minute or quota.tokens_per_minute * QUOTA_SHARE,
    )


MAX_TOKENS = 512  # the most an answer may take (the reference's max_tokens)


class Pacer:
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
# token is about 2 characters of mixed Chinese and English; the answer is at most MAX_TOKENS.
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


def input_tokens(messages: list[dict[str, Any]]) -> int:
    """What one chat request's messages cost in tokens (images and text), estimated."""
    tokens = 0
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


def output_tokens(answer: str) -> int:
    """What an answer cost in tokens, estimated the same way."""
    return len(answer) // _CHARS_PER_TOKEN + 1


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """What one chat request costs against the tokens-a-minute limit: its input and the
    longest answer it may get."""
    return input_tokens(messages) + MAX_TOKENS
