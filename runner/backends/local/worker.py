"""The worker process: one per device, the pipeline loaded once, jobs read from a pipe.

Messages, driver -> worker: ``("job", id, job)`` and ``("stop",)``; worker -> driver:
``("ready", info)``, ``("load_error", line)``, ``("done", id, [png bytes])`` and
``("error", id, kind, line)`` (kind "oom": the worker exits after saying so, its memory
freed by the restart; "failed": the job's own fault). Up to ``batch`` queued text-to-image
jobs of one size are made in one pipeline call.
"""

from __future__ import annotations

import inspect
import io
import os
from multiprocessing.connection import Connection
from typing import Any

from runner.backends import lifeline
from runner.backends.local.families import Family, edit_size, family_of, t2i_size, with_suffix


class LoadError(Exception):
    """The pipeline cannot load: one line for the driver."""


def load_pipeline(spec: dict[str, Any]) -> Any:
    if not spec["allow_download"]:
        # read by huggingface_hub when it is imported: set before diffusers comes in
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the run has its own display
    import torch
    import transformers
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()

    if spec["device"] == "cpu":
        torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    try:
        pipe = DiffusionPipeline.from_pretrained(spec["source"], dtype=dtype)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"{spec['source']} does not load as a diffusers pipeline: {first}") from exc
    if spec["lora"]:
        pipe.load_lora_weights(spec["lora"])
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # fused: the adapter layers are no longer needed
    if spec["offload"] and spec["device"] != "cpu":
        index = int(spec["device"].partition(":")[2] or 0)
        pipe.enable_model_cpu_offload(gpu_id=index)
    else:
        pipe.to(spec["device"])
    if spec["compile"]:
        denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
        if denoiser is not None:
            denoiser.compile()
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Runner:
    """Calls one loaded pipeline the way its family wants."""

    def __init__(self, pipe: Any, spec: dict[str, Any]) -> None:
        self.pipe = pipe
        self.spec = spec
        self.family: Family = family_of(type(pipe).__name__)
        self.params = set(inspect.signature(pipe.__call__).parameters)
        self.edits = "image" in self.params  # an edit pipeline takes the source image
        # latents are patched 2x2 after the VAE: sizes in multiples of twice its factor
        self.multiple = int(getattr(pipe, "vae_scale_factor", 8)) * 2

    def info(self) -> dict[str, Any]:
        return {
            "pipeline": type(self.pipe).__name__,
            "family": self.family.name,
            "edits": self.edits,
            "device": self.spec["device"],
            "pid": os.getpid(),
        }

    def _common(self, negative: str | None, steps: int) -> dict[str, Any]:
        kw: dict[str, Any] = {"num_inference_steps": steps, "output_type": "pil"}
        fam, spec = self.family, self.spec
        guidance = spec["guidance"] if spec["guidance"] is not None else fam.guidance
        if guidance is not None and fam.cfg_arg in self.params:
            kw[fam.cfg_arg] = guidance
        neg = negative or spec["negative_prompt"] or fam.negative
        if neg is not None and "negative_prompt" in self.params:
            kw["negative_prompt"] = neg
        return kw

    def _generators(self, seeds: list[int]) -> list[Any]:
        import torch

        # CPU generators: the same seed gives the same noise on any device
        return [torch.Generator("cpu").manual_seed(s) for s in seeds]

    def t2i(self, jobs: list[dict[str, Any]]) -> list[list[bytes]]:
        """Jobs of one size in one call: a prompt and a generator per image."""
        first = jobs[0]
        w, h = first["wh"]
        prompts, negatives, seeds = [], [], []
        for job in jobs:
            for seed in job["seeds"]:
                prompts.append(with_suffix(self.family, job["prompt"]))
                negatives.append(job["negative"])
                seeds.append(seed)
        kw = self._common(negatives[0], self.spec["steps"])
        if "negative_prompt" in kw and len(set(negatives)) > 1:  # one per prompt
            default = self.spec["negative_prompt"] or self.family.negative or ""
            kw["negative_prompt"] = [n or default for n in negatives]
        if "width" in self.params and "height" in self.params:
            kw.update(width=w, height=h)
        images = self.pipe(prompt=prompts, generator=self._generators(seeds), **kw).images
        out, k = [], 0
        for job in jobs:
            out.append([_png(img) for img in images[k : k + len(job["seeds"])]])
            k += len(job["seeds"])
        return out

    def edit(self, job: dict[str, Any]) -> list[bytes]:
        from PIL import Image, ImageOps

        with Image.open(job["source"]) as im:
            source = ImageOps.exif_transpose(im).convert("RGB")
        w, h = edit_size(source.size, self.spec["size"], self.multiple)
        kw = self._common(job["negative"], self.spec["steps"])
        if "width" in self.params and "height" in self.params:
            kw.update(width=w, height=h)
            given = source
        else:  # the output takes the input's size (InstructPix2Pix): give it the VAE's sizes
            given = source.resize((w, h), Image.Resampling.LANCZOS)
        out = []
        for seed in job["seeds"]:  # one call per seed: edit pipelines batch poorly
            img = self.pipe(
                prompt=job["prompt"],
                image=given,
                generator=self._generators([seed])[0],
                **kw,
            ).images[0]
            if img.size != source.size:  # back to the source's size: the row's own shape
                img = img.resize(source.size, Image.Resampling.LANCZOS)
            out.append(_png(img))
        return out

    def size_of(self, job: dict[str, Any]) -> tuple[int, int]:
        return t2i_size(self.family, job["prompt"], self.spec["size"], self.multiple)


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return "out of memory" in str(exc).lower()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def main(conn: Connection, spec: dict[str, Any]) -> None:
    """The worker's entry point (spawned): bound to the runner (it dies with it and leaves
    Ctrl-C to it), load, say ready, then serve until "stop"."""
    lifeline.bind_to_parent()
    try:
        runner = Runner(load_pipeline(spec), spec)
    except LoadError as exc:
        conn.send(("load_error", str(exc)))
        return
    except Exception as exc:
        conn.send(("load_error", f"{spec['source']}: {_one_line(exc)}"))
        return
    conn.send(("ready", runner.info()))
    queue: list[tuple[int, dict[str, Any]]] = []
    while True:
        if (not queue or conn.poll()) and not _gather(conn, queue):
            return
        if not _serve(conn, runner, _take(runner, queue)):
            return  # a fresh process is the only sure way to get the memory back


