"""Submit pacing: at most as many submits as the quota's window allows, never in excess.

A quota of ``r`` submits a second is ``count = round(r)`` submits in any ``count / r``
seconds (2 a second: 2 in any second): two slots that free together are refilled together,
not half a second apart. A guard on the window absorbs the difference between when a
request leaves and when the service counts it (bodies differ in size, the service reads
and checks them first): 30 ms, more after each 429 (25 ms a time, at most 15 % of the
window), back down slowly while no 429 comes. A 429 also pauses the model: a quarter of a
turn (``1 / r``) for a lone one, doubling with each further 429 before a window's worth of
submits has gone out without one, up to two turns (another client on the same account
takes turns too). That is all the backoff pacing takes: from 429s only.
"""

from __future__ import annotations

from collections import deque

_GUARD_S = 0.03
_FIRST_PAUSE = 0.25  # a lone 429 pauses this share of a turn; each further one twice that
_MAX_PAUSE = 2.0  # turns
_GUARD_STEP_S = 0.025
_GUARD_MAX_SHARE = 0.15
_QUIET_WINDOWS = 8  # this many windows' worth of submits with no 429: the guard eases
_LEAD = 0.5  # a rate-bound lane hands out its next slot this share of a turn early


class SubmitWindow:
    """The sliding window of one model's submits (times on the loop's clock)."""

    def __init__(self, per_second: float, guard_s: float = _GUARD_S) -> None:
        self.count = max(1, round(per_second)) if per_second >= 1 else 1
        self._span = self.count / per_second
        self._base_guard = guard_s
        self.guard = guard_s
        self._quiet = 0
        self._strikes = 0  # 429s since a window's worth of submits went out without one
        self.turn_s = 1.0 / per_second
        self._sent: deque[float] = deque(maxlen=self.count)
        self._booked: deque[float] = deque(maxlen=self.count)
        self._paused_until = 0.0

    def next_at(self, now: float) -> float:
        """When the next submit may leave (``now`` if at once)."""
        at = max(now, self._paused_until)
        if len(self._sent) == self.count:
            at = max(at, self._sent[0] + self.window)
        return at

    @property
    def window(self) -> float:
        return self._span + self.guard

    def take(self, now: float) -> None:
        self._sent.append(now)
        self._quiet += 1
        if self._quiet >= self.count:
            self._strikes = 0
        if self._quiet >= _QUIET_WINDOWS * self.count and self.guard > self._base_guard:
            self.guard = max(self._base_guard, self.guard - _GUARD_STEP_S / 2)
            self._quiet = 0

    def pause(self, now: float) -> None:
        """A 429: nothing leaves for a while (longer if 429s repeat); the guard grows."""
        self._strikes += 1
        turns = min(_MAX_PAUSE, _FIRST_PAUSE * 2 ** (self._strikes - 1))
        self._paused_until = max(self._paused_until, now + turns * self.turn_s)
        self.guard = min(self.guard + _GUARD_STEP_S, _GUARD_MAX_SHARE * self._span)
        self._quiet = 0

    def book(self, now: float) -> float:
        """Book the submit turn of a holder just handed a slot (rate-bound lanes); returns
        it. A holder that never submits costs one turn, never a stall."""
        at = max(now, self._paused_until)
        if len(self._booked) == self.count:
            at = max(at, self._booked[0] + self.window)
        self._booked.append(at)
        return at

    def opens_in(self, now: float) -> float:
        """Seconds until the next slot should be handed out: its holder then reaches the
        window just before its turn, and no more holders wait unsent than turns come."""
        at = max(now, self._paused_until)
        if len(self._booked) == self.count:
            at = max(at, self._booked[0] + self.window)
        return max(0.0, at - _LEAD * self.turn_s - now)
