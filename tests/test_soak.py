"""Soak: 1000 rows against the emulator with 20 % of its answers faulty.

Every row done, every file a valid JPEG, nothing written twice, memory flat, and counted from
the service's billing ledger row by row: a row paid more than once only where the journal
says why (a task that FAILED or vanished; a sync call whose answer a reset lost, paid again
because the run allows it: ``repay_uncertain``). The emulator runs
in its own process (``python -m runner.emulator --faults 0.2``) so the runner's memory is
measured alone; the runner runs in this process (``run_all``) so its RSS can be sampled by the
observer at 250 and at 1000 finished rows.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    billed_per_row,
    emulator_get,
    emulator_process,
    make_image,
    paid_twice,
    row_prompt,
    write_tasks,
)
from PIL import Image

import runner.scheduling.finishing as scheduler_mod
from runner import run_all
from runner.settings import load_settings
from runner.store.files import TEMP_MARK
from runner.store.journal import replay

ROWS = 1000
FAULT_SHARE = 0.2
KEY = "sk-soak0123456789abcdef"
MiB = 1024 * 1024
MODELS = (
    "wanx2.1-t2i-turbo",
    "wanx2.1-t2i-plus",
    "wan2.2-t2i-flash",
    "wanx2.1-imageedit",
    "qwen-image-edit",
)


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (psutil is not a dependency)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# The emulator as `python -m runner.emulator` runs it, but with a cheap picture renderer: its
# textured placeholders cost ~80 ms of CPU each, 1000 of them would blow the time budget.
# Everything else (protocol, faults, signed URLs, corrupt/truncated bodies) is the real code.
_FAST_EMULATOR = """
import io, sys
from PIL import Image
import runner.emulator.state as state
_cache = {}
def render_t2i(width, height, prompt, seed):
    key = (width, height, seed % 5)
    if key not in _cache:
        buf = io.BytesIO()
        Image.new("RGB", (width, height), (40 * (seed % 5), 90, 160)).save(buf, "PNG")
        _cache[key] = buf.getvalue()
    return _cache[key]
def render_edit(source, prompt, seed, function):
    with Image.open(io.BytesIO(source)) as img:
        return render_t2i(img.width, img.height, prompt, seed)
state.render_t2i, state.render_edit = render_t2i, render_edit
from runner.emulator.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def faulty_emulator() -> Iterator[int]:
    args = ("--time-scale", "0", "--no-quotas", "--faults", str(FAULT_SHARE), "--seed", "11")
    with emulator_process(*args, program=["-c", _FAST_EMULATOR]) as port:
        yield port


class Sampler:
    """The run's observer: counts finished rows and samples RSS at the marks."""

    def __init__(self, marks: tuple[int, ...]) -> None:
        self.marks = set(marks)
        self.done = 0
        self.rss: dict[int, int] = {}

    def started(self, tasks: Any, scheduler: Any, banner: list[str]) -> None:
        self.rss[0] = rss_bytes()

    def row(self, result: Any) -> None:
        self.done += 1
        if self.done in self.marks:
            self.rss[self.done] = rss_bytes()

    def finished(self, summary: Any) -> None:
        pass


