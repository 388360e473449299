"""Tasks and result files: the emulator's account state, owned by its event loop (the
quotas are ``quotas.QuotaBook``'s)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import random
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from runner.emulator.clock import Clock
from runner.emulator.config import EmulatorConfig
from runner.emulator.faults import FaultKind
from runner.emulator.images import render_edit, render_t2i
from runner.emulator.quotas import QuotaBook
from runner.emulator.stats import StatsRecorder

_EXTENSIONS = (
    "highly detailed, soft natural light, sharp focus",
    "cinematic composition, rich colours, 8k",
    "photorealistic, balanced exposure, fine texture",
    "clean background, studio lighting, crisp details",
)


@dataclass
class ResultFile:
    """A result image, rendered lazily on first download."""

    name: str
    kind: Literal["t2i", "edit"]
    width: int
    height: int
    prompt: str
    seed: int
    function: str = ""
    source: bytes | None = None


class FileStore:
    """Result files behind signed URLs, uploads behind oss:// keys, a small render cache."""

    def __init__(
        self, config: EmulatorConfig, secret: bytes, clock: Clock, cache_size: int = 64
    ) -> None:
        self.config = config
        self.clock = clock
        self.root_url = ""
        self._secret = secret
        self.files: OrderedDict[str, ResultFile] = OrderedDict()
        self.uploads: OrderedDict[str, bytes] = OrderedDict()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size

    def signature(self, name: str, expires: int) -> str:
        msg = f"GET\n{name}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha1).hexdigest()

    def add(self, record: ResultFile) -> str:
        """Registers a result and returns its signed URL."""
        self.files[record.name] = record
        # Bounded like an OSS lifecycle rule: the oldest results go (404) in long soaks.
        while len(self.files) > self.config.max_result_files:
            self.files.popitem(last=False)
        expires = math.ceil(self.clock.wall() + self.config.url_ttl_s)
        sig = self.signature(record.name, expires)
        return (
            f"{self.root_url}/files/{record.name}.png"
            f"?Expires={expires}&OSSAccessKeyId=EMULATOR&Signature={sig}"
        )

    def store_upload(self, key: str, data: bytes) -> None:
        self.uploads[key] = data
        while len(self.uploads) > self.config.max_result_files:
            self.uploads.popitem(last=False)

    def cached(self, name: str) -> bytes | None:
        data = self._cache.get(name)
        if data is not None:
            self._cache.move_to_end(name)
        return data

    def remember(self, name: str, data: bytes) -> None:
        self._cache[name] = data
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def render(self, record: ResultFile) -> bytes:
        """The PNG of a result, rendered off the loop on first use."""
        data = self.cached(record.name)
        if data is not None:
            return data
        if record.kind == "t2i":
            data = await asyncio.to_thread(
                render_t2i, record.width, record.height, record.prompt, record.seed
            )
        else:
            assert record.source is not None  # edits always keep their source
            data = await asyncio.to_thread(
                render_edit, record.source, record.prompt, record.seed, record.function
            )
        self.remember(record.name, data)
        return data


class TaskInfo(BaseModel):
    """What tests may inspect about a task beyond the wire answer."""

    task_id: str
    model: str
    status: str
    prompt: str
    prompt_truncated: bool
    orig_prompt_chars: int
    negative_prompt: str | None
    n: int
    size: str
    function: str | None
    parameters: dict[str, Any]
    fault: str | None
    latency_s: float


@dataclass
class Task:
    task_id: str
    model: str
    kind: Literal["t2i", "edit"]
    n: int
    width: int
    height: int
    prompt: str
    orig_prompt_chars: int
    negative_prompt: str | None
    prompt_extend: bool
    seed: int
    function: str | None
    source: bytes | None
    parameters: dict[str, Any]
    fault: FaultKind | None
    latency_s: float
    submit_wall: float
    submit_mono: float
    status: str = "PENDING"
    scheduled_wall: float | None = None
    end_wall: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    code: str | None = None
    message: str | None = None
    expired: bool = False
    handles: list[asyncio.TimerHandle] = field(default_factory=list)
    billing: dict[str, Any] | None = None  # its entry in the account's bill, settled at the end
    # image-generation/generation (wan2.6, wan2.7): polls answer with ``choices``
    choices: bool = False

    @property
    def prompt_truncated(self) -> bool:
        return self.orig_prompt_chars > len(self.prompt)

    def info(self) -> TaskInfo:
        return TaskInfo(
            task_id=self.task_id,
            model=self.model,
            status="UNKNOWN" if self.expired else self.status,
            prompt=self.prompt,
            prompt_truncated=self.prompt_truncated,
            orig_prompt_chars=self.orig_prompt_chars,
            negative_prompt=self.negative_prompt,
            n=self.n,
            size=f"{self.width}*{self.height}",
            function=self.function,
            parameters=self.parameters,
            fault=self.fault.value if self.fault else None,
            latency_s=self.latency_s,
        )


