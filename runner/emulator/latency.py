"""Latency profiles: how long a task (or sync call) takes, in real seconds before time_scale.

Profiles are strings, for configs, the CLI and JSON alike:
  ``uniform:A:B``        uniform between A and B seconds
  ``lognormal:MED:P99``  log-normal with median MED and 99th percentile P99 (a long tail)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


@dataclass(frozen=True)
class Profile:
    kind: str
    a: float
    b: float

    def draw(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        sigma = (math.log(self.b) - math.log(self.a)) / _Z99
        return rng.lognormvariate(math.log(self.a), sigma)


def parse_profile(text: str) -> Profile:
    """Raises ValueError with a one-line reason for a malformed profile."""
    parts = text.strip().split(":")
    if len(parts) != 3 or parts[0] not in ("uniform", "lognormal"):
        raise ValueError(
            f"latency profile {text!r} must be uniform:MIN:MAX or lognormal:MEDIAN:P99"
        )
    try:
        a, b = float(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(f"latency profile {text!r} has a non-numeric bound") from None
    if parts[0] == "uniform" and not 0 <= a <= b:
        raise ValueError(f"latency profile {text!r} needs 0 <= MIN <= MAX")
    if parts[0] == "lognormal" and not 0 < a <= b:
        raise ValueError(f"latency profile {text!r} needs 0 < MEDIAN <= P99")
    return Profile(parts[0], a, b)
