"""Bounded memory and time on hostile and huge inputs (issue 11).

    python -m bench.hostile_inputs [--rows 1000000] [--side 14000] [--json OUT.json]

Each case runs in a fresh child process so that its peak RSS (``ru_maxrss``) is its own:

- ``sources``: 12 rows of one <side>x<side> RGB PNG prepared at once (12 threads, as the
  scheduler's ``to_thread`` calls do), through ``prepare_source``.
- ``thumb_bomb``: a 20000x20000 PNG through the report's thumbnailer (refused from its header).
- ``thumb_large``: the <side>x<side> PNG through the thumbnailer (a legal picture, decoded).
- ``tasks``: a task file of <rows> rows shaped like the competition's (a quarter of each type,
  Chinese prompts, 100 distinct pictures), read by ``load_tasks``.

The inputs are written under bench/out/hostile/ (streamed, never held whole) and reused.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out" / "hostile"

_CHILD = {
    "sources": """
import resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from runner.images import prepare_source
src = Path(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
with ThreadPoolExecutor(12) as pool:
    done = list(pool.map(lambda _: prepare_source(src), range(12)))
wall = time.perf_counter() - t
assert all(d.width <= 3072 and d.height <= 3072 for d in done)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base, wall)
""",
    "thumb": """
import resource, sys, time
from pathlib import Path
from runner.outputs.thumbs import _make_thumb
src = Path(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
dst = src.with_name("thumb-" + src.stem + ".jpg")
dst.unlink(missing_ok=True)  # a newer thumbnail would be reused, not made
size = _make_thumb(src, dst)
wall = time.perf_counter() - t
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base, wall, size)
""",
    "tasks": """
import resource, sys, time
from pathlib import Path
import runner.tasks
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
tl = runner.tasks.load_tasks(Path(sys.argv[1]))
wall = time.perf_counter() - t
assert len(tl.order) == int(sys.argv[2]), len(tl.order)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base, wall, len(tl.tasks))
""",
}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, side: int, channels: int) -> Path:
    """A valid 8-bit PNG (grey or RGB) with a gradient, written row by row."""
    if path.exists():
        return path
    z = zlib.compressobj(1)
    parts = []
    ramp = bytes((x * 255 // max(side - 1, 1)) for x in range(side))
    for y in range(side):
        row = ramp if channels == 1 else _rgb_row(ramp, y, side)
        parts.append(z.compress(b"\x00" + row))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0 if channels == 1 else 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )
    return path


_ROWS: dict[int, bytes] = {}


def _rgb_row(ramp: bytes, y: int, side: int) -> bytes:
    # 64 distinct rows, reused: a picture with structure, written in seconds
    key = y * 64 // side
    if key not in _ROWS:
        shade = key * 4
        _ROWS[key] = bytes(v for x in range(side) for v in (ramp[x], shade, 255 - ramp[x]))
    return _ROWS[key]


def write_tasks(path: Path, rows: int) -> Path:
    if path.exists() and path.stat().st_size > rows * 20:
        return path
    from PIL import Image

    imgs = path.parent / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    names = [f"{i:032x}.jpg" for i in range(100)]
    for name in names:
        if not (imgs / name).exists():
            Image.new("RGB", (8, 8)).save(imgs / name)
    rng = random.Random(1)
    chars = "一棵令人惊叹的树从太空中的一颗小行星上" + "生长出来细节复杂自然光线照射呈现出超现实"
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["index", "task_type", "prompt", "ori_image", "target_image"])
        for i in range(1, rows + 1):
            kind = ("t2i", "tie", "vttie", "deepfake")[(i - 1) * 4 // rows]
            prompt = "".join(rng.choice(chars) for _ in range(36)) if kind != "deepfake" else ""
            ori = rng.choice(names) if kind != "t2i" else ""
            target = rng.choice(names) if kind == "deepfake" else ""
            w.writerow([i, kind, prompt, ori, target])
    return path


def child(kind: str, *args: str) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD[kind], *args], capture_output=True, text=True, timeout=3600
    )
    if res.returncode != 0:
        raise SystemExit(f"{kind}: {res.stderr.strip().splitlines()[-1:]}")
    # the last line is ours; log lines may come before it
    peak_kb, base_kb, wall, *rest = res.stdout.strip().splitlines()[-1].split(maxsplit=3)
    return {
        "peak_rss_mib": round(int(peak_kb) / 1024),
        "import_rss_mib": round(int(base_kb) / 1024),
        "seconds": round(float(wall), 2),
        "detail": rest[0].strip() if rest else "",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--side", type=int, default=14000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", choices=["sources", "thumb", "tasks"], action="append")
    args = ap.parse_args(argv)
    only = set(args.only or ["sources", "thumb", "tasks"])
    results: dict[str, Any] = {}
    if only & {"sources", "thumb"}:
        large = write_png(OUT / f"rgb{args.side}.png", args.side, 3)
    if "sources" in only:
        results["sources_12x"] = child("sources", str(large))
    if "thumb" in only:
        bomb = write_png(OUT / "bomb20000.png", 20000, 1)
        results["thumb_bomb_20000"] = child("thumb", str(bomb))
        results[f"thumb_{args.side}"] = child("thumb", str(large))
    if "tasks" in only:
        tasks = write_tasks(OUT / f"tasks{args.rows}" / "task.csv", args.rows)
        results[f"tasks_{args.rows}"] = child("tasks", str(tasks), str(args.rows))
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
