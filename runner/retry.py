"""Backoff arithmetic shared by every retry loop (the numbers of openai-python)."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping

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
