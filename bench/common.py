"""What every benchmark shares: the time-scaled world, the emulator in its own process,
the workload, the quota-bound lower bound, and process measurements."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from runner.emulator import EmulatorConfig
from runner.settings import JudgeSettings, Quota, Settings

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
COMPETITION = Path(os.environ.get("BENCH_COMPETITION", ROOT.parent / "shared" / "competition"))

# Emulator latencies and quota windows, and the runner's timings, x this. Not 1/20: the CPU
# work per row (image decode/encode, face swap) does not scale, and at 1/20 it needs more
# than this box's 2 cores (BENCHMARKS.md).
SCALE = 1 / 5
BASELINE_SCALE = 1 / 20  # the baselines wait on quotas and latency, CPU-light: faster is fine
SEED = 7
LATENCY_S = (5.0, 15.0)  # every model's latency, real seconds (uniform), as in the issue
BENCH_KEY = "sk-bench-emulator"

# The models these benchmarks route to (the Beijing defaults before the 2026 catalogue,
# bench/catalogue.py measures those after); a group is the set of models a task type may
# use; task types that share a model are one group.
T2I_MODELS = ("wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wan2.2-t2i-flash")
EDIT_MODELS = ("wanx2.1-imageedit", "qwen-image-edit")
GROUPS: dict[str, tuple[str, ...]] = {"t2i": T2I_MODELS, "tie+vttie": EDIT_MODELS}
# A quota the emulator keeps to itself (not the published 2): "learned" runs start from the
# runner's 2 and must find it from 429s; "known" runs are told it.
HIDDEN_QUOTAS: dict[str, int] = {"wan2.2-t2i-flash": 3}


# --------------------------------------------------------------------------- the emulator


def emulator_config(
    scale: float = SCALE,
    *,
    seed: int = SEED,
    quotas: bool = True,
    latency: bool = True,
    profile: str | None = None,
    timestamps: bool = True,
    polls_scaled: bool = False,
) -> EmulatorConfig:
    """The emulator's quotas, latencies uniform in 5-15 s (or ``profile``, e.g.
    ``lognormal:8:60``, for every model) x ``scale``; ``timestamps``: whether poll answers
    carry the service's own times. Quota windows stay real seconds (2 submits in any
    second, 20 polls in any second): the runner runs with its default settings, so a
    scaled world is one where tasks are shorter, and its budgets relatively scarcer.
    ``polls_scaled``: the account's query budget scales with the latencies (20 / scale
    polls a second), so each task gets as many looks as in real time; ``runner_settings``
    gives the runner the same share of it as by default (15 of 20)."""
    base = EmulatorConfig(
        time_scale=scale if latency else 0.0,
        seed=seed,
        quotas_enabled=quotas,
        scale_windows=False,
        latency=profile,
        timestamps=timestamps,
    )
    if polls_scaled and scale > 0:
        base = base.model_copy(update={"poll_qps": base.poll_qps / scale})
    models = dict(base.models)
    for name in (*T2I_MODELS, *EDIT_MODELS):
        models[name] = models[name].model_copy(update={"latency_s": LATENCY_S})
    for name, slots in HIDDEN_QUOTAS.items():
        models[name] = models[name].model_copy(
            update={"max_in_flight": slots, "quota_published": False}
        )
    return base.model_copy(update={"models": models})


def _fast_render(tiny: bool = False) -> None:
    """In the emulator's process: one placeholder per size instead of a fresh render per
    result. The emulator's rendering (about 0.15 s of CPU per 1024x1024 PNG) is a cost of
    the emulator, not of DashScope; on a 2-core box it would take the runner's CPU.
    ``tiny``: every result is one 64x64 PNG (the overhead benchmark: no image work)."""
    import runner.emulator.state as state
    from runner.emulator.images import probe, render_t2i

    cache: dict[tuple[int, int], bytes] = {}

    def t2i(width: int, height: int, prompt: str, seed: int) -> bytes:
        key = (64, 64) if tiny else (width, height)
        if key not in cache:
            cache[key] = render_t2i(*key, "benchmark placeholder", 0)
        return cache[key]

    def edit(source: bytes, prompt: str, seed: int, function: str) -> bytes:
        info = probe(source)
        return t2i(info.width, info.height, prompt, seed)

    state.render_t2i = t2i  # type: ignore[assignment]
    state.render_edit = edit  # type: ignore[assignment]


def _record_endings() -> dict[str, list[Any]]:
    """In the emulator's process: for every task, when the first answer saying SUCCEEDED
    left, against when the task really ended: the detection delay, on the service's side,
    whether or not the answers carry timestamps. {task_id: [model, duration_s, delay_s]}."""
    import runner.emulator.routes_tasks as routes

    original = routes.task_output
    seen: dict[str, list[Any]] = {}

    def task_output(task: Any, timestamps: bool = True) -> Any:
        if task.status == "SUCCEEDED" and task.end_wall is not None and task.task_id not in seen:
            seen[task.task_id] = [
                task.model,
                round(task.end_wall - task.submit_wall, 4),
                round(time.time() - task.end_wall, 4),
            ]
        return original(task, timestamps)

    routes.task_output = task_output  # type: ignore[assignment]
    return seen


def _serve(config_json: str, render: str, conn: Connection, record: str = "") -> None:
    import logging

    import structlog

    from runner.emulator import Emulator

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if render != "real":
        _fast_render(tiny=render == "tiny")
    endings = _record_endings() if record else None
    config = EmulatorConfig.model_validate_json(config_json)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        async with Emulator(config) as emu:
            conn.send(emu.port)
            loop.add_reader(conn.fileno(), stop.set)
            await stop.wait()

    asyncio.run(main())
    if endings is not None:
        Path(record).write_text(json.dumps(endings))


class EmulatorProcess:
    """The emulator in a process of its own (its CPU is not the runner's); ``with``."""

    def __init__(
        self, config: EmulatorConfig, *, render: str = "cached", record: Path | None = None
    ) -> None:
        self.config = config
        self.render = render  # "real", "cached" (one PNG per size) or "tiny" (64x64)
        self.record = record  # where the emulator writes each task's ending (_record_endings)
        self.port = 0
        self._proc: Any = None
        self._conn: Connection | None = None

    def __enter__(self) -> EmulatorProcess:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve,
            args=(self.config.model_dump_json(), self.render, child, str(self.record or "")),
            daemon=True,
            name="bench-emulator",
        )
        self._proc.start()
        if not parent.poll(60):
            self._proc.terminate()
            raise RuntimeError("the emulator process did not start")
        self.port = int(parent.recv())
        self._conn = parent
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            try:
                self._conn.send("stop")
            except OSError:
                pass
        if self._proc is not None:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/api/v1"

    def _admin(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(self.root_url + "/_emulator/" + path, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return dict(self._admin("stats"))

    def reset_stats(self) -> None:
        self._admin("stats/reset", "POST")

    def endings(self) -> dict[str, list[Any]]:
        """After the ``with``: {task_id: [model, duration_s, detection_delay_s]}."""
        if self.record is None or not self.record.is_file():
            return {}
        return dict(json.loads(self.record.read_text()))

    def cpu_s(self) -> float:
        """CPU seconds the emulator process used (from /proc)."""
        return proc_cpu_s(self._proc.pid) if self._proc is not None else 0.0


def proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --------------------------------------------------------------------------- the workload


@dataclass
class Workload:
    tasks: Path
    images: Path
    rows: dict[str, int]  # per task type
    source: str  # where the rows came from
    synthetic_sources: int = 0  # edit sources made up because the real one is missing
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _read_csv(path: Path) -> list[dict[str, str]]:
    text = path.read_bytes().decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _write_csv(path: Path, rows: Iterable[dict[str, str]]) -> None:
    cols = ["index", "task_type", "prompt", "ori_image", "target_image"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    path.write_bytes(buf.getvalue().encode("utf-8-sig"))


def build_workload(
    work: Path = OUT / "work", *, deepfake: bool = True, competition: Path = COMPETITION
) -> Workload:
    """The 1000-row task list with every row runnable.

    From ``competition/task.csv`` when present: the real rows; an edit source missing from
    ``imgs/`` is replaced by a copy of a present source of the same task type (cycled), so
    the row can run. Otherwise a synthetic list with the same mix (250 of each type).
    ``deepfake=False`` leaves the deepfake rows out (no face-swap backend)."""
    imgs = work / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    task_csv = competition / "task.csv"
    notes: list[str] = []
    made = 0
    if task_csv.is_file():
        rows = _read_csv(task_csv)
        src_imgs = competition / "imgs"
        present = {p.name for p in src_imgs.iterdir()} if src_imgs.is_dir() else set()
        by_type: dict[str, list[str]] = {}
        for r in rows:
            if r["task_type"] in ("tie", "vttie") and r["ori_image"] in present:
                by_type.setdefault(r["task_type"], []).append(r["ori_image"])
        turn: dict[str, int] = {}
        for r in rows:
            for col in ("ori_image", "target_image"):
                name = r.get(col, "").strip()
                if not name:
                    continue
                if name in present:
                    _link_or_copy(src_imgs / name, imgs / name)
                elif r["task_type"] in ("tie", "vttie") and col == "ori_image":
                    pool = by_type.get(r["task_type"]) or sorted(
                        n for v in by_type.values() for n in v
                    )
                    k = turn.get(r["task_type"], 0)
                    turn[r["task_type"]] = k + 1
                    if not (imgs / name).exists():
                        shutil.copyfile(src_imgs / pool[k % len(pool)], imgs / name)
                    made += 1
        source = str(task_csv)
        notes.append(
            f"{made} edit rows name a source missing from competition/imgs; each got a copy "
            "of a present source of the same task type (cycled) so that every row runs"
        )
    else:
        rows = _synthetic_rows(imgs)
        made = sum(1 for r in rows if r["task_type"] in ("tie", "vttie"))
        source = "synthetic (no competition/task.csv): 250 rows of each type"
    if not deepfake:
        rows = [r for r in rows if r["task_type"] != "deepfake"]
        notes.append("deepfake rows left out: the face-swap pool is not available")
    out_csv = work / ("task.csv" if deepfake else "task_api.csv")
    _write_csv(out_csv, rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["task_type"]] = counts.get(r["task_type"], 0) + 1
    return Workload(out_csv, imgs, counts, source, made, notes)


def _synthetic_rows(imgs: Path) -> list[dict[str, str]]:
    from PIL import Image

    rng = random.Random(SEED)
    rows: list[dict[str, str]] = []
    sizes = [(500, 500), (1024, 1024), (1920, 1080), (640, 960), (800, 600)]
    for i in range(1, 1001):
        kind = ("t2i", "tie", "vttie", "deepfake")[(i - 1) // 250]
        row = {"index": str(i), "task_type": kind, "prompt": f"benchmark prompt {i}"}
        if kind in ("tie", "vttie"):
            name = f"src{i}.png"
            if not (imgs / name).exists():
                w, h = sizes[rng.randrange(len(sizes))]
                Image.linear_gradient("L").resize((w, h)).convert("RGB").save(imgs / name)
            row["ori_image"] = name
        if kind == "deepfake":
            for col in ("ori_image", "target_image"):
                name = f"face{i}{col[0]}.jpg"
                if not (imgs / name).exists():
                    Image.linear_gradient("L").resize((250, 250)).convert("RGB").save(imgs / name)
                row[col] = name
        rows.append(row)
    return rows


def faceswap_available() -> tuple[bool, str]:
    try:
        from runner.backends.faceswap import FaceSwapPool  # noqa: F401
    except Exception as exc:  # ImportError or a broken optional stack
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


# --------------------------------------------------------------------------- lower bound


def drawn_latencies(config: EmulatorConfig, model: str, count: int) -> list[float]:
    """The latencies (scaled seconds) the emulator drew for a model's first ``count``
    admitted tasks: it draws them from ``Random(f"{seed}:{model}:{seq}")``, from the
    configured profile or else the model's own uniform range."""
    span = config.models[model].latency_s
    profile = config.latency_profile(model)
    out = []
    for seq in range(count):
        rng = random.Random(f"{config.seed}:{model}:{seq}")
        raw = profile.draw(rng) if profile is not None else rng.uniform(*span)
        out.append(raw * config.time_scale)
    return out


def lower_bound(
    stats: dict[str, Any],
    config: EmulatorConfig,
    groups: dict[str, tuple[str, ...]] = GROUPS,
) -> dict[str, Any]:
    """The quota-bound makespan floor of what the emulator actually ran, seconds on its
    (scaled) clock. Per group of models a task type may use: its tasks over the group's
    best steady pace, each model giving min(submit rate, slots / its mean task time) (a
    model with no in-flight limit: its submit rate); and no run ends before its longest
    task. The largest of all. Ramp-up and the tail are ignored: 1.00 is out of reach."""
    window = config.time_scale if config.scale_windows else 1.0
    parts: dict[str, Any] = {}
    best = 0.0
    for name, models in groups.items():
        count = {m: stats["submits"].get(m, 0) + stats["sync_calls"].get(m, 0) for m in models}
        n = sum(count.values())
        pace = 0.0
        work = 0.0
        longest = 0.0
        for m in models:
            spec = config.models[m]
            drawn = drawn_latencies(config, m, max(count[m], 1))
            mean = sum(drawn) / len(drawn)
            if count[m]:
                work += sum(drawn)
                longest = max(longest, max(drawn))
            rate = (spec.submits_per_s or 0) / window
            slots = spec.max_in_flight
            by_slots = slots / mean if slots and mean > 0 else float("inf")
            pace += min(rate or float("inf"), by_slots)
        pace_bound = n / pace if pace and pace != float("inf") else 0.0
        parts[name] = {
            "tasks": n,
            "task_time_s": round(work, 3),
            "tasks_per_s": round(pace, 4) if pace != float("inf") else None,
            "pace_bound_s": round(pace_bound, 3),
            "longest_task_s": round(longest, 3),
        }
        best = max(best, pace_bound, longest)
    return {"bound_s": round(best, 3), "groups": parts}


def make_quota(
    submits_per_second: float,
    in_flight: int | None,
    *,
    learn: bool = False,
    max_in_flight: int = 8,
) -> Quota:
    """A runner quota; ``in_flight`` None (no in-flight limit) is built unchecked while
    ``runner.settings.Quota`` does not accept it yet."""
    try:
        return Quota(
            submits_per_second=submits_per_second,
            in_flight=in_flight,  # type: ignore[arg-type]
            learn=learn,
            max_in_flight=max_in_flight,
        )
    except ValueError:
        return Quota.model_construct(
            submits_per_second=submits_per_second,
            in_flight=in_flight,
            learn=learn,
            max_in_flight=max_in_flight,
        )


_ACCOUNT_QPS = EmulatorConfig().poll_qps  # the documented 20 task queries a second


def runner_settings(
    base_url: str, config: EmulatorConfig, mode: str, scale: float, **extra: Any
) -> Settings:
    """The runner's default settings against ``config``; if its quota windows are scaled,
    every rate x 1/scale and every wait x scale with them (nothing else changed).

    ``known``: every quota as the emulator enforces it (sync qwen-image-edit: no in-flight
    limit). ``learned``: the published ones; the emulator's hidden ones (``HIDDEN_QUOTAS``)
    start from the runner's default for an unpublished model and are learned from 429s.
    """
    defaults = Settings()
    window = scale if config.scale_windows else 1.0
    waits = window
    quotas: dict[str, Quota] = {}
    for name in (*T2I_MODELS, *EDIT_MODELS):
        spec = config.models[name]
        rate = (spec.submits_per_s or 2.0) / window
        if mode == "known" or spec.quota_published:
            quotas[name] = make_quota(rate, spec.max_in_flight)
        else:  # what the runner assumes of a model whose quota is not published
            d = defaults.default_quota
            quotas[name] = make_quota(
                rate, d.in_flight or 2, learn=True, max_in_flight=d.max_in_flight
            )
    values: dict[str, Any] = {
        "api_key": BENCH_KEY,
        "base_url": base_url,
        # the models these workloads are about (the defaults before the 2026 catalogue)
        "models": {
            "t2i": list(T2I_MODELS),
            "tie": list(EDIT_MODELS),
            "vttie": list(EDIT_MODELS[::-1]),
        },
        "quotas": quotas,
        # the runner's default share of the account's query budget (15 of 20), of the
        # budget this emulator enforces (scaled with its windows or on its own)
        "poll_qps": defaults.poll_qps * config.poll_qps / _ACCOUNT_QPS / window,
        "poll_first_s": defaults.poll_first_s * waits,
        "backoff_max_s": defaults.backoff_max_s * waits,
        "retry_after_cap_s": defaults.retry_after_cap_s * waits,
        "task_timeout_s": defaults.task_timeout_s * waits,
        "sync_timeout_s": defaults.sync_timeout_s * waits,
        # The VIEScore judge is a quality add-on, not part of the generation pipeline the
        # issue measures (submit, poll, download, write): off here, see BENCHMARKS.md.
        "judge": JudgeSettings(enabled=False),
    }
    values.update(extra)
    return Settings(**values)


# --------------------------------------------------------------------------- measurements


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timeline_series(
    timeline: list[list[Any]], models: Iterable[str]
) -> dict[str, list[tuple[float, int]]]:
    """(t, in_flight) steps per model from the emulator's timeline."""
    wanted = set(models)
    out: dict[str, list[tuple[float, int]]] = {m: [(0.0, 0)] for m in wanted}
    for t, model, value in timeline:
        if model in wanted:
            out[model].append((float(t), int(value)))
    return out


def busy_share(series: list[tuple[float, int]], slots: int, end: float) -> float:
    """Mean share of ``slots`` in use over [0, end]."""
    if end <= 0 or slots <= 0:
        return 0.0
    area = 0.0
    for (t0, v), (t1, _) in zip(series, [*series[1:], (end, 0)], strict=False):
        t0, t1 = max(t0, 0.0), min(t1, end)
        if t1 > t0:
            area += v * (t1 - t0)
    return area / (slots * end)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def now() -> float:
    return time.monotonic()


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


class MachineLoad:
    """Busy CPU of the whole machine over a span (from /proc/stat), to tell how much of it
    other processes took: this box is shared."""

    def __init__(self) -> None:
        self.start = self._read()
        self.t0 = time.monotonic()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return 0, 0
        values = [int(v) for v in parts]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    def busy_cores(self) -> float:
        total0, idle0 = self.start
        total1, idle1 = self._read()
        elapsed = time.monotonic() - self.t0
        ticks = os.sysconf("SC_CLK_TCK")
        if elapsed <= 0:
            return 0.0
        return ((total1 - total0) - (idle1 - idle0)) / ticks / elapsed


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
