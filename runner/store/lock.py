"""The output folder's lock: one run, submit or rejudge at a time in a folder.

``OutLock`` holds an flock on the folder itself; the OS drops it when the process dies, so a
killed run never leaves a stale lock, and deleting a file cannot break it.
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
    """An exclusive lock on an output folder: an flock on the folder itself.

    The OS drops it when the process dies, so a killed run never leaves a stale lock, and no
    file can be deleted to break it (a lock on a file inside the folder would go with the
    file). The holder's pid is written into ``.runner.lock`` so that a refused process can say
    who holds the folder; that file is only a note.
    """

    def __init__(self, out_dir: Path, what: str = "run") -> None:
        self.out_dir = out_dir
        self.path = out_dir / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise OutputUnwritable(f"cannot use {self.out_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(
                f"{self.out_dir} is in use by another runner ({self._holder()}); wait for it "
                "to finish or use another --out"
            ) from None
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        try:
            self.path.write_text(f"pid {os.getpid()} ({self.what})\n", encoding="utf-8")
        except OSError:
            pass  # the note is for messages only; the lock is on the folder

    def release(self) -> None:
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def _holder(self) -> str:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace").strip()[:200]
        except OSError:
            text = ""
        return text or "pid unknown"

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
