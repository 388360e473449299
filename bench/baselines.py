"""What the runner is compared with, on the same emulator and API rows.

    python -m bench.baselines --kind sequential|sdk|naive --json OUT.json

* ``sequential``: the public baseline's loop, one row at a time: submit, poll every 2 s,
  download, write, next row (blocking ``requests``).
* ``sdk``: the official SDK, ``ImageSynthesis.async_call`` + ``wait`` (and
  ``MultiModalConversation.call`` for qwen-image-edit) in a thread pool of 32; the SDK's
  own poll intervals (1 s doubling to 5 s) are scaled like everything else.
* ``naive``: ``asyncio.gather`` over every row with a semaphore of 32, no quota awareness:
  submit, on a 429 wait 1 s and submit again, poll every 1 s, download, write.

Each uses the first model of its task type's list (t2i: wanx2.1-t2i-turbo, tie:
wanx2.1-imageedit, vttie: qwen-image-edit) as a script would. Waits are x scale.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from runner.images import prepare_source
from runner.settings import Settings
from runner.tasks import Task, load_tasks

from .common import (
    BENCH_KEY,
    OUT,
    SCALE,
    EmulatorProcess,
    MachineLoad,
    build_workload,
    children_cpu_s,
    cpu_s,
    emulator_config,
    eprint,
    loadavg,
    now,
    peak_rss_mb,
    write_json,
)
from .throughput import summarize_emulator

MAX_TRIES = 200  # 429s one row may take before a baseline gives it up


def _async_input(prompt: str, image: str | None) -> tuple[str, dict[str, Any]]:
    """The endpoint and ``input`` of an async submit, as the public baselines send them."""
    if image is None:
        return "text2image", {"prompt": prompt}
    return "image2image", {
        "prompt": prompt,
        "function": "description_edit",
        "base_image_url": image,
    }


def first_models() -> dict[str, str]:
    models = Settings().models
    return {kind: names[0] for kind, names in models.items()}


class Tally:
    """Thread-safe counters of a baseline run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c: Counter[str] = Counter()
        self.done_at: list[float] = []

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.c[key] += n


def _write(out: Path, index: str, body: bytes) -> None:
    (out / f"{index}.png").write_bytes(body)


# --------------------------------------------------------------------------- sequential


def run_sequential(
    tasks: list[Task], base: str, out: Path, scale: float, tally: Tally, deadline: float
) -> None:
    import requests

    models = first_models()
    session = requests.Session()
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    t0 = now()

    def content(image: str | None, text: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"image": image}, {"text": text}]}]

    for task in tasks:
        if now() > deadline:
            break
        model = models[task.task_type]
        image = prepare_source(task.ori_image).uri if task.ori_image else None
        url = None
        if model == "qwen-image-edit":
            body = {
                "model": model,
                "input": {"messages": content(image, task.prompt)},
                "parameters": {"n": 1, "watermark": False},
            }
            r = session.post(
                f"{base}/services/aigc/multimodal-generation/generation",
                json=body,
                headers=headers,
                timeout=600,
            )
            tally.add("requests")
            if r.status_code == 200:
                url = r.json()["output"]["choices"][0]["message"]["content"][0]["image"]
            else:
                tally.add(f"http_{r.status_code}")
        else:
            path, inp = _async_input(task.prompt, image)
            r = session.post(
                f"{base}/services/aigc/{path}/image-synthesis",
                json={"model": model, "input": inp, "parameters": {"n": 1}},
                headers={**headers, "X-DashScope-Async": "enable"},
                timeout=60,
            )
            tally.add("requests")
            if r.status_code != 200:
                tally.add(f"http_{r.status_code}")
                continue
            task_id = r.json()["output"]["task_id"]
            while True:
                time.sleep(2.0 * scale)
                q = session.get(f"{base}/tasks/{task_id}", headers=headers, timeout=60)
                tally.add("polls")
                if q.status_code != 200:
                    tally.add(f"http_{q.status_code}")
                    continue
                output = q.json()["output"]
                if output["task_status"] == "SUCCEEDED":
                    url = output["results"][0]["url"]
                    break
                if output["task_status"] in ("FAILED", "UNKNOWN", "CANCELED"):
                    break
        if url is None:
            tally.add("failed")
            continue
        _write(out, task.index, session.get(url, timeout=60).content)
        tally.add("done")
        tally.done_at.append(now() - t0)


