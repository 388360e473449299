"""The face-swap contact sheet: the same 24 rows every run (ori / target / output), so runs
can be compared by eye.

The rows are the ones the realism review named (issue 14), by the artifact they showed,
plus the first row: glasses, colour casts, a tone unlike the neck, the target's shadows,
beard remnants, occluders, pose or expression differences, blurry sources.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

SHEET_ROWS: dict[str, str] = {
    "751": "first row",
    "784": "glasses",
    "921": "glasses",
    "819": "glasses",
    "951": "glasses",
    "938": "glasses",
    "998": "glasses, beard",
    "876": "glasses",
    "899": "glasses",
    "977": "mouth colour",
    "892": "colour cast, shadows",
    "793": "colour cast",
    "872": "blotchy colour",
    "890": "tone vs neck",
    "902": "tone, pose",
    "780": "tone vs neck",
    "801": "tone vs neck",
    "905": "shadows, beard",
    "817": "occluder, beard",
    "908": "hair strands",
    "995": "expression",
    "841": "pose",
    "911": "blurry source",
    "928": "blurry source",
}
PANEL = 200
LABEL = 14
PER_LINE = 2  # triples side by side


def contact_sheet(
    rows: list[dict[str, str]], imgs: Path, results: dict[str, Any], path: Path
) -> list[str]:
    """Write the sheet; returns the indices shown (those of SHEET_ROWS that are in ``rows``)."""
    by_index = {r["index"]: r for r in rows}
    shown = [i for i in SHEET_ROWS if i in by_index]
    if not shown:
        return []
    lines = (len(shown) + PER_LINE - 1) // PER_LINE
    width = PER_LINE * 3 * PANEL + (PER_LINE - 1) * 12
    sheet = Image.new("RGB", (width, lines * (PANEL + LABEL)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for n, index in enumerate(shown):
        row = by_index[index]
        res = results.get(index)
        panels = [
            Image.open(imgs / row["ori_image"]).convert("RGB"),
            Image.open(imgs / row["target_image"]).convert("RGB"),
        ]
        if res is not None and not isinstance(res, str):
            panels.append(Image.open(io.BytesIO(res.jpeg)).convert("RGB"))
        else:
            panels.append(Image.new("RGB", (PANEL, PANEL), (128, 128, 128)))
        x0 = (n % PER_LINE) * (3 * PANEL + 12)
        y0 = (n // PER_LINE) * (PANEL + LABEL)
        for k, img in enumerate(panels):
            img.thumbnail((PANEL, PANEL))
            sheet.paste(img, (x0 + k * PANEL, y0 + LABEL))
        variant = "" if res is None or isinstance(res, str) else res.detail.get("variant", "")
        text = f"#{index} {SHEET_ROWS[index]}  ori / target / output {variant}"
        if isinstance(res, str):
            text += f"  FAILED: {res[:40]}"
        draw.text((x0 + 2, y0 + 1), text, fill=(0, 0, 0))
    sheet.save(path, optimize=True)
    return shown
