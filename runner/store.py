"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader never sees half a file; a crash leaves the old file or the new one, plus at most
a temp file that ``sweep_temp`` removes at the next start.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
from pathlib import Path

import aiofiles
import aiofiles.os

from .errors import DiskFull

TEMP_MARK = ".part-"


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(tmp: Path, path: Path, exc: BaseException) -> None:
    """Remove a failed write's temp file; a full disk becomes DiskFull."""
    try:
        os.unlink(tmp)
    except OSError:
        pass
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFull(f"no space left on the device writing {path}") from None


async def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the file is either absent, old, or whole and new."""
    tmp = _temp_name(path)
    try:
        async with aiofiles.open(tmp, "wb") as f:
            await f.write(data)
            await f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
        await aiofiles.os.replace(tmp, path)
        await asyncio.to_thread(_fsync_dir, path.parent)
    except BaseException as exc:  # cancelled or interrupted too: never leave the temp file
        _discard(tmp, path, exc)
        raise


def write_atomic_sync(path: Path, data: bytes) -> None:
    """The same, for code that is not in the event loop (submit, report)."""
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:  # cancelled or interrupted too: never leave the temp file
        _discard(tmp, path, exc)
        raise


def sweep_temp(folder: Path) -> int:
    """Remove temp files a killed run left behind; returns how many."""
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and TEMP_MARK in entry.name and entry.is_file():
            try:
                entry.unlink()
                removed += 1
            except OSError:
                pass
    return removed
