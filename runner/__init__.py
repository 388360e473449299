"""runner: quota-aware batch image generation on DashScope, with local face swap.

In a notebook: ``summary = await runner.run_all("task.csv", concurrency=32)``.
In a script: ``runner.run("task.csv")``.
"""

from .run import run, run_all
from .scheduler import RowResult, RunSummary
from .settings import Settings, load_settings

__all__ = ["RowResult", "RunSummary", "Settings", "load_settings", "run", "run_all"]
