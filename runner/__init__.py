"""runner: quota-aware batch image generation on DashScope, with local face swap.

In a notebook: ``summary = await runner.run_all("task.csv", concurrency=32)``.
In a script, under ``if __name__ == "__main__":`` (face-swap workers re-import the script):
``runner.run("task.csv")``.

The names below are loaded on first use. None of them may also be a submodule's name: the
import system sets a submodule as an attribute of the package, which would replace the
function (``runner.run`` once was both).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Loaded on first use: face-swap worker processes import runner.backends.faceswap and should not
# pay for the whole job stack (aiohttp, the client, the scheduler) at start-up.
_LAZY = {
    "run": "runner.job",
    "run_all": "runner.job",
    "RowResult": "runner.outcomes",
    "RunSummary": "runner.outcomes",
    "Settings": "runner.settings",
    "load_settings": "runner.settings",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