# --------------------------------------------------------------------------- SDK pool


class _ScaledTime:
    """Stands in for the ``time`` module inside the SDK: its sleeps are x scale."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds * self.scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def run_sdk(tasks: list[Task], base: str, out: Path, scale: float, tally: Tally) -> None:
    import dashscope
    import dashscope.client.base_api as base_api
    import requests
    from dashscope import ImageSynthesis, MultiModalConversation

    dashscope.base_http_api_url = base
    base_api.time = _ScaledTime(scale)  # type: ignore[assignment]
    models = first_models()
    t0 = now()

    def one(task: Task) -> None:
        model = models[task.task_type]
        image = prepare_source(task.ori_image).uri if task.ori_image else None
        url = None
        for _ in range(MAX_TRIES):
            if model == "qwen-image-edit":
                messages = [{"role": "user", "content": [{"image": image}, {"text": task.prompt}]}]
                rsp = MultiModalConversation.call(
                    model=model, messages=messages, api_key=BENCH_KEY, watermark=False
                )
                tally.add("requests")
                if rsp.status_code == 200:
                    url = rsp.output.choices[0].message.content[0]["image"]
                    break
            else:
                kw: dict[str, Any] = {"n": 1, "api_key": BENCH_KEY}
                if image is not None:
                    kw.update(function="description_edit", base_image_url=image)
                rsp = ImageSynthesis.async_call(model=model, prompt=task.prompt, **kw)
                tally.add("requests")
                if rsp.status_code == 200:
                    while True:  # a 429 on a poll ends wait(): wait again
                        done = ImageSynthesis.wait(rsp, api_key=BENCH_KEY)
                        if done.status_code != 429:
                            break
                        tally.add("wait_429")
                    if done.status_code == 200 and done.output.task_status == "SUCCEEDED":
                        url = done.output.results[0].url
                    break
            if rsp.status_code != 429:
                break
            tally.add("submit_429")
            time.sleep(1.0 * scale)
        if url is None:
            tally.add("failed")
            return
        _write(out, task.index, requests.get(url, timeout=60).content)
        tally.add("done")
        with tally.lock:
            tally.done_at.append(now() - t0)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, tasks))


# --------------------------------------------------------------------------- naive gather


async def run_naive(tasks: list[Task], base: str, out: Path, scale: float, tally: Tally) -> None:
    models = first_models()
    sem = asyncio.Semaphore(32)
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    t0 = now()

    async def one(session: aiohttp.ClientSession, task: Task) -> None:
        async with sem:
            model = models[task.task_type]
            image = (
                (await asyncio.to_thread(prepare_source, task.ori_image)).uri
                if task.ori_image
                else None
            )
            url = None
            for _ in range(MAX_TRIES):
                if model == "qwen-image-edit":
                    body = {
                        "model": model,
                        "input": {
                            "messages": [
                                {
                                    "role": "user",
                                    "content": [{"image": image}, {"text": task.prompt}],
                                }
                            ]
                        },
                        "parameters": {"n": 1, "watermark": False},
                    }
                    async with session.post(
                        f"{base}/services/aigc/multimodal-generation/generation",
                        json=body,
                        headers=headers,
                    ) as r:
                        tally.add("requests")
                        data = await r.json(content_type=None)
                        if r.status == 200:
                            url = data["output"]["choices"][0]["message"]["content"][0]["image"]
                            break
                        status = r.status
                else:
                    path, inp = _async_input(task.prompt, image)
                    async with session.post(
                        f"{base}/services/aigc/{path}/image-synthesis",
                        json={"model": model, "input": inp, "parameters": {"n": 1}},
                        headers={**headers, "X-DashScope-Async": "enable"},
                    ) as r:
                        tally.add("requests")
                        data = await r.json(content_type=None)
                        status = r.status
                    if status == 200:
                        task_id = data["output"]["task_id"]
                        while True:
                            await asyncio.sleep(1.0 * scale)
                            async with session.get(f"{base}/tasks/{task_id}", headers=headers) as q:
                                tally.add("polls")
                                if q.status != 200:
                                    continue
                                output = (await q.json(content_type=None))["output"]
                            if output["task_status"] == "SUCCEEDED":
                                url = output["results"][0]["url"]
                                break
                            if output["task_status"] in ("FAILED", "UNKNOWN", "CANCELED"):
                                break
                        break
                if status != 429:
                    break
                tally.add("submit_429")
                await asyncio.sleep(1.0 * scale)
            if url is None:
                tally.add("failed")
                return
            async with session.get(url) as d:
                body_bytes = await d.read()
            _write(out, task.index, body_bytes)  # blocking write, as a script does
            tally.add("done")
            tally.done_at.append(now() - t0)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, t) for t in tasks))


# --------------------------------------------------------------------------- driver


def bench_baseline(kind: str, tasks_csv: Path, images: Path, scale: float, cap_s: float) -> dict:
    tasks = [t for t in load_tasks(tasks_csv, images).tasks if t.task_type != "deepfake"]
    config = emulator_config(scale)
    out = OUT / f"baseline-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    tally = Tally()
    with EmulatorProcess(config) as emu:
        emu.reset_stats()
        load0, machine = loadavg(), MachineLoad()
        cpu0, kids0, ecpu0, t0 = cpu_s(), children_cpu_s(), emu.cpu_s(), now()
        if kind == "sequential":
            run_sequential(tasks, emu.base_url, out, scale, tally, t0 + cap_s)
        elif kind == "sdk":
            run_sdk(tasks, emu.base_url, out, scale, tally)
        else:
            asyncio.run(run_naive(tasks, emu.base_url, out, scale, tally))
        elapsed = now() - t0
        cpu, ecpu = cpu_s() - cpu0, emu.cpu_s() - ecpu0
        busy = machine.busy_cores()
        stats = emu.stats()
    done = tally.c["done"]
    finished = done + tally.c["failed"] >= len(tasks)
    result: dict[str, Any] = {
        "name": {
            "sequential": "sequential loop (public baseline)",
            "sdk": "SDK async_call + wait, 32 threads",
            "naive": "naive gather, semaphore 32",
        }[kind],
        "kind": kind,
        "scale": scale,
        "rows_total": len(tasks),
        "rows_done": done,
        "rows_failed": tally.c["failed"],
        "finished": finished,
        "makespan_s": round(elapsed, 3),
        "cpu_s": round(cpu, 2),
        "cpu_per_task_ms": round(1000 * cpu / max(1, done), 2),
        "children_cpu_s": round(children_cpu_s() - kids0, 2),
        "emulator_cpu_s": round(ecpu, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "loadavg_before": load0,
        "machine_busy_cores": round(busy, 2),
        "others_busy_cores": round(max(0.0, busy - (cpu + ecpu) / elapsed), 2),
        "counts": dict(tally.c),
    }
    if not finished and done:
        # stopped at the cap: project the rest at the pace it kept
        result["projected_makespan_s"] = round(elapsed * len(tasks) / done, 1)
    result.update(summarize_emulator(stats, config, elapsed))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baselines")
    p.add_argument("--kind", choices=("sequential", "sdk", "naive"), required=True)
    p.add_argument("--scale", type=float, default=SCALE)
    p.add_argument("--cap-s", type=float, default=1e9, help="stop a slow baseline after this")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    workload = build_workload(deepfake=False)
    result = bench_baseline(args.kind, workload.tasks, workload.images, args.scale, args.cap_s)
    write_json(args.json or OUT / f"baseline-{args.kind}.json", result)
    eprint(json.dumps({k: v for k, v in result.items() if k != "timeline"}, default=str)[:1500])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