def _gather(conn: Connection, queue: list[tuple[int, dict[str, Any]]]) -> bool:
    """Waits for the next job, then takes what else is waiting, to batch it (up to 64);
    False when the driver said "stop"."""
    while True:
        msg = conn.recv()  # waits when there is nothing to do
        if msg[0] == "stop":
            return False
        queue.append((msg[1], msg[2]))
        if not conn.poll() or len(queue) >= 64:
            return True


def _serve(conn: Connection, runner: Runner, group: list[tuple[int, Any]]) -> bool:
    """Runs one group and sends each job's answer; False after an out-of-memory error."""
    try:
        if runner.edits:
            results = [runner.edit(job) for _, job in group]
        else:
            results = runner.t2i([job for _, job in group])
    except Exception as exc:
        oom = _is_oom(exc)
        for job_id, _ in group:
            conn.send(("error", job_id, "oom" if oom else "failed", _one_line(exc)))
        return not oom  # else the driver logs the line; the run's display stays clean
    for (job_id, _), images in zip(group, results, strict=True):
        conn.send(("done", job_id, images))
    return True


def _take(runner: Runner, queue: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, Any]]:
    """The next group to run: one edit, or up to ``batch`` t2i jobs of the first's size."""
    if runner.edits:
        return [queue.pop(0)]
    first = queue[0][1]
    first["wh"] = runner.size_of(first)
    group, rest = [], []
    for item in queue:
        job = item[1]
        job.setdefault("wh", runner.size_of(job))
        if len(group) < runner.spec["batch"] and job["wh"] == first["wh"]:
            group.append(item)
        else:
            rest.append(item)
    queue[:] = rest
    return group


def run_one(runner: Runner, job: dict[str, Any]) -> tuple[str, Any]:
    """One job, as a Ray actor runs it: ("done", images) or ("oom" | "failed", line)."""
    try:
        if runner.edits:
            return "done", runner.edit(job)
        job.setdefault("wh", runner.size_of(job))
        return "done", runner.t2i([job])[0]
    except Exception as exc:
        return ("oom" if _is_oom(exc) else "failed"), _one_line(exc)
