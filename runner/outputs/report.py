"""report.html under --out: one self-contained page (inline CSS/JS, no network) with a summary
on top and a row per task, thumbnails instead of full images so 1000 rows load fast.

Everything is linked relatively (thumbs/, imgs/, candidates/), so the folder can be zipped and
moved; input images outside the folder are linked relatively too, their thumbnails live inside.
The rows and facts come from runner.outputs.report_data, the thumbnails from
runner.outputs.thumbs, the HTML from runner.outputs.report_html.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import structlog

from runner.outputs.report_data import build_rows, overview
from runner.outputs.report_html import page
from runner.outputs.thumbs import Thumbs
from runner.store.files import write_atomic_sync
from runner.store.journal import JOURNAL_NAME, replay
from runner.tasks import load_tasks

log = structlog.get_logger(__name__)

__all__ = ["REPORT_NAME", "SUMMARY_NAME", "load_summary", "write_report"]

REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"  # written by runner.job at the end of a run


def load_summary(out_dir: Path) -> dict[str, Any]:
    """The last run's summary.json; {} when missing or unreadable."""
    path = out_dir / SUMMARY_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_report(
    out_dir: Path,
    tasks_path: Path,
    images: Path | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (atomically) and the thumbnails it needs; return its path.

    Blocking (thumbnails are made in a few threads): call it via ``asyncio.to_thread`` from a
    running loop.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasklist = load_tasks(Path(tasks_path), images)
    state = replay(out_dir / JOURNAL_NAME)
    if summary is None:
        summary = load_summary(out_dir)
    thumbs = Thumbs(out_dir, tasklist.images_dir)
    rows = build_rows(out_dir, tasklist, state, summary, thumbs)
    thumbs.make_all()
    html = page(rows, overview(rows, summary, state), out_dir)
    path = out_dir / REPORT_NAME
    write_atomic_sync(path, html.encode("utf-8"))
    log.info(
        "report.written",
        path=str(path),
        rows=len(rows),
        thumbs=len(thumbs.items),
        seconds=round(time.monotonic() - started, 2),
    )
    return path
