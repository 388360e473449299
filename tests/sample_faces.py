"""Real faces the installed packages ship: insightface's group photo ``t1.jpg`` and the boxes
of its two most frontal faces, cut out as 250x250 crops (LFW-sized, like the real pairs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

try:
    import insightface

    DATA = Path(insightface.__file__).parent / "data" / "images"
except ImportError:  # the tests that need it skip on GROUP missing
    DATA = Path("/nonexistent")
GROUP = DATA / "t1.jpg"
FACES = {2: (727, 367, 836, 476), 3: (452, 296, 560, 403)}  # the most frontal of t1.jpg


def crop(key: int) -> np.ndarray:
    """A 250x250 RGB crop around face ``key`` of the group photo."""
    group = np.asarray(Image.open(GROUP).convert("RGB"))
    x0, y0, x1, y1 = FACES[key]
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    top, left = max(0, cy - 135), max(0, cx - 125)
    return np.ascontiguousarray(group[top : top + 250, left : left + 250])
