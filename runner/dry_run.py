"""``--dry-run``: validate the task file and the inputs, print what the run would bill and how
long it would take at best; no request is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.cost import Estimate, PriceBook, check_budget, estimate_for, price_book
from runner.images import image_size
from runner.progress import duration
from runner.tasks import TaskList, load_tasks


def dry_run(console: Console, settings: Any, tasks: Path, images: Path | None) -> bool:
    """Print the dry run's report; True when every row is usable. Raises what the run would
    (the budget refused, a bad task file)."""
    tasklist = load_tasks(tasks, images)
    unreadable = _unreadable(tasklist)
    emulated = settings.key() is None
    unusable = {index for index, _ in unreadable}
    counts: dict[str, int] = {}
    for t in tasklist.tasks:
        if t.index not in unusable:  # a row that would fail before any request bills nothing
            counts[t.task_type] = counts.get(t.task_type, 0) + 1
    est = estimate_for(settings, counts, emulated=emulated)
    book = price_book(settings)
    console.print(
        f"dry run: {len(tasklist.order)} rows from {tasklist.path} "
        f"({len(tasklist.bad) + len(unreadable)} unusable), images from {tasklist.images_dir}; "
        "no request made",
        highlight=False,
    )
    for b in tasklist.bad:
        console.print(f"  row {b.index} ({b.task_type}, bad input): {b.reason}", highlight=False)
    for index, why in unreadable:
        console.print(f"  row {index} (bad input): {why}", highlight=False)
    console.print(_estimate_table(est, book))
    if est.local_rows:
        console.print(f"face swap (local): {est.local_rows} rows, nothing billed", highlight=False)
    _print_totals(console, settings, est, book, emulated)
    _print_judge(console, settings, counts, book)
    check_budget(settings, counts)  # the run would refuse: say so now
    return not tasklist.bad and not unreadable


def _unreadable(tasklist: TaskList) -> list[tuple[str, str]]:
    """(row, why) for each row naming a source image that cannot be read; each file once."""
    unreadable: list[tuple[str, str]] = []
    seen: dict[Path, bool] = {}
    for t in tasklist.tasks:
        for path in (t.ori_image, t.target_image):
            if path is None:
                continue
            if path not in seen:
                seen[path] = image_size(path) is not None
            if not seen[path]:
                unreadable.append((t.index, f"{path.name} is not a readable image"))
    return unreadable


def _estimate_table(est: Estimate, book: PriceBook) -> Table:
    table = Table(title=f"Estimate ({book.region} list prices)")
    for col in ("model", "rows", "images billed", "price / image", "est. cost"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for p in est.models:
        price = book.price(p.model)
        table.add_row(
            p.model,
            f"{p.rows:.0f}",
            f"{p.images:.0f}",
            "–" if price is None else f"{price:g}",
            book.money(p.cost),
        )
    return table


def _print_totals(
    console: Console, settings: Any, est: Estimate, book: PriceBook, emulated: bool
) -> None:
    """Images and cost in all, the quota-bound duration, and whether the budget would stop it."""
    total, _complete = est.cost
    images = sum(p.images for p in est.models)
    missing = sorted(p.model for p in est.models if p.cost is None)
    priced = len(missing) < len(est.models)
    line = f"total: {images:.0f} images billed, estimated cost " + (
        book.money(total) if priced else "unknown"
    )
    if missing:
        line += (
            f" ({'+ ' if priced else ''}{', '.join(missing)}: no price in [prices.{book.region}])"
        )
    console.print(line, highlight=False)
    latency = settings.expected_task_s * (settings.emulator.time_scale if emulated else 1.0)
    console.print(
        f"expected duration: at least {duration(est.duration_s)} for the API rows (quota bound: "
        f"the quotas in settings, {latency:g} s a task"
        + (", on the emulator" if emulated else "")
        + ")",
        highlight=False,
    )
    if settings.budget is not None and not missing and total > settings.budget:
        console.print(
            f"the budget {book.money(settings.budget)} would stop the run "
            "before every row is done",
            highlight=False,
        )


def _print_judge(console: Console, settings: Any, counts: dict[str, int], book: PriceBook) -> None:
    """The judge's calls, tokens, cost and pace for these rows (runner.backends.judge)."""
    from runner.backends.judge.usage import estimate

    j = estimate(settings, counts)
    if not j.enabled:
        console.print("judge: off (one candidate a row, [judge] enabled = false)", highlight=False)
        return
    cost = (
        f"est. cost at most {book.money(j.cost)}"
        if j.cost is not None
        else "price unknown (set [judge] input_price and output_price)"
    )
    console.print(
        f"judge {j.model}: about {j.calls} calls (SC and PQ per candidate, PQ per face swap), "
        f"about {j.input_size:,} input tokens and at most {j.output_size:,} answer "
        f"tokens, {cost}; at least {duration(j.minutes * 60)} at its pace",
        highlight=False,
    )
    console.print(f"judge texts and parser: {j.reference}", highlight=False)
