"""The emulator's notion of now: the real clock plus an offset tests can move forward.

Moving it forward (``advance``) ages every task, result URL and quota window at once, so a
test can ask for a task submitted "23 h ago" or one past the 24 h retention without waiting.
"""

from __future__ import annotations

import time


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> float:
        """Epoch seconds, as the service's own clock reads."""
        return time.time() + self.offset

    def mono(self) -> float:
        """Monotonic seconds for rate windows; jumps forward with advance() too."""
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds
