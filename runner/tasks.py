"""The task file: read, validated, turned into ``Task`` models.

A bad file as a whole raises ``TaskFileError`` (one line). A bad row becomes a ``BadRow``
with its index and reason; the good rows go on. The file is read as a stream (``iter_rows``):
a million rows never sit in memory as text, and each row keeps only what a task needs.

The parse is checked against the file's lines: a record that spans several lines (an unclosed
quote swallowing the rows after it) is refused with its line number when the swallowed lines
look like task rows, and is a bad row otherwise; a prompt far beyond every model's limit is a
bad row. No row is ever dropped without a word.
"""

from __future__ import annotations

import csv
import os
import re
import stat
from array import array
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TextIO

from pydantic import BaseModel

from runner.errors import TaskFileError
from runner.settings import TaskType

REQUIRED_COLUMNS = ("index", "task_type", "prompt", "ori_image", "target_image")
TASK_TYPES: tuple[str, ...] = ("t2i", "tie", "vttie", "deepfake")
# The longest prompt any listed model reads is 2000 characters (wan2.5); four times that is
# no prompt anyone wrote, but rows glued together by a stray quote.
FAR_PROMPT_CHARS = 8000
_SNIFF_BYTES = 4096
# No task line is this long; reading one whole would let a hostile file fill the memory.
MAX_LINE_CHARS = 1_000_000
# A field (a quoted one may span lines) is read up to this long, past the csv module's
# default of 131,072: a long prompt is then a bad row of its own, not a broken file.
MAX_FIELD_CHARS = MAX_LINE_CHARS
# A swallowed line that starts like a task row: "<index>,".
_ROW_LIKE = re.compile(r"\s*\d{1,18}\s*,")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PROMPT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TYPES = {t: t for t in TASK_TYPES}


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

    @cached_property
    def types(self) -> dict[str, str]:
        """index -> task type as written (lower case), for every row."""
        out = {t.index: str(t.task_type) for t in self.tasks}
        out.update((b.index, b.task_type) for b in self.bad)
        return out


_TASK_FIELDS = set(Task.model_fields)


