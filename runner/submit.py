"""The competition zip: ``result.csv`` + ``imgs/<index>.jpg`` for every row, in task order.

A row without a result gets the best fallback (its ori_image for tie/vttie/deepfake, a
neutral grey picture for t2i) and is named in the report; ``strict`` refuses instead.
Emulator placeholders are refused unless ``allow_emulated``.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from pydantic import BaseModel, Field

from .errors import RunnerError
from .images import ImageProblem, encode_jpeg, open_image, placeholder_jpeg
from .journal import JOURNAL_NAME, replay
from .store import write_atomic_sync
from .tasks import load_tasks


class SubmitRefused(RunnerError):
    """The zip was not written; the message says why."""


class SubmitReport(BaseModel):
    zip_path: Path
    rows: int
    generated: int
    fallbacks: dict[str, str] = Field(default_factory=dict)  # index -> what was used and why
    emulated: list[str] = Field(default_factory=list)


def zip_name(team: str) -> str:
    return f"{team}_图片生成_result.zip"


def _valid_jpeg(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
        open_image(path)  # proves it decodes whole
    except (OSError, ImageProblem):
        return None
    return data if data[:3] == b"\xff\xd8\xff" else None


def pack(
    tasks: Path,
    out_dir: Path,
    team: str,
    *,
    images: Path | None = None,
    strict: bool = False,
    allow_emulated: bool = False,
) -> SubmitReport:
    tasklist = load_tasks(tasks, images)
    state = replay(out_dir / JOURNAL_NAME)
    by_index = {t.index: t for t in tasklist.tasks}
    bad_by_index = {b.index: b for b in tasklist.bad}
    files: dict[str, bytes] = {}
    fallbacks: dict[str, str] = {}
    emulated: list[str] = []
    for index in tasklist.order:
        row = state.rows.get(index)
        produced = out_dir / "imgs" / f"{index}.jpg"
        data = _valid_jpeg(produced) if row is not None and row.done else None
        if data is not None:
            files[index] = data
            if row is not None and row.emulated:
                emulated.append(index)
            continue
        task_type = tasklist.types.get(index, "")
        why = (row.failed_reason if row else None) or "no result"
        ori: Path | None = None
        if index in by_index:
            ori = by_index[index].ori_image
        elif index in bad_by_index and bad_by_index[index].ori_name:
            candidate = (tasklist.images_dir / bad_by_index[index].ori_name).resolve()
            if candidate.is_relative_to(tasklist.images_dir.resolve()) and candidate.is_file():
                ori = candidate
        if task_type != "t2i" and ori is not None:
            try:
                files[index] = encode_jpeg(open_image(ori), 95)
                fallbacks[index] = f"ori_image copied ({why})"
                continue
            except ImageProblem:
                pass
        files[index] = placeholder_jpeg()
        fallbacks[index] = f"grey placeholder ({why})"
    if emulated and not allow_emulated:
        raise SubmitRefused(
            f"{len(emulated)} image(s) are emulator placeholders (rows {_few(emulated)}); "
            "run with DASHSCOPE_API_KEY set, or pass --allow-emulated to pack them anyway"
        )
    if strict and fallbacks:
        raise SubmitRefused(
            f"{len(fallbacks)} row(s) have no result (rows {_few(list(fallbacks))}); "
            "without --strict they would get fallbacks"
        )
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    writer.writerow(["index", "gen_image"])
    writer.writerows([index, f"{index}.jpg"] for index in tasklist.order)
    zbuf = io.BytesIO()
    # JPEGs do not compress: store them; only the CSV is deflated
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("result.csv", csv_buf.getvalue().encode("utf-8-sig"), zipfile.ZIP_DEFLATED)
        for index in tasklist.order:
            zf.writestr(f"imgs/{index}.jpg", files[index])
    path = out_dir / zip_name(team)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic_sync(path, zbuf.getvalue())
    return SubmitReport(
        zip_path=path,
        rows=len(tasklist.order),
        generated=len(tasklist.order) - len(fallbacks),
        fallbacks=fallbacks,
        emulated=emulated,
    )


def _few(items: list[str], n: int = 8) -> str:
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")
