"""The face-swap contact sheets (ori / target / output): for LFW the same 24 rows every run,
so runs can be compared by eye; for the packaged set every pair, cropped round the faces
(its pictures are up to 1800 px: a thumbnail of the whole would show a face of 30 px).

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


Box = Any  # x0, y0, x1, y1 (a numpy array or a tuple), or None: the whole picture
FOCUS_MARGIN = 0.6  # a focused panel shows the face's box grown by this share each side


def focused(img: Image.Image, box: Box) -> Image.Image:
    """The picture cut to the square round ``box`` (grown by FOCUS_MARGIN) at the panel's
    size, or whole."""
    if box is None:
        return img
    x0, y0, x1, y1 = (float(v) for v in box)
    half = max(x1 - x0, y1 - y0) * (0.5 + FOCUS_MARGIN)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    square = img.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
    return square.resize((PANEL, PANEL), Image.Resampling.LANCZOS)


def contact_sheet(
    rows: list[dict[str, str]], imgs: Path, results: dict[str, Any], path: Path,
    captions: dict[str, str] = SHEET_ROWS, focus: dict[str, tuple[Box, Box]] | None = None,
) -> list[str]:
    """Write the sheet of the rows ``captions`` names (in its order) that are in ``rows``;
    ``focus``: per row, the boxes (ori's face, target's) its panels are cut round (ori's
    for the output). Returns the indices shown."""
    by_index = {r["index"]: r for r in rows}
    shown = [i for i in captions if i in by_index]
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
        if focus is not None:
            ori_box, target_box = focus.get(index, (None, None))
            swapped = res is not None and not isinstance(res, str)
            panels = [focused(panels[0], ori_box), focused(panels[1], target_box),
                      focused(panels[2], ori_box) if swapped else panels[2]]
        x0 = (n % PER_LINE) * (3 * PANEL + 12)
        y0 = (n // PER_LINE) * (PANEL + LABEL)
        for k, img in enumerate(panels):
            img.thumbnail((PANEL, PANEL))
            sheet.paste(img, (x0 + k * PANEL, y0 + LABEL))
        variant = "" if res is None or isinstance(res, str) else res.detail.get("variant", "")
        text = f"#{index} {captions[index]}  ori / target / output {variant}"
        if isinstance(res, str):
            text += f"  FAILED: {res[:40]}"
        draw.text((x0 + 2, y0 + 1), text, fill=(0, 0, 0))
    sheet.save(path, optimize=True)
    return shown
