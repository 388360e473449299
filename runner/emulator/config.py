"""Emulator configuration: the model table (endpoints, limits, quotas, latency) and knobs.

Values come from the protocol reference (shared/reference/dashscope.md, its 2026 edition:
the rate-limit page of 2026-02-24, the qwen-image-edit page of 2026-02-08, the pricing
page): regions, routes (sync-only models refuse the async endpoints the documented way),
quotas per region (sync calls: a rate, no in-flight cap), sizes and area rules, list prices.
The few quotas it does not publish (wan2.7-image) get defaults here that tests and
benchmarks can override with :meth:`EmulatorConfig.with_quota`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runner.emulator.faults import FaultConfig
from runner.emulator.latency import Profile, parse_profile

# generation: the newer async interface (image-generation/generation, wan2.6 and wan2.7)
Endpoint = Literal["text2image", "image2image", "generation", "multimodal", "chat"]
ASYNC_ENDPOINTS: frozenset[Endpoint] = frozenset({"text2image", "image2image", "generation"})

QWEN_IMAGE_SIZES: tuple[str, ...] = (
    "1664*928",
    "1472*1104",
    "1328*1328",
    "1104*1472",
    "928*1664",
)


Region = Literal["cn", "intl"]
BOTH: frozenset[Region] = frozenset({"cn", "intl"})
CN: frozenset[Region] = frozenset({"cn"})
INTL: frozenset[Region] = frozenset({"intl"})


class ModelSpec(BaseModel):
    """One model as the emulator serves it."""

    model_config = ConfigDict(frozen=True)

    name: str
    endpoints: frozenset[Endpoint]
    # Where the reference documents the model; elsewhere it answers "Model not exist.".
    regions: frozenset[Region] = BOTH
    # Uniform latency range in real seconds; multiplied by EmulatorConfig.time_scale.
    latency_s: tuple[float, float] = (5.0, 10.0)
    max_in_flight: int | None = None  # tasks in flight on the async routes; None: unlimited
    sync_in_flight: int | None = None  # calls in flight on the sync route; None: unlimited
    submits_per_s: float | None = None  # None: unlimited
    submits_per_min: float | None = None  # qwen-image-edit-max: 2 a minute
    requests_per_min: int | None = None  # judge (chat) models only
    tokens_per_min: int | None = None  # judge (chat) models only
    sizes: tuple[str, ...] | None = None  # exact sizes allowed; None: any within sides
    # (least, most) total pixels at 1:4-4:1, no per-side limit (wan2.5-t2i-preview)
    area: tuple[int, int] | None = None
    min_side: int = 512
    max_side: int = 1440
    default_size: str = "1024*1024"
    max_n: int = 4
    default_n: int = 4
    max_images: int = 1  # input images per request (edits)
    t2i: bool = False  # makes a picture from text alone (qwen-image-2.0: also edits)
    prompt_limit: int | None = None  # None: EmulatorConfig.max_prompt_chars
    prompt_extend_default: bool = True
    takes_prompt_extend: bool = True  # False: parameters.prompt_extend is refused
    quota_published: bool = True
    prices: dict[Region, float] = Field(default_factory=dict)  # list price of one image


def _t2i(
    name: str,
    latency: tuple[float, float],
    in_flight: int,
    per_s: float,
    regions: frozenset[Region] = BOTH,
    **extra: object,
) -> ModelSpec:
    """An async text-to-image model; ``extra`` sets any other ModelSpec field."""
    return ModelSpec.model_validate(
        {"name": name, "endpoints": {"text2image"}, "regions": regions, "latency_s": latency}
        | {"max_in_flight": in_flight, "submits_per_s": per_s, "t2i": True}
        | extra
    )


def _i2i(
    name: str,
    latency: tuple[float, float],
    in_flight: int,
    sides: tuple[int, int],
    regions: frozenset[Region] = BOTH,
    **extra: object,
) -> ModelSpec:
    """An async image-to-image model: as many submits a second as tasks in flight."""
    low, high = sides
    return ModelSpec.model_validate(
        {"name": name, "endpoints": {"image2image"}, "regions": regions, "latency_s": latency}
        | {"max_in_flight": in_flight, "submits_per_s": in_flight}
        | {"min_side": low, "max_side": high, "prompt_extend_default": False}
        | extra
    )


def _qwen_edit(name: str, per_s: float | None, per_min: float | None, max_n: int) -> ModelSpec:
    # Sync calls: no in-flight limit, only a call rate; 1-3 input images. prompt_extend:
    # not taken by qwen-image-edit, default true on -plus and -max (read 2026-02-08).
    return ModelSpec.model_validate(
        {"name": name, "endpoints": {"multimodal"}, "latency_s": (7.0, 14.0)}
        | {"max_in_flight": None, "submits_per_s": per_s, "submits_per_min": per_min}
        | {"min_side": 384, "max_side": 3072, "max_n": max_n, "default_n": 1, "max_images": 3}
        | {"prompt_extend_default": max_n > 1, "takes_prompt_extend": max_n > 1}
    )


def _qwen_image(
    name: str, per_s: float | None, per_min: float | None, *, async_too: bool
) -> ModelSpec:
    """The qwen-image family's text-to-image: sync (2 calls a second there and no in-flight
    cap), and for qwen-image and qwen-image-plus only also async (2 tasks in flight)."""
    endpoints = {"text2image", "multimodal"} if async_too else {"multimodal"}
    return ModelSpec.model_validate(
        {"name": name, "endpoints": endpoints, "latency_s": (8.0, 14.0), "t2i": True}
        | {"max_in_flight": 2, "sync_in_flight": None}
        | {"submits_per_s": per_s, "submits_per_min": per_min}
        | {"sizes": QWEN_IMAGE_SIZES, "default_size": "1664*928", "max_n": 1, "default_n": 1}
    )


def _sync_t2i(name: str, per_s: float | None, per_min: float | None, **extra: object) -> ModelSpec:
    """A sync model on the multimodal endpoint with a total-area rule (qwen-image-2.0,
    z-image-turbo), n 1."""
    return ModelSpec.model_validate(
        {"name": name, "endpoints": {"multimodal"}, "latency_s": (6.0, 12.0), "t2i": True}
        | {"submits_per_s": per_s, "submits_per_min": per_min, "area": (512 * 512, 2048**2)}
        | {"max_n": 1, "default_n": 1, "min_side": 384, "max_side": 3072}
        | extra
    )


def _wan_new(name: str, in_flight: int, per_s: float, **extra: object) -> ModelSpec:
    """The newer wan interface: async on image-generation/generation (polls answered with
    choices) and sync on multimodal-generation, the same in-flight cap on both."""
    return ModelSpec.model_validate(
        {"name": name, "endpoints": {"generation", "multimodal"}, "latency_s": (8.0, 15.0)}
        | {"max_in_flight": in_flight, "sync_in_flight": in_flight, "submits_per_s": per_s}
        | {"default_n": 1, "prompt_limit": 2000}
        | extra
    )


# wan2.7-image and its -pro: one interface, no quota published
_WAN_27: dict[str, object] = {
    "max_images": 9,
    "min_side": 240,
    "max_side": 8000,
    "max_n": 4,
    "prompt_limit": 5000,
    "quota_published": False,
    "takes_prompt_extend": False,
}


def _judge(name: str, rpm: int, tpm: int, published: bool) -> ModelSpec:
    """A Qwen-VL chat model (the judge): limited by requests and tokens a minute."""
    return ModelSpec.model_validate(
        {"name": name, "endpoints": {"chat"}, "latency_s": (1.0, 3.0)}
        | {"requests_per_min": rpm, "tokens_per_min": tpm, "quota_published": published}
        | {"max_n": 1, "default_n": 1, "prompt_extend_default": False}
    )


_WANX_V1_SIZES = ("1024*1024", "720*1280", "1280*720", "768*1152")
_UNSET = None  # a quota is a rate a second or a minute: the other is unset


def _priced(spec: ModelSpec, **prices: float) -> ModelSpec:
    return spec.model_copy(update={"prices": prices})


def default_models(region: Region = "cn") -> dict[str, ModelSpec]:
    """The model table as ``region`` enforces it (quotas that differ by region: wan2.6-t2i,
    the qwen3-vl judges); a fresh dict so callers may edit their copy. Prices: the
    reference's 2026 list prices (CNY; Singapore's as CNY-equivalents)."""
    cn = region == "cn"
    models = [
        _t2i("wanx2.1-t2i-turbo", (5.0, 9.0), 2, 2, CN),
        _t2i("wanx2.1-t2i-plus", (8.0, 15.0), 2, 2, CN),
        _t2i("wan2.1-t2i-turbo", (5.0, 9.0), 2, 2, INTL),
        _priced(_t2i("wan2.1-t2i-plus", (8.0, 15.0), 2, 2, INTL), intl=0.367),
        _t2i("wan2.2-t2i-flash", (4.0, 8.0), 2, 2),
        _t2i("wan2.2-t2i-plus", (7.0, 13.0), 2, 2),
        _priced(
            _t2i(
                "wan2.5-t2i-preview",
                (8.0, 15.0),
                5,
                5,
                prompt_limit=2000,
                area=(768 * 768, 1440 * 1440),
                default_size="1280*1280",
            ),
            intl=0.220,
        ),
        _t2i(
            "wanx-v1",
            (6.0, 12.0),
            1,
            2,
            CN,
            sizes=_WANX_V1_SIZES,
            prompt_extend_default=False,
            takes_prompt_extend=False,
        ),
        _wan_new(
            "wan2.6-t2i",
            5,
            1 if cn else 5,
            t2i=True,
            max_n=4,
            area=(1280 * 1280, 1440 * 1440),
            default_size="1280*1280",
        ),
        _priced(_qwen_image("qwen-image", 2, _UNSET, async_too=True), cn=0.25),
        _priced(_qwen_image("qwen-image-plus", 2, _UNSET, async_too=True), cn=0.20),
        _qwen_image("qwen-image-plus-2026-01-09", 2, _UNSET, async_too=False),
        _qwen_image("qwen-image-max", _UNSET, 2, async_too=False),
        _priced(_sync_t2i("qwen-image-2.0", 2, _UNSET, max_images=3), cn=0.2),
        _priced(_sync_t2i("qwen-image-2.0-pro", _UNSET, 2, max_images=3), cn=0.5),
        _sync_t2i("z-image-turbo", 2, _UNSET, prompt_extend_default=False),
        _i2i(
            "wanx2.1-imageedit",
            (6.0, 12.0),
            2,
            (512, 4096),
            CN,
            default_n=1,
            takes_prompt_extend=False,
        ),
        _i2i(
            "wan2.5-i2i-preview",
            (8.0, 15.0),
            5,
            (384, 5000),
            max_images=3,
            prompt_limit=2000,
            default_n=1,
        ),
        _wan_new(
            "wan2.6-image",
            5,
            5,
            max_images=4,
            min_side=384,
            max_side=5000,
            max_n=4,
            takes_prompt_extend=False,
        ),
        *(_wan_new(name, 2, 2, **_WAN_27) for name in ("wan2.7-image", "wan2.7-image-pro")),
        _priced(_qwen_edit("qwen-image-edit", 2, _UNSET, 1), cn=0.3, intl=0.330),
        _priced(_qwen_edit("qwen-image-edit-plus", 2, _UNSET, 6), cn=0.2, intl=0.220),
        _qwen_edit("qwen-image-edit-plus-2025-10-30", 2, _UNSET, 6),
        _qwen_edit("qwen-image-edit-plus-2025-12-15", 2, _UNSET, 6),
        _qwen_edit("qwen-image-edit-max", _UNSET, 2, 6),
        _qwen_edit("qwen-image-edit-max-2026-01-16", _UNSET, 2, 6),
        _judge("qwen-vl-max", 1200, 1_000_000, True),
        _judge("qwen-vl-plus", 1200, 1_000_000, True),
        _judge("qwen2.5-vl-72b-instruct", 60, 100_000, True),
        _judge("qwen3-vl-plus", 3000 if cn else 1200, 5_000_000 if cn else 1_000_000, True),
        _judge("qwen3-vl-flash", 3000 if cn else 1200, 5_000_000 if cn else 1_000_000, True),
    ]
    return {m.name: m for m in models}


IMAGE_EDIT_FUNCTIONS: frozenset[str] = frozenset(
    {
        "stylization_all",
        "stylization_local",
        "description_edit",
        "description_edit_with_mask",
        "remove_watermark",
        "expand",
        "super_resolution",
        "colorization",
        "doodle",
        "control_cartoon_feature",
    }
)


class EmulatorConfig(BaseModel):
    """Everything that shapes one emulator instance."""

    model_config = ConfigDict(validate_assignment=True)

    time_scale: float = Field(1.0, ge=0.0)  # 1.0 real latency, 0.05 benchmarks, 0 instant
    seed: int = 0
    quotas_enabled: bool = True  # off: no model quotas, no poll/judge rate limits
    faults: FaultConfig = Field(default_factory=FaultConfig)
    api_keys: frozenset[str] | None = None  # None: any non-empty key is accepted
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    # default: the table as ``region`` enforces it (default_models)
    models: dict[str, ModelSpec] = Field(default_factory=default_models)
    poll_qps: float = 20.0  # GET /tasks budget, account-wide
    # False: quota windows are real seconds whatever time_scale is (the brief's choice).
    scale_windows: bool = False
    task_ttl_s: float = 86400.0  # real seconds a finished task stays queryable
    url_ttl_s: float = 86400.0  # real seconds a result URL stays valid
    pending_fraction: tuple[float, float] = (0.05, 0.25)  # share of latency spent PENDING
    max_prompt_chars: int = 800
    max_negative_prompt_chars: int = 500
    max_input_image_bytes: int = 10 * 1024 * 1024
    timeline_cap: int = 200_000  # keep memory bounded in long soak runs
    max_result_files: int = 20_000  # oldest results (and uploads) are dropped beyond this
    # Which region a request is served as when its Host names none (dashscope-intl... = intl).
    region: Region = "cn"
    # Latency profile(s): "uniform:A:B" or "lognormal:MEDIAN:P99" (see latency.py), for every
    # model, or a {model: profile} dict ("*" for the rest); None keeps each model's latency_s.
    latency: str | dict[str, str] | None = None
    timestamps: bool = True  # False: polls omit submit/scheduled/end_time (benchmarks)
    billed_cap: int = 200_000  # the billing ledger keeps at most this many entries
    # how the judge writes its answers (runner.emulator.judge.Verdict.as_content): the bare
    # JSON object, or a form a real VLM gives (a fenced object in prose, a bare list, ...)
    judge_answers: Literal["json", "fenced", "list", "unquoted"] = "json"

    @model_validator(mode="before")
    @classmethod
    def _region_models(cls, data: object) -> object:
        # quotas differ by region: the default table is the configured region's
        if isinstance(data, dict) and "models" not in data and data.get("region") == "intl":
            return {**data, "models": default_models("intl")}
        return data

    @field_validator("faults", mode="before")
    @classmethod
    def _faults_shorthand(cls, value: object) -> object:
        # faults=0.2 means "20 % of answers get a transient fault" (soak tests).
        if isinstance(value, int | float) and not isinstance(value, bool):
            return FaultConfig(transient=float(value))
        return value

    @field_validator("latency")
    @classmethod
    def _latency_profiles(cls, value: str | dict[str, str] | None) -> object:
        profiles = [value] if isinstance(value, str) else list((value or {}).values())
        for profile in profiles:
            parse_profile(profile)  # raises ValueError with the reason
        return value

    def latency_profile(self, model: str) -> Profile | None:
        """The configured profile of `model`, or None (use its latency_s)."""
        if isinstance(self.latency, str):
            return parse_profile(self.latency)
        if isinstance(self.latency, dict):
            text = self.latency.get(model, self.latency.get("*"))
            return parse_profile(text) if text else None
        return None

    @classmethod
    def benchmark(cls, **overrides: object) -> EmulatorConfig:
        """Zero latency and no quotas: measures the client's own overhead."""
        base: dict[str, object] = {"time_scale": 0.0, "quotas_enabled": False}
        base.update(overrides)
        return cls.model_validate(base)

    def with_quota(
        self, model: str, max_in_flight: int | None = None, submits_per_s: float | None = None
    ) -> EmulatorConfig:
        """A copy with one model's quota replaced (for the unpublished ones): its in-flight
        cap on every route it is served on, and its submit rate."""
        models = dict(self.models)
        models[model] = models[model].model_copy(
            update={
                "max_in_flight": max_in_flight,
                "sync_in_flight": max_in_flight,
                "submits_per_s": submits_per_s,
            }
        )
        return self.model_copy(update={"models": models})
