"""The judge's pace: requests and tokens a minute, and what one request costs in tokens."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Awaitable, Callable
from typing import Any

from PIL import Image

__all__ = ["MAX_TOKENS", "Pacer", "estimate_tokens", "input_tokens", "output_tokens"]

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
