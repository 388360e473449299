"""The bundled sample job: a few rows of every type, with images from installed packages.

``make run`` uses it, so a fresh machine with no data and no key can see the whole
pipeline work. Faces come from insightface's own test images; scenes from scikit-image's
data; the sign for the text edit is drawn here.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROWS: list[tuple[str, str, str, str, str]] = [
    ("1", "t2i", "一只橘猫趴在洒满阳光的窗台上，写实摄影风格，细节丰富。", "", ""),
    ("2", "t2i", "A photorealistic lighthouse on a rocky coast at dawn, soft mist.", "", ""),
    ("3", "t2i", "雪山下的湖泊倒映着星空，长曝光摄影。", "", ""),
    ("4", "tie", "把背景换成夜晚的城市天际线", "astronaut.jpg", ""),
    ("5", "tie", "Make the cup of coffee a cup of green tea.", "coffee.jpg", ""),
    ("6", "vttie", "把招牌上的文字“OPEN”改为“CLOSED”", "sign.jpg", ""),
    ("7", "vttie", "Change the word SALE on the poster to NEW.", "poster.jpg", ""),
    ("8", "deepfake", "", "face_a.jpg", "face_b.jpg"),
    ("9", "deepfake", "", "face_b.jpg", "face_a.jpg"),
]


def _sign(text: str, size: tuple[int, int], bg: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(
            size=size[1] // 4
        )
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    w, h = size
    draw.rectangle(
        (w // 8, h // 4, w * 7 // 8, h * 3 // 4),
        fill=(250, 250, 240),
        outline=(40, 40, 40),
        width=6,
    )
    box = draw.textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    draw.text(((w - tw) // 2, (h - th) // 2 - box[1]), text, fill=(200, 30, 30), font=font)
    return img


def _faces() -> tuple[Image.Image, Image.Image]:
    import insightface

    root = Path(insightface.__file__).parent / "data" / "images"
    hanks = Image.open(root / "Tom_Hanks_54745.png").convert("RGB")
    group = Image.open(root / "t1.jpg").convert("RGB")
    # the middle face of the group photo, cropped with room around it, like an LFW crop
    w, h = group.size
    cx, cy, half = int(w * 0.50), int(h * 0.36), int(min(w, h) * 0.22)
    crop = group.crop((cx - half, cy - half, cx + half, cy + half)).resize((250, 250))
    return crop, hanks.resize((250, 250))


def write_sample(folder: Path) -> Path:
    """Write ``task.csv`` and ``imgs/`` into ``folder`` (idempotent); return the CSV path."""
    from skimage import data as skdata

    imgs = folder / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)

    def save(name: str, img: Image.Image) -> None:
        path = imgs / name
        if not path.exists():
            img.save(path, "JPEG", quality=92)

    save("astronaut.jpg", Image.fromarray(np.asarray(skdata.astronaut())))
    save("coffee.jpg", Image.fromarray(np.asarray(skdata.coffee())))
    save("sign.jpg", _sign("OPEN", (768, 512), (90, 120, 160)))
    save("poster.jpg", _sign("SALE", (640, 640), (60, 140, 90)))
    face_a, face_b = _faces()
    save("face_a.jpg", face_a)
    save("face_b.jpg", face_b)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "task_type", "prompt", "ori_image", "target_image"])
    writer.writerows(ROWS)
    path = folder / "task.csv"
    path.write_text(buf.getvalue(), encoding="utf-8-sig")
    return path
