"""Prompt text as sent to the API: within its limits, shortened on purpose when too long."""

from __future__ import annotations

import re

PROMPT_LIMIT = 800  # characters; the service cuts longer prompts silently
NEGATIVE_LIMIT = 500

_SENTENCE_END = re.compile(r"[。！？!?；;.\n]")


def shorten(text: str, limit: int = PROMPT_LIMIT) -> tuple[str, bool]:
    """Return (text within ``limit``, whether it was shortened).

    Cuts at the last sentence end inside the limit when that keeps at least half of it,
    else at the last space, else hard.
    """
    text = text.strip()
    if len(text) <= limit:
        return text, False
    head = text[:limit]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= limit // 2:
        return head[: ends[-1]].strip(), True
    space = head.rfind(" ")
    if space >= limit // 2:
        return head[:space].strip(), True
    return head, True
