"""The output folder's files: atomic writes and the temp-file sweep.

A write goes to a temp file in the same folder, is fsynced, renamed, and the folder fsynced:
a reader never sees half a file; a crash leaves the old file or the new one, plus at most a
temp file that ``sweep_temp`` removes at the next start. The folder lock is in
``runner.store.lock``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
from pathlib import Path

import aiofiles
import aiofiles.os

from runner.errors import DiskFull

TEMP_MARK = ".part-"
# Local errors that will repeat for every row: stop the run rather than pay for rows that
# cannot be stored.
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class OutputUnwritable(DiskFull):
    """The output folder refuses writes (permissions, read-only file system): stop the run."""


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(tmp: Path, path: Path, exc: BaseException) -> None:
    """Remove a failed write's temp file; a full disk (or a size limit) becomes DiskFull."""
    try:
        os.unlink(tmp)
    except OSError:
        pass
    raise_local(exc, path)


def raise_local(exc: BaseException, path: Path) -> None:
    """A write error that every later write would repeat becomes the error that stops the run:
    no space (ENOSPC), a disk quota (EDQUOT), a file-size limit (EFBIG, ``ulimit -f``), a
    folder that refuses writes, or one that is gone."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFull(f"no space left on the device writing {path}") from None
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        raise DiskFull(
            f"{path} is larger than this process may write (a file-size limit: ulimit -f)"
        ) from None
    if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
        raise OutputUnwritable(f"cannot write {path}: {exc.strerror}") from None
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT and not path.parent.is_dir():
        raise OutputUnwritable(
            f"cannot write {path}: its folder {path.parent} is gone (deleted or moved)"
        ) from None


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
    """Remove temp files a killed run (or a full disk) left anywhere under ``folder``
    (imgs, candidates, thumbs, the learned quotas); returns how many."""
    if not folder.is_dir():
        return 0
    removed = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and TEMP_MARK in name:
                try:
                    os.unlink(os.path.join(root, name))
                    removed += 1
                except OSError:
                    pass
    return removed
