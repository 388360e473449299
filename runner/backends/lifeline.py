"""Every process the runner starts dies with it, and leaves Ctrl-C to it.

Parent side (the runner): ``spawning(fn, ...)`` runs a call that may start a process (a
pool's submit, ``Process.start``) with SIGINT blocked in the calling thread. A spawned child
inherits that mask through fork and exec, so a Ctrl-C at the terminal, which reaches the
whole process group, never interrupts a worker while it imports (no worker traceback); the
runner alone decides when its workers stop. ``stop_processes`` ends workers: a short grace
for the idle ones to leave, then SIGTERM, then SIGKILL.

Child side (a worker): ``bind_to_parent()`` makes it exit when the runner dies, however it
dies (SIGKILL, the OOM killer): on Linux the kernel sends SIGKILL at the parent's death
(``PR_SET_PDEATHSIG`` through ctypes); everywhere a daemon thread exits the process once its
parent process id changes (re-parented to init or a subreaper). A worker's GPU memory goes
with its process.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_S = 0.5  # how often the fallback looks at the parent's pid
ORPHANED_EXIT = 70  # a worker's exit status when it left because its parent was gone
STOP_GRACE_S = 2.0  # idle workers leave on their own well within this


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread (and so in any process started from it)."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to inherit
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def spawning(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with SIGINT blocked: for calls that may start a process.

    multiprocessing's resource tracker is started first: starting it unblocks SIGINT in
    the calling thread (it blocks and unblocks it around its own spawn)."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    with sigint_blocked():
        return fn(*args, **kwargs)


def _set_pdeathsig() -> bool:
    """Ask the kernel for SIGKILL when the thread that started us ends (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while True:
        time.sleep(WATCH_S)
        if os.getppid() != parent:
            os._exit(ORPHANED_EXIT)


def bind_to_parent() -> None:
    """In a spawned worker: exit when the process that started it dies; ignore Ctrl-C.

    PR_SET_PDEATHSIG follows the parent *thread* that started the worker: the runner starts
    workers from its event loop's executor threads, which live as long as the process. The
    pid watch covers what the signal misses (other systems, a worker stuck with the GIL is
    the signal's to kill). Called first thing in the worker, before its models load.
    """
    with contextlib.suppress(ValueError):  # not the main thread: the mask still holds
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    expected = parent.pid if parent is not None and parent.pid else os.getppid()
    _set_pdeathsig()
    if os.getppid() != expected:  # the parent died before the signal was armed
        os._exit(ORPHANED_EXIT)
    threading.Thread(target=_watch, args=(expected,), name="runner-lifeline", daemon=True).start()


def stop_processes(procs: Iterable[Any], grace_s: float = STOP_GRACE_S) -> None:
    """Blocking: wait up to ``grace_s`` for ``procs`` (multiprocessing processes) to exit,
    then SIGTERM the rest, then SIGKILL what still lives. Never waits for a running job."""
    procs = [p for p in procs if p is not None]
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for kill in ("terminate", "kill"):
        alive = [p for p in procs if p.is_alive()]
        if not alive:
            return
        for p in alive:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                getattr(p, kill)()
        for p in alive:
            p.join(1.0)
