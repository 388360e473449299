"""``make gpu-check``: local generation on every CUDA device, figures into BENCHMARKS.md.

On each GPU: the tiny QwenImagePipeline (runner.backends.local.tiny) in bfloat16, then, for every
``--weights name=folder``, ``--images`` real images at the model's own size and steps;
each through the workers' own loading and calling code (runner.backends.local.worker). Then all GPUs
together through the LocalPool, one worker process per device. Written: images/s,
seconds per image and peak memory per GPU, between the markers of BENCHMARKS.md's
"Local generation" section. Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
START = "<!-- gpu-check:start -->"
END = "<!-- gpu-check:end -->"
TINY_SIZE = "256*256"
TINY_STEPS = 8
PROMPT = "a lighthouse on a cliff at dusk, waves below"


@dataclass
class Row:
    model: str
    device: str
    images: int
    seconds: float
    peak_gib: float | None

    def line(self) -> str:
        peak = f"{self.peak_gib:.2f}" if self.peak_gib is not None else "-"
        return (
            f"| {self.model} | {self.device} | {self.images} | "
            f"{self.images / self.seconds:.3f} | {self.seconds / self.images:.3f} | {peak} |"
        )


def cuda_devices() -> tuple[list[str], str]:
    """(the CUDA devices, why none when empty)."""
    try:
        import torch
    except ImportError:
        return [], "torch is not installed (make install)"
    if not torch.cuda.is_available():
        return [], f"torch {torch.__version__} sees no CUDA device"
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())], ""


def _spec(source: str, device: str, steps: int, size: str, batch: int = 1) -> dict[str, Any]:
    return {
        "source": source,
        "device": device,
        "dtype": "bfloat16",
        "steps": steps,
        "size": size,
        "guidance": None,
        "negative_prompt": None,
        "batch": batch,
        "lora": None,
        "offload": False,
        "compile": False,
        "allow_download": False,
        "threads": 1,
    }


def one_device(name: str, source: str, device: str, n: int, steps: int, size: str) -> Row:
    """Load on ``device``, one warm-up image, then ``n`` timed ones, one call each."""
    import torch

    from runner.backends.local.worker import Runner, load_pipeline

    spec = _spec(source, device, steps, size)
    runner = Runner(load_pipeline(spec), spec)
    index = torch.device(device).index or 0
    job = {"prompt": PROMPT, "negative": None, "seeds": [0]}
    job["wh"] = runner.size_of(job)
    runner.t2i([job])  # warm-up: kernels chosen, memory pools filled
    torch.cuda.synchronize(index)
    torch.cuda.reset_peak_memory_stats(index)
    started = time.perf_counter()
    for seed in range(1, n + 1):
        runner.t2i([{**job, "seeds": [seed]}])
    torch.cuda.synchronize(index)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(index) / 2**30
    del runner
    torch.cuda.empty_cache()
    return Row(name, device, n, seconds, peak)


async def all_devices(source: str, devices: list[str], n: int, steps: int, size: str) -> Row:
    """Every GPU at once through the pool: ``n`` images per device, one worker each."""
    from runner.backends.local import LocalPool
    from runner.settings import Settings

    table = {"path": source, "steps": steps, "size": size, "devices": devices}
    pool = LocalPool(Settings(models={"t2i": ["local:check"]}, local={"check": table}))
    try:
        await pool.generate(
            "local:check",
            task_type="t2i",
            prompt=PROMPT,
            negative=None,
            source=None,
            n=1,
            seeds=[0],
        )  # starts every worker
        started = time.perf_counter()
        await asyncio.gather(
            *(
                pool.generate(
                    "local:check",
                    task_type="t2i",
                    prompt=PROMPT,
                    negative=None,
                    source=None,
                    n=1,
                    seeds=[k],
                )
                for k in range(1, n * len(devices) + 1)
            )
        )
        seconds = time.perf_counter() - started
    finally:
        await pool.close()
    return Row("tiny, pool", f"{len(devices)} GPUs", n * len(devices), seconds, None)


def write_section(rows: list[Row], gpu_names: list[str]) -> None:
    table = [
        "| model | device | images | images/s | s/image | peak GiB |",
        "| --- | --- | --- | --- | --- | --- |",
        *(r.line() for r in rows),
    ]
    body = "\n".join(
        [
            START,
            f"Measured by `make gpu-check` on {time.strftime('%Y-%m-%d')}: "
            + ", ".join(gpu_names)
            + f"; bfloat16; tiny = {TINY_STEPS} steps at {TINY_SIZE}.",
            "",
            *table,
            END,
        ]
    )
    text = BENCHMARKS.read_text(encoding="utf-8")
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: body, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Local generation (`make gpu-check`)\n\n" + body + "\n"
    BENCHMARKS.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument("--images", type=int, default=4, help="timed images per model and GPU")
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="a real pipeline folder to measure (its model card's steps and size: --steps, --size)",
    )
    parser.add_argument("--steps", type=int, default=50, help="steps for the real weights")
    parser.add_argument("--size", default="1328*1328", help="W*H for the real weights")
    args = parser.parse_args(argv)
    devices, why = cuda_devices()
    if not devices:
        print(f"gpu-check: no CUDA device is present ({why}); nothing measured")
        return 0
    weights = []
    for item in args.weights:
        name, _, folder = item.partition("=")
        if not folder or not (Path(folder) / "model_index.json").is_file():
            print(
                f"gpu-check: --weights {item}: give NAME=FOLDER, FOLDER a diffusers pipeline "
                "folder (with model_index.json)"
            )
            return 2
        weights.append((name, folder))
    import torch

    from runner.backends.local.tiny import build_tiny_qwen_image

    names = [torch.cuda.get_device_name(i) for i in range(len(devices))]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = str(build_tiny_qwen_image(Path(tmp) / "tiny"))
        for device in devices:
            rows.append(one_device("tiny", tiny, device, args.images, TINY_STEPS, TINY_SIZE))
            print(rows[-1].line(), flush=True)
            for name, folder in weights:
                rows.append(one_device(name, folder, device, args.images, args.steps, args.size))
                print(rows[-1].line(), flush=True)
        rows.append(asyncio.run(all_devices(tiny, devices, args.images, TINY_STEPS, TINY_SIZE)))
        print(rows[-1].line(), flush=True)
    write_section(rows, names)
    print(f"gpu-check: {len(rows)} rows written to {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
