"""The task file: read, validated, turned into ``Task`` models.

A bad file as a whole raises ``TaskFileError`` (one line). A bad row becomes a ``BadRow``
with its index and reason; the good rows go on.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from pydantic import BaseModel

from .errors import TaskFileError
from .settings import TaskType

REQUIRED_COLUMNS = ("index", "task_type", "prompt", "ori_image", "target_image")
TASK_TYPES: tuple[str, ...] = ("t2i", "tie", "vttie", "deepfake")


class Task(BaseModel, frozen=True):
    index: str
    task_type: TaskType
    prompt: str = ""
    ori_image: Path | None = None  # resolved, inside the images folder
    target_image: Path | None = None
    ori_name: str = ""  # as written in the task file, for reports
    target_name: str = ""


class BadRow(BaseModel, frozen=True):
    index: str
    task_type: str
    reason: str
    ori_name: str = ""  # kept so that submit can still fall back to the source image


class TaskList(BaseModel):
    path: Path
    images_dir: Path
    tasks: list[Task]
    bad: list[BadRow]
    order: list[str]  # every row's index, in file order (good and bad)
    types: dict[str, str]  # index -> task type as written


def _decode(raw: bytes, path: Path) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TaskFileError(f"{path}: UTF-16 text; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if b"\x00" in raw[:4096]:
            raise TaskFileError(f"{path}: not a CSV text file (binary data)") from None
        raise TaskFileError(
            f"{path}: not UTF-8 (byte {exc.start}); save it as UTF-8, e.g. "
            f"iconv -f GBK -t UTF-8"
        ) from None


def _resolve_image(name: str, images_dir: Path, what: str) -> tuple[Path | None, str | None]:
    """Return (path, None) or (None, reason). Nothing outside ``images_dir`` is ever read."""
    name = name.strip()
    if not name:
        return None, f"no {what}"
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return None, f"{what} {name!r} is an absolute path; give a name inside --images"
    root = images_dir.resolve()
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root):
        return None, f"{what} {name!r} points outside --images"
    if not candidate.exists():
        return None, f"{what} {name!r} not found in {images_dir}"
    if not candidate.is_file():
        return None, f"{what} {name!r} is not a file"
    if not os.access(candidate, os.R_OK):
        return None, f"{what} {name!r} is not readable"
    return candidate, None


def load_tasks(path: Path, images_dir: Path | None = None) -> TaskList:
    """Read and validate a task file. Images are checked for existence and place here;
    whether they decode is checked when they are prepared (in a worker thread)."""
    path = Path(path)
    if not path.exists():
        raise TaskFileError(f"{path}: no such task file")
    if not path.is_file():
        raise TaskFileError(f"{path}: not a file")
    images_dir = Path(images_dir) if images_dir is not None else path.parent / "imgs"
    text = _decode(path.read_bytes(), path)
    if not text.strip():
        raise TaskFileError(f"{path}: empty file, no header and no rows")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise TaskFileError(f"{path}: not a valid CSV ({exc})") from None
    header = [h.strip().lstrip("\ufeff").lower() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        if len(header) == 1:
            raise TaskFileError(
                f"{path}: not a CSV task file (header {rows[0]!r}); "
                f"expected columns {','.join(REQUIRED_COLUMNS)}"
            )
        if header[0].isdigit():
            raise TaskFileError(
                f"{path}: no header line (missing column(s) {', '.join(missing)}); the first "
                f"line must be {','.join(REQUIRED_COLUMNS)}"
            )
        raise TaskFileError(f"{path}: missing column(s) {', '.join(missing)}")
    col = {name: header.index(name) for name in REQUIRED_COLUMNS}
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    if not body:
        raise TaskFileError(f"{path}: no task rows under the header")

    tasks: list[Task] = []
    bad: list[BadRow] = []
    order: list[str] = []
    types: dict[str, str] = {}
    seen: dict[str, int] = {}
    for lineno, row in enumerate(body, start=2):
        cells = [row[col[c]].strip() if len(row) > col[c] else "" for c in REQUIRED_COLUMNS]
        index, task_type, prompt, ori, target = cells
        task_type = task_type.lower()
        prompt = row[col["prompt"]] if len(row) > col["prompt"] else ""
        prompt = "".join(ch for ch in prompt if ch.isprintable() or ch in "\n\t").strip()
        if not index:
            raise TaskFileError(f"{path}: line {lineno} has an empty index")
        if not (index.isascii() and index.isdigit()) or len(index.lstrip("0")) > 18:
            raise TaskFileError(
                f"{path}: line {lineno}: index {index[:30]!r} is not a whole number (ASCII "
                f"digits, at most 18); indexes name the output files"
            )
        index = str(int(index))
        if index in seen:
            raise TaskFileError(
                f"{path}: duplicate index {index} (lines {seen[index]} and {lineno})"
            )
        seen[index] = lineno
        order.append(index)
        types[index] = task_type

        def fail(reason: str, index: str = index, task_type: str = task_type, ori: str = ori):
            bad.append(BadRow(index=index, task_type=task_type, reason=reason, ori_name=ori))

        if task_type not in TASK_TYPES:
            fail(f"unknown task_type {task_type!r} (expected one of {', '.join(TASK_TYPES)})")
            continue
        if task_type in ("t2i", "tie", "vttie") and not prompt:
            fail("empty prompt")
            continue
        ori_path = target_path = None
        if task_type != "t2i":
            ori_path, why = _resolve_image(ori, images_dir, "ori_image")
            if why:
                fail(why)
                continue
        if task_type == "deepfake":
            target_path, why = _resolve_image(target, images_dir, "target_image")
            if why:
                fail(why)
                continue
        tasks.append(
            Task(
                index=index,
                task_type=task_type,  # type: ignore[arg-type]
                prompt=prompt,
                ori_image=ori_path,
                target_image=target_path,
                ori_name=ori,
                target_name=target,
            )
        )
    return TaskList(
        path=path, images_dir=images_dir, tasks=tasks, bad=bad, order=order, types=types
    )