def _open_text(path: Path) -> TextIO:
    """The task file as a UTF-8 text stream, after the checks its first bytes allow."""
    if not path.exists():
        raise TaskFileError(f"{path}: no such task file")
    if not path.is_file():
        raise TaskFileError(f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as exc:
        raise TaskFileError(f"{path}: cannot read ({exc.strerror})") from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TaskFileError(f"{path}: UTF-16 text; save it as UTF-8")
    if len(head) < _SNIFF_BYTES and not head.lstrip(b"\xef\xbb\xbf").strip():
        raise TaskFileError(f"{path}: empty file, no header and no rows")
    return open(path, encoding="utf-8-sig", newline="")  # the caller closes it


def _lines(text: TextIO, path: Path) -> Iterator[str]:
    """The file's lines, each read with a bound (csv counts them as line_num)."""
    n = 0
    while line := text.readline(MAX_LINE_CHARS):
        n += 1
        if len(line) == MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            raise TaskFileError(
                f"{path}: line {n} is longer than {MAX_LINE_CHARS:,} characters; "
                "is this a task file?"
            )
        yield line


def _not_utf8(path: Path, line: int) -> TaskFileError:
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\x00" in head:
        return TaskFileError(f"{path}: not a CSV text file (binary data)")
    return TaskFileError(
        f"{path}: not UTF-8 (near line {line}); save it as UTF-8, e.g. iconv -f GBK -t UTF-8"
    )


class _Resolver:
    """Image names to files inside ``images_dir``, each name looked up once per load (a
    thousand rows name the same few hundred pictures). Nothing outside is ever read."""

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self.root = images_dir.resolve()
        self._root_s = str(self.root)
        self._cache: dict[str, tuple[Path | None, str]] = {}
        self._names: dict[str, str] = {}

    def name(self, name: str) -> str:
        """One string object per distinct name, however many rows repeat it."""
        if len(self._names) < 1_000_000:
            return self._names.setdefault(name, name)
        return name

    def __call__(self, name: str, what: str) -> tuple[Path | None, str | None]:
        hit = self._cache.get(name)
        if hit is None:
            hit = self._cache[name] = self._resolve(name)
        path, why = hit
        return (path, None) if path is not None else (None, f"{what} {why}")

    def _resolve(self, name: str) -> tuple[Path | None, str]:
        if not name:
            return None, ""  # the caller says "no <what>"
        shown = repr(name[:80])
        control = _CONTROL.search(name)
        if control:
            return None, f"{shown} has a control character ({control.group()!r}) in its name"
        if os.path.isabs(name) or name.startswith(("/", "\\")):
            return None, f"{shown} is an absolute path; give a name inside --images"
        try:
            real = os.path.realpath(os.path.join(self._root_s, name))
            if os.path.commonpath((real, self._root_s)) != self._root_s:
                return None, f"{shown} points outside --images"
            st = os.stat(real)
        except FileNotFoundError:
            return None, f"{shown} not found in {self.images_dir}"
        except (OSError, ValueError) as exc:  # a name too long, a loop of links
            return None, f"{shown} cannot be looked up ({getattr(exc, 'strerror', None) or exc})"
        if not stat.S_ISREG(st.st_mode):
            return None, f"{shown} is not a file"
        if not os.access(real, os.R_OK):
            return None, f"{shown} is not readable"
        return Path(real), ""


def _clean_prompt(prompt: str) -> str:
    """The prompt as written, less its surrounding whitespace and any control character
    (C0/C1, which no request carries meaningfully; tab and line breaks stay). Everything
    else is kept: ZWJ emoji sequences, soft hyphens, direction marks, variation selectors,
    non-breaking and ideographic spaces, private-use and newer-than-Python characters."""
    if _PROMPT_CONTROL.search(prompt):  # the common case skips the rewrite
        prompt = _PROMPT_CONTROL.sub("", prompt)
    return prompt.strip()


def _header(rows: Iterator[list[str]], path: Path) -> tuple[dict[str, int], int]:
    first = next(rows, None)
    if first is None:
        raise TaskFileError(f"{path}: empty file, no header and no rows")
    header = [h.strip().lstrip("\ufeff").lower() for h in first]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        if len(header) == 1:
            raise TaskFileError(
                f"{path}: not a CSV task file (header {first[:3]!r}); "
                f"expected columns {','.join(REQUIRED_COLUMNS)}"
            )
        if header[0].isdigit():
            raise TaskFileError(
                f"{path}: no header line (missing column(s) {', '.join(missing)}); the first "
                f"line must be {','.join(REQUIRED_COLUMNS)}"
            )
        raise TaskFileError(f"{path}: missing column(s) {', '.join(missing)}")
    return {name: header.index(name) for name in REQUIRED_COLUMNS}, len(header)


def _spanning(row: list[str], start: int, end: int, path: Path, names: list[str]) -> str:
    """A record whose fields hold line breaks: refuse the file when the swallowed lines are
    task rows (an unclosed quote); otherwise the reason this one row is refused."""
    swallowed = 0
    field = ""
    for i, cell in enumerate(row):
        if "\n" in cell or "\r" in cell:
            field = field or (names[i] if i < len(names) else f"column {i + 1}")
            swallowed += sum(1 for ln in cell.splitlines()[1:] if _ROW_LIKE.match(ln))
    if swallowed:
        raise TaskFileError(
            f"{path}: line {start}: a quote opened in this row is not closed where the row "
            f"ends, so it swallows lines {start + 1}-{end} ({swallowed} of them task rows); "
            f'close it, or double a quote inside a quoted field ("")'
        )
    lines = f"lines {start}-{end}" if end > start else f"line {start} and the end of the file"
    return f"{field} spans {lines}; put each task on one line (an unclosed quote?)"


def iter_rows(path: Path, images_dir: Path | None = None) -> Iterator[Task | BadRow]:
    """Every row of the task file, in file order, as a Task or a BadRow; streamed, so that
    the first rows can be worked on while the rest is read. Whole-file problems raise
    TaskFileError (possibly after some rows were given: a duplicate index, a stray quote)."""
    path = Path(path)
    images_dir = Path(images_dir) if images_dir is not None else path.parent / "imgs"
    resolve = _Resolver(images_dir)
    seen: set[str] = set()
    order: list[str] = []
    lines = array("L")  # each row's first line, for the duplicate message only
    # the limit is the csv module's, for the whole process: only ever raised
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))
    with _open_text(path) as text:
        reader = csv.reader(_lines(text, path), strict=True)
        start = 1
        try:
            col, width = _header(reader, path)
            names = list(col)
            while True:
                start = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    break
                if not any(cell.strip() for cell in row):
                    continue
                index = row[col["index"]].strip() if len(row) > col["index"] else ""
                index = _check_index(index, start, path)
                if index in seen:
                    first = lines[order.index(index)]
                    raise TaskFileError(
                        f"{path}: duplicate index {index} (lines {first} and {start})"
                    )
                seen.add(index)
                order.append(index)
                lines.append(start)
                if len(row) > width:
                    yield _too_many(row, width, index, col)
                else:
                    yield _row(row, col, index, (start, reader.line_num), path, names, resolve)
        except csv.Error as exc:
            raise _csv_error(path, start, reader.line_num, exc) from None
        except UnicodeDecodeError:
            raise _not_utf8(path, reader.line_num + 1) from None
    if not order:
        raise TaskFileError(f"{path}: no task rows under the header")