@pytest.mark.slow
async def test_soak_1000_rows_with_20_percent_faults(
    tmp_path: Path, faulty_emulator: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    port = faulty_emulator
    imgs = tmp_path / "imgs"
    sources = [make_image(imgs / f"src{k}.png", (560, 520)) for k in range(4)]
    rows: list[tuple[str, ...]] = []
    for i in range(1, ROWS + 1):
        if i % 10 == 0:
            text = row_prompt(i, "make the sky purple")
            rows.append((str(i), "tie", text, sources[i % 4].name, ""))
        elif i % 20 == 5:
            text = row_prompt(i, "change OPEN to SHUT")
            rows.append((str(i), "vttie", text, sources[i % 4].name, ""))
        else:
            rows.append((str(i), "t2i", row_prompt(i), "", ""))
    tasks = write_tasks(tmp_path / "task.csv", rows)
    settings = load_settings(
        api_key=KEY,
        base_url=f"http://127.0.0.1:{port}/api/v1",
        size="512*512",
        concurrency=48,
        poll_first_s=0.005,
        poll_qps=2000,
        backoff_max_s=0.05,
        retry_after_cap_s=1.0,  # the emulator's Retry-After: 1 is honoured
        judge={"enabled": False},
        models={
            "t2i": ["wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wan2.2-t2i-flash"],
            "tie": ["wanx2.1-imageedit"],
            "vttie": ["qwen-image-edit"],
        },
        candidates={"t2i": 1, "tie": 1, "vttie": 1},
        repay_uncertain=True,  # a reset of a sync call may have been billed: pay again
        jpeg_quality=85,
        quotas={m: {"submits_per_second": 400, "in_flight": 12} for m in MODELS},
    )
    writes: Counter[str] = Counter()
    real_write = scheduler_mod.write_atomic

    async def counting_write(path: Path, data: bytes) -> None:
        writes[str(path)] += 1
        await real_write(path, data)

    monkeypatch.setattr(scheduler_mod, "write_atomic", counting_write)
    sampler = Sampler((250, ROWS))
    out = tmp_path / "out"
    t0 = time.monotonic()
    summary = await run_all(tasks, out=out, settings=settings, observer=sampler)
    took = time.monotonic() - t0
    stats = emulator_get(port)
    injected = sum(stats["faults_injected"].values())

    # every row done
    assert summary.exit_code == 0, [(r.index, r.reason) for r in summary.failed][:10]
    assert sum(r.status == "done" for r in summary.rows) == ROWS
    # the faults were really there: about a fifth of all answers
    answered = stats["requests"]
    assert injected >= 0.15 * answered, (injected, answered, stats["faults_injected"])
    # every file a valid JPEG, and no other file
    names = sorted(p.name for p in (out / "imgs").iterdir())
    assert names == sorted(f"{i}.jpg" for i in range(1, ROWS + 1))
    for p in (out / "imgs").iterdir():
        with Image.open(p) as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB", p
    assert not [p for p in out.rglob("*") if TEMP_MARK in p.name]
    # nothing written twice: one write and one journaled result per row
    img_writes = {k: v for k, v in writes.items() if "/imgs/" in k}
    assert len(img_writes) == ROWS and set(img_writes.values()) == {1}
    journal = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    done = Counter(e["index"] for e in journal if e["ev"] == "done")
    assert len(done) == ROWS and set(done.values()) == {1}
    state = replay(out / "journal.jsonl")
    assert state.damaged_lines == 0 and all(r.done for r in state.rows.values())
    # paid once, but where the journal says why
    billed = emulator_get(port, "/_emulator/billed")
    assert len(billed_per_row(billed)) == ROWS
    repaid = Counter(
        str(e["index"])
        for e in journal
        if e["ev"] == "task_closed" and str(e.get("why", "")).startswith("uncertain")
    )
    extra = paid_twice(out, billed)
    assert all(n <= repaid[row] for row, n in extra.items()), (extra, repaid)
    # memory flat: what the last 750 rows added is small (the first 250 warm every cache up)
    grown = sampler.rss[ROWS] - sampler.rss[250]
    figures = {
        "rows": ROWS,
        "seconds": round(took, 1),
        "answers": answered,
        "faults_injected": injected,
        "faults_by_kind": stats["faults_injected"],
        "rss_mib": {k: round(v / MiB, 1) for k, v in sorted(sampler.rss.items())},
        "retries": summary.retries,
        "throttled": summary.throttled,
        "billed": len(billed),
        "repaid_uncertain": sum(repaid.values()),
    }
    print("SOAK", json.dumps(figures))
    assert grown < 32 * MiB, figures
    assert took < 90, figures
