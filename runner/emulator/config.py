"""Emulator configuration: the model table (endpoints, limits, quotas, latency) and knobs.

Values come from the protocol reference (shared/reference/dashscope.md); the quotas the
provider does not publish (wan2.2-t2i-*, qwen-image-edit) get hidden defaults here that
tests and benchmarks can override with :meth:`EmulatorConfig.with_quota`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runner.emulator.faults import FaultConfig

Endpoint = Literal["text2image", "image2image", "multimodal", "chat"]

QWEN_IMAGE_SIZES: tuple[str, ...] = (
    "1664*928",
    "1472*1104",
    "1328*1328",
    "1104*1472",
    "928*1664",
)


class ModelSpec(BaseModel):
    """One model as the emulator serves it."""

    model_config = ConfigDict(frozen=True)

    name: str
    endpoints: frozenset[Endpoint]
    # Uniform latency range in real seconds; multiplied by EmulatorConfig.time_scale.
    latency_s: tuple[float, float] = (5.0, 10.0)
    max_in_flight: int | None = None  # None: unlimited
    submits_per_s: float | None = None  # None: unlimited
    requests_per_min: int | None = None  # judge (chat) models only
    sizes: tuple[str, ...] | None = None  # exact sizes allowed; None: any within sides
    min_side: int = 512
    max_side: int = 1440
    default_size: str = "1024*1024"
    max_n: int = 4
    default_n: int = 4
    prompt_extend_default: bool = True
    quota_published: bool = True


def _t2i(
    name: str, latency: tuple[float, float], in_flight: int, per_s: float, published: bool = True
) -> ModelSpec:
    return ModelSpec(
        name=name,
        endpoints=frozenset({"text2image"}),
        latency_s=latency,
        max_in_flight=in_flight,
        submits_per_s=per_s,
        quota_published=published,
    )


def default_models() -> dict[str, ModelSpec]:
    """The model table; a fresh dict so callers may edit their copy."""
    judge_models = ("qwen-vl-max", "qwen-vl-plus", "qwen2.5-vl-72b-instruct")
    models = [
        _t2i("wanx2.1-t2i-turbo", (5.0, 9.0), 2, 2),
        _t2i("wanx2.1-t2i-plus", (8.0, 15.0), 2, 2),
        _t2i("wan2.2-t2i-flash", (4.0, 8.0), 3, 2, published=False),
        _t2i("wan2.2-t2i-plus", (7.0, 13.0), 2, 2, published=False),
        ModelSpec(
            name="wanx-v1",
            endpoints=frozenset({"text2image"}),
            latency_s=(6.0, 12.0),
            max_in_flight=1,
            submits_per_s=2,
            sizes=("1024*1024", "720*1280", "1280*720", "768*1152"),
            prompt_extend_default=False,
        ),
        ModelSpec(
            name="qwen-image",
            endpoints=frozenset({"text2image", "multimodal"}),
            latency_s=(8.0, 14.0),
            max_in_flight=2,
            submits_per_s=2,
            sizes=QWEN_IMAGE_SIZES,
            default_size="1328*1328",
            max_n=1,
            default_n=1,
        ),
        ModelSpec(
            name="wanx2.1-imageedit",
            endpoints=frozenset({"image2image"}),
            latency_s=(6.0, 12.0),
            max_in_flight=2,
            submits_per_s=2,
            min_side=512,
            max_side=4096,
            default_n=1,
            prompt_extend_default=False,
        ),
        ModelSpec(
            name="qwen-image-edit",
            endpoints=frozenset({"multimodal"}),
            latency_s=(7.0, 14.0),
            max_in_flight=3,
            submits_per_s=2,
            min_side=384,
            max_side=3072,
            max_n=1,
            default_n=1,
            prompt_extend_default=False,
            quota_published=False,
        ),
    ]
    models += [
        ModelSpec(
            name=name,
            endpoints=frozenset({"chat"}),
            latency_s=(1.0, 3.0),
            requests_per_min=1200,
            max_n=1,
            default_n=1,
            prompt_extend_default=False,
            quota_published=name == "qwen-vl-max",
        )
        for name in judge_models
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

    @field_validator("faults", mode="before")
    @classmethod
    def _faults_shorthand(cls, value: object) -> object:
        # faults=0.2 means "20 % of answers get a transient fault" (soak tests).
        if isinstance(value, int | float) and not isinstance(value, bool):
            return FaultConfig(transient=float(value))
        return value

    @classmethod
    def benchmark(cls, **overrides: object) -> EmulatorConfig:
        """Zero latency and no quotas: measures the client's own overhead."""
        base: dict[str, object] = {"time_scale": 0.0, "quotas_enabled": False}
        base.update(overrides)
        return cls.model_validate(base)

    def with_quota(
        self, model: str, max_in_flight: int | None = None, submits_per_s: float | None = None
    ) -> EmulatorConfig:
        """A copy with one model's quota replaced (for the unpublished ones)."""
        models = dict(self.models)
        models[model] = models[model].model_copy(
            update={"max_in_flight": max_in_flight, "submits_per_s": submits_per_s}
        )
        return self.model_copy(update={"models": models})