def _csv_error(path: Path, start: int, end: int, exc: csv.Error) -> TaskFileError:
    fix = 'close it, or double a quote inside a quoted field ("")'
    if "unexpected end of data" in str(exc):
        return TaskFileError(
            f"{path}: line {start}: a quote opened in this row is never closed, it runs to "
            f"the end of the file (line {end}); {fix}"
        )
    to = f" (to line {end})" if end > start else ""
    if "field larger than field limit" in str(exc):
        return TaskFileError(
            f"{path}: line {start}{to}: a field runs past {MAX_FIELD_CHARS:,} characters; "
            f"a quote opened in this row is not closed where it should be: {fix}"
        )
    return TaskFileError(
        f"{path}: line {start}{to}: not valid CSV ({exc}); a quote opened in a field must "
        f"close before the next comma or line end: {fix}"
    )


def _check_index(index: str, line: int, path: Path) -> str:
    if not index:
        raise TaskFileError(f"{path}: line {line} has an empty index")
    if not (index.isascii() and index.isdigit()) or len(index.lstrip("0")) > 18:
        raise TaskFileError(
            f"{path}: line {line}: index {index[:30]!r} is not a whole number (ASCII "
            f"digits, at most 18); indexes name the output files"
        )
    return index if index[0] != "0" else str(int(index))


def _too_many(row: list[str], width: int, index: str, col: dict[str, int]) -> BadRow:
    """More fields than the header names: an unquoted comma split a field, and what follows
    it landed in the wrong columns (a t2i prompt cut short, its tail in ori_image)."""
    i = col["task_type"]
    return BadRow(
        index=index,
        task_type=row[i].strip().lower() if len(row) > i else "",
        reason=f"has {len(row)} fields, the header {width}; a prompt that holds a comma must "
        'be quoted ("...")',
    )


def _row(
    row: list[str],
    col: dict[str, int],
    index: str,
    lines: tuple[int, int],
    path: Path,
    names: list[str],
    resolve: _Resolver,
) -> Task | BadRow:
    cells = [row[i] if len(row) > i else "" for i in col.values()]
    _, task_type, raw_prompt, ori, target = cells
    task_type = task_type.strip().lower()
    task_type = _TYPES.get(task_type, task_type)  # the shared constant, not a copy per row
    ori, target = resolve.name(ori.strip()), resolve.name(target.strip())

    def bad(reason: str) -> BadRow:
        return BadRow(index=index, task_type=task_type, reason=reason, ori_name=ori)

    start, end = lines
    if end > start or any("\n" in c or "\r" in c for c in row):
        return bad(_spanning(row, start, end, path, names))
    if task_type not in TASK_TYPES:
        return bad(f"unknown task_type {task_type!r} (expected one of {', '.join(TASK_TYPES)})")
    prompt = _clean_prompt(raw_prompt)
    if len(prompt) > FAR_PROMPT_CHARS:
        return bad(
            f"prompt is {len(prompt)} characters, far beyond any model's limit (2000): "
            f"one up to {FAR_PROMPT_CHARS:,} is cut to its model's limit, a longer one is "
            "refused; shorten it (or were rows joined by a stray quote?)"
        )
    if task_type in ("t2i", "tie", "vttie") and not prompt:
        return bad("empty prompt")
    ori_path = target_path = None
    if task_type != "t2i":
        if not ori:
            return bad("no ori_image")
        ori_path, why = resolve(ori, "ori_image")
        if why:
            return bad(why)
    if task_type == "deepfake":
        if not target:
            return bad("no target_image")
        target_path, why = resolve(target, "target_image")
        if why:
            return bad(why)
    task = Task(
        index=index,
        task_type=task_type,  # type: ignore[arg-type]
        prompt=prompt,
        ori_image=ori_path,
        target_image=target_path,
        ori_name=ori,
        target_name=target,
    )
    # Validation (fast, in pydantic-core) gives each instance its own 7-name set: ~470 bytes
    # a row, half of a Task's size. Every Task here sets every field, so one set serves all.
    object.__setattr__(task, "__pydantic_fields_set__", _TASK_FIELDS)
    return task


def load_tasks(path: Path, images_dir: Path | None = None) -> TaskList:
    """Read and validate a whole task file. Images are checked for existence and place here;
    whether they decode is checked when they are prepared (in a worker thread)."""
    path = Path(path)
    images_dir = Path(images_dir) if images_dir is not None else path.parent / "imgs"
    tasks: list[Task] = []
    bad: list[BadRow] = []
    order: list[str] = []
    for item in iter_rows(path, images_dir):
        order.append(item.index)
        (tasks if isinstance(item, Task) else bad).append(item)  # type: ignore[arg-type]
    # validated row by row above; a second pass over a million models would double the cost
    return TaskList.model_construct(
        path=path, images_dir=images_dir, tasks=tasks, bad=bad, order=order
    )
