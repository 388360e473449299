"""The settings' tables: quotas, the sections ([judge], [faceswap], [local."name"] ...),
list prices, and the defaults drawn from the capability table (runner.models).

``runner.settings`` builds ``Settings`` from these and re-exports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from runner.models import LIST_PRICES, PRICE_CURRENCY, REGIONS, caps, known_models

TaskType = Literal["t2i", "tie", "vttie", "deepfake"]
API_TASK_TYPES: tuple[str, ...] = ("t2i", "tie", "vttie")
# Bounds that keep every wait finite: a rate of 1e-6 a second is an 11-day sleep.
MIN_POLL_QPS = 0.1  # a task looked at at least every 10 s
MIN_SUBMITS_PER_SECOND = 0.01  # a submit at least every 100 s
MAX_WAIT_S = 3600.0  # no timeout, back-off or single wait longer than an hour


class Quota(BaseModel):
    """What one model allows per account. ``learn`` = not published: adapt from 429s."""

    submits_per_second: float = Field(2.0, ge=MIN_SUBMITS_PER_SECOND)
    # None: no in-flight limit (sync qwen-image-edit calls): bounded by the rate and
    # --concurrency only.
    in_flight: int | None = Field(2, ge=1)
    learn: bool = False
    max_in_flight: int = Field(8, ge=1)  # the ceiling a learned limit may probe up to

    @field_validator("in_flight", mode="before")
    @classmethod
    def _no_limit(cls, v: Any) -> Any:
        # TOML has no null: in_flight = "none" (or 0) writes "no in-flight limit".
        if v == 0 or (isinstance(v, str) and v.strip().lower() in ("none", "unlimited")):
            return None
        return v


class FaceSwapSettings(BaseModel):
    backend: str = "auto"  # "inswapper", "classic" or "auto" (inswapper when its weights exist)
    models_dir: Path = Path("models")
    workers: int = Field(0, ge=0)  # 0: chosen from the cores and the backend
    candidates: int = Field(1, ge=1)
    # The 68 points (and dense mesh) of the classic warp and the glasses rule: "mediapipe"
    # (FaceMesh, dlib for faces it does not see; a warning when its model is missing),
    # "dlib", or "auto" (mediapipe when its model file is installed, else dlib, quietly).
    landmarker: str = "auto"


class JudgeSettings(BaseModel):
    """The VIEScore judge on DashScope's OpenAI-compatible endpoint."""

    enabled: bool = True  # score candidates (always when a row has more than one)
    # qwen-vl-max, qwen-vl-plus, qwen3-vl-plus, qwen3-vl-flash, or qwen2.5-vl-72b-instruct
    # (GEdit-Bench's open judge; 60 requests and 100k tokens a minute)
    model: str = "qwen-vl-max"
    # None: half the model's published quota in the region (runner.backends.judge.models);
    # one call is a couple of thousand tokens, so at least 5,000 tokens a minute
    requests_per_minute: float | None = Field(None, ge=1)
    tokens_per_minute: float | None = Field(None, ge=5_000)
    budget: int = Field(3000, ge=0)  # most judge calls in one run
    # list prices per million tokens in the region's currency (None: unknown, tokens counted)
    input_price: float | None = Field(None, ge=0)
    output_price: float | None = Field(None, ge=0)


class EmulatorSettings(BaseModel):
    """The embedded DashScope emulator started when no API key is set."""

    time_scale: float = Field(0.1, gt=0)  # 1.0 = the real 5-15 s latency
    seed: int = 0
    faults: float = Field(0.0, ge=0, le=1)  # share of answers made faulty on purpose
    # how its judge answers: the bare JSON object, or as chat models do (a fenced object in
    # prose, a bare list, an unquoted value; runner.emulator.judge)
    judge_answers: Literal["json", "fenced", "list", "unquoted"] = "json"


class LocalModel(BaseModel):
    """A ``local:<name>`` model: a diffusers pipeline run on this machine's devices
    (runner.backends.local). ``[local."qwen-image"] path = "models/Qwen-Image"``."""

    model_config = {"extra": "forbid"}

    path: str  # a save_pretrained folder, or a hub id found in the local HF cache
    steps: int = Field(50, ge=1, le=1000)
    size: str = "1328*1328"  # "W*H": t2i picks by the prompt's aspect ratio at this area
    devices: list[str] = Field(default_factory=list)  # empty: every visible GPU, else cpu
    dtype: str | None = None  # default bfloat16 on CUDA, float32 on CPU
    guidance: float | None = Field(None, ge=0)  # default: the family's (runner.backends.local)
    negative_prompt: str | None = None
    batch: int = Field(1, ge=1, le=16)  # images one pipeline call makes on one device
    lora: str | None = None  # fused at load (e.g. a few-step Lightning LoRA)
    offload: bool = False  # model CPU offload: less GPU memory, slower
    compile: bool = False  # torch.compile the denoiser
    allow_download: bool = False  # else HF_HUB_OFFLINE: nothing downloaded during a run

    @field_validator("size")
    @classmethod
    def _size_form(cls, v: str) -> str:
        w, _, h = v.partition("*")
        if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise ValueError(f"size must look like 1328*1328, not {v!r}")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype_name(cls, v: str | None) -> str | None:
        if v is not None and v not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, not {v!r}")
        return v


class RegionPrices(BaseModel):
    """One region's list prices, per image: ``currency = "USD"`` and ``"model" = price``."""

    currency: str = ""
    per_image: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        # TOML writes the models beside the currency: [prices.intl] "wan2.1-t2i-turbo" = 0.025
        if isinstance(v, dict) and "per_image" not in v:
            rest = {k: p for k, p in v.items() if k != "currency"}
            return {"currency": v.get("currency", ""), "per_image": rest}
        return v

    @field_validator("per_image")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for model, price in v.items():
            if price < 0:
                raise ValueError(f"price of {model} cannot be negative")
        return v


# Built-in list prices (runner.models.LIST_PRICES, with the date they were read); a
# [prices.<region>] table overrides them model by model (in the same currency).
DEFAULT_PRICES: dict[str, RegionPrices] = {
    region: RegionPrices(currency=PRICE_CURRENCY[region], per_image=dict(LIST_PRICES[region]))
    for region in REGIONS
}


def default_quotas(region: str) -> dict[str, Quota]:
    """The published quota in ``region`` of every model in the capability table (the
    undocumented ones start from the table's figures and learn from 429s)."""
    quotas: dict[str, Quota] = {}
    for name in known_models():
        found = caps(name, region)
        quotas[name] = Quota(
            submits_per_second=found.submits_per_second,
            in_flight=found.in_flight,
            learn=not found.quota_published,
        )
    return quotas
