"""Row fingerprints: what a result was made from, so a changed row is never taken as done.

A row's fingerprint covers its task type, prompt, the names of its source images and their
content. The journal keeps it with every result; a rerun keeps a done row only when the
fingerprint still matches, and ``submit`` packs an image only under the row it was made for.
Whether a result came from the emulator is kept beside it (``emulated``), not inside it, so
that a run with a real key can say "placeholder" rather than "changed".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

_CHUNK = 1 << 20


class _Row(Protocol):
    index: str
    task_type: str
    prompt: str
    ori_image: Path | None
    target_image: Path | None
    ori_name: str
    target_name: str


def file_digest(path: Path | None, cache: dict[tuple[str, int, int], str] | None = None) -> str:
    """sha256 of a file's content ("" for no file, "missing" when it cannot be read).

    ``cache`` is keyed by (path, size, mtime): one run reads each source once even when
    several rows name it.
    """
    if path is None:
        return ""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    key = (str(path), st.st_size, st.st_mtime_ns)
    if cache is not None and key in cache:
        return cache[key]
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError:
        return "missing"
    digest = h.hexdigest()
    if cache is not None:
        cache[key] = digest
    return digest


def row_fingerprint(task: _Row, *, cache: dict[tuple[str, int, int], str] | None = None) -> str:
    """A short, stable digest of everything that decides what a row's image should be."""
    h = hashlib.sha256()
    for part in (
        task.task_type,
        task.prompt,
        task.ori_name,
        file_digest(task.ori_image, cache),
        task.target_name,
        file_digest(task.target_image, cache),
    ):
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")  # unit separator: ("ab", "c") and ("a", "bc") differ
    return h.hexdigest()[:24]


class _TaskList(Protocol):
    @property
    def tasks(self) -> Iterable[_Row]: ...
    @property
    def order(self) -> list[str]: ...


def fingerprints(
    tasklist: _TaskList, cache: dict[tuple[str, int, int], str] | None = None
) -> dict[str, str]:
    """index -> row fingerprint for every usable row (bad rows have none)."""
    cache = {} if cache is None else cache
    return {t.index: row_fingerprint(t, cache=cache) for t in tasklist.tasks}


def tasklist_fingerprint(tasklist: _TaskList, fps: dict[str, str] | None = None) -> str:
    """The digest of a whole task list: every row's index and fingerprint, in file order
    (an unusable row counts by its index alone)."""
    fps = fingerprints(tasklist) if fps is None else fps
    h = hashlib.sha256()
    for index in tasklist.order:
        h.update(f"{index}\x1f{fps.get(index, 'bad')}\x1e".encode())
    return h.hexdigest()[:24]
