"""The output folder's lock: one run, submit or rejudge at a time in a folder.

``OutLock`` holds an flock on ``.runner.lock``; the OS drops it when the process dies, so a
killed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from runner.errors import RunnerError
from runner.store.files import OutputUnwritable

LOCK_NAME = ".runner.lock"


class FolderBusy(RunnerError):
    """Another process holds the output folder."""


class OutLock:
    """An exclusive lock on an output folder (flock on ``.runner.lock``).

    The OS drops it when the process dies, so a killed run never leaves a stale lock. The
    holder's pid is written into the file so a refused process can say who holds it.
    """

    def __init__(self, out_dir: Path, what: str = "run") -> None:
        self.out_dir = out_dir
        self.path = out_dir / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputUnwritable(f"cannot use {self.out_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderBusy(
                f"{self.out_dir} is in use by another runner ({holder}); wait for it to "
                "finish or use another --out"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({self.what})\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"
