"""Submit pacing on a cold start: the first window counts its submits as leaving late."""

from __future__ import annotations

from runner.scheduling.submit_window import SubmitWindow


def _send(window: SubmitWindow, now: float) -> float:
    at = window.next_at(now)
    window.take(at)
    return at


def test_the_first_window_is_counted_late_and_the_next_ones_are_not() -> None:
    w = SubmitWindow(2.0)
    times = [_send(w, 0.0) for _ in range(6)]
    assert times[:2] == [0.0, 0.0]  # the first two leave at once
    # the third waits for the cold pair to be counted: a window and the cold allowance
    assert times[2] == times[3] == w.window + w.cold_s
    assert 0.2 <= w.cold_s <= 0.5
    # from then on, warm: exactly one window apart
    assert times[4] == times[5] == times[2] + w.window


def test_a_lane_idle_for_a_while_is_cold_again() -> None:
    w = SubmitWindow(2.0)
    for _ in range(4):
        _send(w, 0.0)
    late = 60.0  # connections are gone by now
    first = _send(w, late)
    second = _send(w, late)
    third = _send(w, late)
    assert first == second == late
    assert third == late + w.window + w.cold_s


def test_a_slow_quota_is_cold_by_at_most_half_a_second() -> None:
    w = SubmitWindow(0.1)  # one submit every 10 s
    assert w.cold_s == 0.5
    assert _send(w, 0.0) == 0.0
    assert _send(w, 0.0) == w.window + w.cold_s
