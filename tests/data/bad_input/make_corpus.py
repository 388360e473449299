"""Regenerates the bad-input corpus in this folder (deterministic; run from anywhere):

    python tests/data/bad_input/make_corpus.py

Big inputs (10000x10000) and symlinks are made at test time, not stored.
What each file is and what the runner must do with it: README.md beside this script.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
IMGS = HERE / "imgs"
HEADER = "index,task_type,prompt,ori_image,target_image"
LONG_PROMPT = " ".join(
    f"A lantern-lit alley number {i}, wet cobbles reflecting warm light." for i in range(80)
)[:5000]
# rows glued into one prompt by a stray quote look like this: far beyond any model's limit
GLUED_PROMPT = "".join(f"{i},t2i,一只在窗台上睡觉的猫 number {i},,\n" for i in range(400))
GLUED_PROMPT = GLUED_PROMPT.replace("\n", " ")[:9000]
EMOJI_CONTROL = "🦊 a fox 🌸 under cherry trees\x07 with a bell\x1b[31m, red\x00 text\x0b"


def _csv(
    name: str, text: str, *, encoding: str = "utf-8", bom: bool = False, newline: str = "\n"
) -> None:
    data = text.replace("\n", newline).encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    (HERE / name).write_bytes(data)


def _gradient(size: tuple[int, int]) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def images() -> None:
    IMGS.mkdir(exist_ok=True)
    _gradient((520, 520)).save(IMGS / "ok.png", optimize=True)
    rgba = _gradient((600, 520)).convert("RGBA")
    alpha = Image.linear_gradient("L").resize((600, 520))
    rgba.putalpha(alpha)
    rgba.save(IMGS / "rgba.png", optimize=True)
    _gradient((560, 520)).convert("CMYK").save(IMGS / "cmyk.jpg", quality=70)
    arr16 = (np.arange(520 * 520, dtype=np.uint32).reshape(520, 520) % 65536).astype(np.uint16)
    Image.fromarray(arr16).save(IMGS / "gray16.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(IMGS / "one_by_one.png")
    (IMGS / "not_an_image.png").write_bytes(b"<html><body>404 Not Found</body></html>\n")
    buf = io.BytesIO()
    _gradient((520, 520)).save(buf, "PNG")
    (IMGS / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    buf = io.BytesIO()
    _gradient((600, 520)).save(buf, "JPEG", quality=85)
    (IMGS / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    turned = _gradient((640, 520))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    turned.save(IMGS / "exif6.png", exif=exif.tobytes(), optimize=True)


def rows_file() -> None:
    """One task file with every row-level problem next to good rows (see README.md)."""
    rows = [
        '1,t2i,"a calm lake at dawn, mist over the water",,',
        "2,tie,make the sky purple,ok.png,",
        "3,txt2img,a typo in the task type,,",
        "4,t2i,,,",
        f'5,t2i,"{LONG_PROMPT}",,',
        f'6,t2i,"{EMOJI_CONTROL}",,',
        "7,tie,edit,../outside.png,",
        "8,tie,edit,/etc/passwd,",
        "9,tie,edit,link_out.png,",
        "10,tie,edit,missing.png,",
        "11,tie,edit,not_an_image.png,",
        "12,tie,edit,one_by_one.png,",
        "13,tie,make it brighter,rgba.png,",
        "14,tie,make it brighter,cmyk.jpg,",
        "15,tie,make it brighter,gray16.png,",
        "16,tie,edit,truncated.png,",
        "17,tie,make it brighter,huge.jpg,",
        "18,deepfake,,ok.png,missing_target.png",
        "19,vttie,change the word OPEN to SHUT,ok.png,",
        '20,t2i,"a sign that says ""OPEN"", with a comma",,',
        "21,TIE,upper-case task type,ok.png,",
        "22,tie,no source given,,",
        "23,tie,make it brighter,truncated.jpg,",
        "24,tie,make it brighter,exif6.png,",
        "25,tie,make it brighter,ok\x00.png,",
        '26,t2i,"a prompt that\nspans two lines",,',
        f'27,t2i,"{GLUED_PROMPT}",,',
        "28,t2i,a sign saying hi, and a dog,,",
    ]
    _csv("rows.csv", HEADER + "\n" + "\n".join(rows) + "\n", bom=True)


def format_files() -> None:
    """Accepted as they are: every row done."""
    body = "1,t2i,a red kite over a beach,,\n2,tie,make the sky purple,ok.png,\n"
    _csv("bom.csv", HEADER + "\n" + body, bom=True)
    _csv("no_bom.csv", HEADER + "\n" + body)
    _csv("crlf.csv", HEADER + "\n" + body, newline="\r\n")
    _csv(
        "extra_columns.csv",
        HEADER + ",note,api_key\n"
        "1,t2i,a red kite over a beach,,,first,sk-fromthetasklist0000\n"
        "2,tie,make the sky purple,ok.png,,second,sk-fromthetasklist0000\n",
    )
    _csv(
        "reordered_columns.csv",
        "prompt,index,target_image,task_type,ori_image\n"
        "a red kite over a beach,1,,t2i,\nmake the sky purple,2,,tie,ok.png\n",
    )


def whole_file_problems() -> None:
    """Refused as a whole: exit 2 and one line."""
    _csv("missing_column.csv", "index,task_type,prompt,ori_image\n1,t2i,a cat,\n")
    _csv("no_header.csv", "1,t2i,a cat,,\n2,t2i,a dog,,\n")
    _csv("gbk.csv", HEADER + "\n1,t2i,一只猫在窗台上睡觉,,\n", encoding="gbk")
    _csv("utf16.csv", HEADER + "\n1,t2i,a cat,,\n", encoding="utf-16")
    _csv("duplicate_index.csv", HEADER + "\n1,t2i,a cat,,\n2,t2i,a dog,,\n1,t2i,a cow,,\n")
    _csv("nonnumeric_index.csv", HEADER + "\n1,t2i,a cat,,\nseven,t2i,a dog,,\n")
    _csv("path_index.csv", HEADER + "\n../../evil,t2i,a cat,,\n")
    _csv("superscript_index.csv", HEADER + "\n²,t2i,a cat,,\n")
    _csv("long_index.csv", HEADER + "\n" + "9" * 300 + ",t2i,a cat,,\n")
    _csv("huge_index.csv", HEADER + "\n" + "9" * 5000 + ",t2i,a cat,,\n")
    _csv("empty.csv", "")
    _csv("header_only.csv", HEADER + "\n")
    # the issue's case on a small scale: a quote opened before row 10's prompt
    rows = [f"{i},t2i,一只在窗台上睡觉的猫 {i},," for i in range(1, 31)]
    rows[9] = '10,t2i,"一只在窗台上睡觉的猫 10,,'
    rows[19] = '20,vttie,"在墙上写上""开""字",ok.png,'  # where the runaway quote ends
    _csv("stray_quote.csv", HEADER + "\n" + "\n".join(rows) + "\n", bom=True)
    _csv("unclosed_quote.csv", HEADER + '\n1,t2i,a cat,,\n2,t2i,"a dog,,\n3,t2i,a cow,,\n')
    (HERE / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))


if __name__ == "__main__":
    images()
    rows_file()
    format_files()
    whole_file_problems()
    print(f"corpus written to {HERE}")
