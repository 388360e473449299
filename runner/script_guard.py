"""The script guard: the Python API refuses to run where a spawned worker would re-run it.

Face-swap workers are started with the "spawn" method: each one re-imports the user's script
as ``__mp_main__``. A script that calls ``runner.run`` at its top level, outside
``if __name__ == "__main__":``, would start a whole run in every worker (tracebacks, every
deepfake row failed). Two checks, each one clear line:

* in the parent, before anything starts: the script's own line that leads to the call, when
  it is not under the guard (read from the script's source);
* in a spawned child (the backstop, when the source cannot be read): refuse at once.

A script read from stdin (``python - <<EOF``) is refused too, guarded or not: a spawned
worker re-reads ``__main__`` from its file, and ``<stdin>`` is none.
"""

from __future__ import annotations

import ast
import multiprocessing
import sys
from pathlib import Path
from types import FrameType

GUARD = 'if __name__ == "__main__":'


class ScriptGuardMissing(SystemExit):
    """runner was called where a spawned worker would call it again (exit 1, one line)."""


STDIN_MESSAGE = (
    "error: runner cannot run from a script read from stdin (python -): its workers are "
    "started with 'spawn', which re-reads the script from its file; save the script to a "
    "file and run that"
)


def _message(where: str) -> str:
    return (
        f"{where}: runner's run() is called outside {GUARD!r}; face-swap workers re-import "
        f"the script, so put the call under {GUARD!r} (see the README)"
    )


def in_spawned_child() -> bool:
    """This process is a spawned worker still importing its parent's script. (parent_process()
    is None then, and ``__main__`` not yet replaced: multiprocessing sets both afterwards.)"""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    sides = [test.left, *test.comparators]
    names = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    return names and main and isinstance(test.ops[0], ast.Eq)


def _guarded_lines(source: str) -> list[tuple[int, int]]:
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.body:
            spans.append((node.body[0].lineno, node.body[-1].end_lineno or node.lineno))
    return spans


def _script_frame(frame: FrameType | None) -> FrameType | None:
    """The frame of ``__main__``'s top-level code on the stack, if any."""
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") in (
            "__main__",
            "__mp_main__",
        ):
            return frame
        frame = frame.f_back
    return None


def check_script_guard(frame: FrameType | None = None) -> None:
    """Raise ScriptGuardMissing (one line) when this call would be repeated by every worker,
    or when no worker could start (a script read from stdin)."""
    if getattr(sys.modules.get("__main__"), "__file__", None) == "<stdin>":
        raise ScriptGuardMissing(STDIN_MESSAGE)
    top = _script_frame(frame if frame is not None else sys._getframe(1))
    if top is None:
        return  # called from a function the script did not call at import (a notebook, -c)
    if top.f_globals.get("__name__") == "__mp_main__" or in_spawned_child():
        # a worker re-importing the script: leave at once, one line, no traceback (an
        # exception here would print one from multiprocessing's bootstrap)
        raise ScriptGuardMissing("error: " + _message("a spawned worker process"))
    path = top.f_globals.get("__file__")
    if not path or top.f_code.co_filename != path:
        return
    spec = top.f_globals.get("__spec__")
    if spec is not None and str(getattr(spec, "name", "")).endswith("__main__"):
        return  # python -m package (runner's own CLI): spawn does not re-run a __main__.py
    try:
        spans = _guarded_lines(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return  # the child's check still holds
    line = top.f_lineno
    if not any(lo <= line <= hi for lo, hi in spans):
        # SystemExit, not an exception: the script itself is wrong, nothing in it could
        # handle this, and the user reads one line instead of a traceback
        raise ScriptGuardMissing("error: " + _message(f"{path}:{line}"))