@dataclass
class TaskBoard:
    """Async tasks: PENDING -> RUNNING -> SUCCEEDED/FAILED on loop timers."""

    config: EmulatorConfig
    stats: StatsRecorder
    quotas: QuotaBook
    files: FileStore
    clock: Clock
    tasks: dict[str, Task] = field(default_factory=dict)
    _seq: dict[str, int] = field(default_factory=dict)  # latency draws so far, per model

    def draw_latency(self, model: str, span: tuple[float, float]) -> tuple[float, float]:
        """(pending part, total) in scaled seconds, reproducible from the seed; a configured
        latency profile replaces the model's own range."""
        seq = self._seq.get(model, 0)
        self._seq[model] = seq + 1
        rng = random.Random(f"{self.config.seed}:{model}:{seq}")
        profile = self.config.latency_profile(model)
        raw = profile.draw(rng) if profile is not None else rng.uniform(*span)
        total = raw * self.config.time_scale
        return total * rng.uniform(*self.config.pending_fraction), total

    def advance(self, seconds: float) -> None:
        """Moves the clock; tasks whose latency has now passed finish at once."""
        self.clock.advance(seconds)
        now = self.clock.wall()
        for task in list(self.tasks.values()):
            if task.status not in ("PENDING", "RUNNING"):
                continue
            if now - task.submit_wall >= task.latency_s:
                for handle in task.handles:
                    handle.cancel()
                self._start(task)
                self._finish(task)

    def add(self, task: Task, pending_s: float) -> None:
        """Registers an admitted task (its slot already taken) and starts its clock."""
        self._purge()
        self.tasks[task.task_id] = task
        loop = asyncio.get_running_loop()
        if task.latency_s <= 0:
            self._start(task)
            self._finish(task)
            return
        task.handles = [
            loop.call_later(pending_s, self._start, task),
            loop.call_later(task.latency_s, self._finish, task),
        ]

    def get(self, task_id: str) -> Task | None:
        task = self.tasks.get(task_id)
        if task is None:
            return None
        if self.clock.wall() - task.submit_wall > self.config.task_ttl_s and task.end_wall:
            del self.tasks[task_id]
            return None
        return task

    def cancel(self, task: Task) -> bool:
        if task.status != "PENDING" or task.expired:
            return False
        for handle in task.handles:
            handle.cancel()
        task.status = "CANCELED"
        task.end_wall = self.clock.wall()
        task.source = None
        if task.billing is not None:
            task.billing["images"] = 0
        self.quotas.release(task.model)
        self.stats.cancels += 1
        self.stats.task_outcomes["CANCELED"] += 1
        return True

    def close(self) -> None:
        for task in self.tasks.values():
            for handle in task.handles:
                handle.cancel()

    def _purge(self) -> None:
        now = self.clock.wall()
        while self.tasks:
            task = next(iter(self.tasks.values()))
            if task.end_wall is None or now - task.submit_wall <= self.config.task_ttl_s:
                break
            del self.tasks[task.task_id]

    def _start(self, task: Task) -> None:
        if task.status == "PENDING":
            task.status = "RUNNING"
            task.scheduled_wall = self.clock.wall()

    def _finish(self, task: Task) -> None:
        if task.status != "RUNNING":
            return
        task.end_wall = self.clock.wall()
        self.quotas.release(task.model)
        if task.fault is FaultKind.TASK_UNKNOWN:
            task.expired = True
            task.status = "UNKNOWN"
        elif task.fault is FaultKind.TASK_FAILED:
            task.status = "FAILED"
            task.code = "InternalError.Algo"
            task.message = "Inner error: the algorithm service failed to process the task."
        else:
            failures = (
                max(1, task.n // 2)
                if (task.fault is FaultKind.PARTIAL_SUCCESS and task.n > 1)
                else 0
            )
            made = task.n - failures + (task.fault is FaultKind.EXTRA_IMAGES)
            task.results = [self._result(task, i) for i in range(made)]
            task.results += [
                {
                    "code": "InternalError.Timeout",
                    "message": "Image generation timed out, please try again.",
                }
                for _ in range(failures)
            ]
            task.status = "SUCCEEDED"
        task.source = None  # the result records keep their own reference
        self.stats.task_outcomes[task.status] += 1
        if task.billing is not None:  # failed images are not billed
            task.billing["images"] = sum(1 for r in task.results if "url" in r)

    def _result(self, task: Task, index: int) -> dict[str, Any]:
        name = uuid.uuid4().hex
        record = ResultFile(
            name=name,
            kind=task.kind,
            width=task.width,
            height=task.height,
            prompt=task.prompt,
            seed=task.seed + index,
            function=task.function or "",
            source=task.source,
        )
        item: dict[str, Any] = {}
        if task.kind == "t2i":  # the reference: t2i results carry the prompt as received
            item["orig_prompt"] = task.prompt
        if task.prompt_extend and task.kind == "t2i":
            pick = int(hashlib.sha256(task.prompt.encode()).hexdigest(), 16) % len(_EXTENSIONS)
            item["actual_prompt"] = f"{task.prompt}, {_EXTENSIONS[pick]}"
        item["url"] = self.files.add(record)
        return item


def new_task_id() -> str:
    return str(uuid.uuid4())
