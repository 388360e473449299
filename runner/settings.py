"""Settings: CLI > environment > ``--settings`` file > ``./settings.toml`` > built-in defaults.

The built-in defaults equal the repository's ``settings.toml``, so a run from any folder
behaves the same. Exactly the official SDK's variables are read without our prefix
(``DASHSCOPE_API_KEY``, ``DASHSCOPE_API_KEY_FILE_PATH``, ``DASHSCOPE_HTTP_BASE_URL``,
``DASHSCOPE_BASE_URL``, ``DASHSCOPE_REGION``), never ``API_KEY`` or ``BASE_URL``; everything
else may be set as ``RUNNER_<FIELD>`` (nested with ``__``, e.g.
``RUNNER_FACESWAP__BACKEND=classic``). The region (cn or intl) picks the default models.

In this file, in order: the tables (quotas; the sections ``[judge]``, ``[faceswap]``,
``[local."name"]``, ``[emulator]``; list prices; the defaults drawn from the capability
table, ``runner.models``); where values come from besides the files (the official SDK's
variables, the API key file, which source decided the base URL); ``Settings`` and
``load_settings``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from runner.errors import SettingsError
from runner.logs import add_secrets
from runner.models import (
    BASE_URLS,
    LIST_PRICES,
    PRICE_CURRENCY,
    REGIONS,
    caps,
    default_models,
    known_models,
    region_of_url,
)
from runner.prompts import parse_variant

__all__ = [
    "API_TASK_TYPES",
    "DEFAULT_BASE_URL",
    "MAX_WAIT_S",
    "MIN_POLL_QPS",
    "MIN_SUBMITS_PER_SECOND",
    "EmulatorSettings",
    "FaceSwapSettings",
    "JudgeSettings",
    "LocalModel",
    "Quota",
    "RegionPrices",
    "Settings",
    "TaskType",
    "load_settings",
]


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

    # false: no judge calls but to choose among the candidates [candidates] asks for (more
    # than one a row); face-swap variants then go by the swapper's local realism
    enabled: bool = True
    # qwen-vl-max, qwen-vl-plus, qwen3-vl-plus, qwen3-vl-flash, or qwen2.5-vl-72b-instruct
    # (GEdit-Bench's open judge; 60 requests and 100k tokens a minute)
    model: str = "qwen-vl-max"
    # None: half the model's published quota in the region (runner.backends.judge.pacing);
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


# What a key file must hold: one DashScope key (never a hostname or a password file's line).
_KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9_\-]{8,256}")
_KEY_FILE_MAX_BYTES = 4096

# DASHSCOPE_REGION values the SDK and the console use, mapped onto ours.
REGION_NAMES: dict[str, str] = {
    "cn": "cn",
    "cn-beijing": "cn",
    "beijing": "cn",
    "intl": "intl",
    "ap-southeast-1": "intl",
    "singapore": "intl",
    "us-east-1": "intl",
}


class DashScopeEnv(PydanticBaseSettingsSource):
    """Exactly the official SDK's variables, nothing un-prefixed (a stray ``API_KEY`` or
    ``BASE_URL`` in a shell must not become the key or the endpoint):
    DASHSCOPE_API_KEY before DASHSCOPE_API_KEY_FILE_PATH, DASHSCOPE_HTTP_BASE_URL before
    DASHSCOPE_BASE_URL (SDK 2.x), DASHSCOPE_REGION."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        env = os.environ
        found: dict[str, Any] = {}
        key = env.get("DASHSCOPE_API_KEY", "").strip()
        if key:
            found["api_key"] = key
        elif env.get("DASHSCOPE_API_KEY_FILE_PATH", "").strip():
            found["api_key_file"] = env["DASHSCOPE_API_KEY_FILE_PATH"].strip()
        base = env.get("DASHSCOPE_HTTP_BASE_URL", "").strip()
        if not base and env.get("DASHSCOPE_BASE_URL", "").strip():
            base = env["DASHSCOPE_BASE_URL"].strip().rstrip("/")
            if base.count("/") <= 2:  # a bare host root: the native API lives under /api/v1
                base += "/api/v1"
        if base:
            found["base_url"] = base
        region = env.get("DASHSCOPE_REGION", "").strip()
        if region:
            found["region"] = region
        return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: 127.0.0.1.evil.example is not this machine
        return False


def read_key_file(path: Path) -> str:
    path = path.expanduser()
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise SettingsError(f"api_key_file {path}: not a regular file")
        with open(path, "rb") as f:
            raw = f.read(_KEY_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise SettingsError(f"api_key_file {path}: {exc.strerror or exc}") from None
    if len(raw) > _KEY_FILE_MAX_BYTES:
        raise SettingsError(
            f"api_key_file {path}: over {_KEY_FILE_MAX_BYTES} bytes; a key file holds one "
            "line, the key"
        )
    try:
        lines = [ln.strip() for ln in raw.decode("utf-8-sig").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise SettingsError(f"api_key_file {path}: not text; it should hold one key") from None
    if len(lines) != 1:
        raise SettingsError(
            f"api_key_file {path}: {len(lines)} non-empty lines; a key file holds exactly "
            "one line, the key"
        )
    if not _KEY_SHAPE.fullmatch(lines[0]):
        raise SettingsError(
            f"api_key_file {path}: its line is not shaped like a DashScope key (sk- then "
            "letters and digits); is it the right file?"
        )
    return lines[0]


def base_url_origin(files: list[Path], overrides: dict[str, Any]) -> str:
    """Which source decides base_url, in the sources' order of precedence."""
    if overrides.get("base_url") is not None:
        return "the command line"
    env = {k.upper(): v for k, v in os.environ.items()}
    for name in ("RUNNER_BASE_URL", "DASHSCOPE_HTTP_BASE_URL", "DASHSCOPE_BASE_URL"):
        if env.get(name, "").strip():
            return f"the environment ({name})"
    for f in files:
        try:
            if "base_url" in tomllib.loads(f.read_text(encoding="utf-8")):
                return f"settings file {f.resolve()}"
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
    return "the built-in default"


DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
CANDIDATE_TYPES: tuple[str, ...] = (*API_TASK_TYPES, "deepfake")
MAX_CANDIDATES = 8


def auto_concurrency(settings: Settings) -> int:
    """What the configured models need in flight so that only their quotas bind: each
    model's in-flight limit (a learned one: the most it may probe up to), or for a model
    with none (a sync route) its call rate times the slowest documented latency of its
    kind (runner.models); a local model its slots. The pool raises it further while a run
    sees slower calls (``scheduling.lanes``)."""
    total = 0
    for name in sorted({m for names in settings.models.values() for m in names}):
        quota = settings.quota(name)
        if quota.in_flight is not None:
            total += quota.max_in_flight if quota.learn else quota.in_flight
        else:
            total += math.ceil(quota.submits_per_second * caps(name).latency_s[1])
    return max(1, total)


# Settings of old, and what to write instead. prompt_extend: the service rewrites a prompt
# unless parameters.prompt_extend says no, so it is sent explicitly to every model that takes
# it, as each candidate's variant says.
_GONE: dict[str, str] = {
    "prompt_templates": "prompt_templates is gone: name prompt variants in [candidates] "
    'instead (t2i = ["framed+negative+extend"] is the old default; README: Prompt variants)',
    "prompt_extend": "prompt_extend is a prompt variant now: name +extend in [candidates] "
    '(t2i = ["plain+extend"]); without it every model that takes it is sent false',
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RUNNER_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    # From DASHSCOPE_API_KEY / DASHSCOPE_API_KEY_FILE_PATH / DASHSCOPE_HTTP_BASE_URL /
    # DASHSCOPE_BASE_URL (see DashScopeEnv) or RUNNER_*; never from
    # un-prefixed names.
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    base_url: str = DEFAULT_BASE_URL
    # "cn" (Beijing) or "intl" (Singapore); "auto": from the base URL (dashscope-intl: intl).
    # Decides the default model lists, and the base URL when none is given.
    region: Literal["auto", "cn", "intl"] = "auto"
    image_base_url: str | None = None  # when set, sources are sent as this URL + file name

    # Most API requests in flight at once, over all models. 0 (the default): what the
    # configured models' quotas need (``auto_concurrency``), so that only the quotas bind;
    # a number caps it (the progress display and the summary say when that cap binds).
    concurrency: int = Field(0, ge=0)
    size: str = "1024*1024"
    edit_strength: float = Field(0.5, ge=0, le=1)
    seed: int | None = None

    # Missing task types get the region's defaults (runner.models.DEFAULT_MODELS).
    models: dict[str, list[str]] = Field(default_factory=dict)
    # the region's published quotas (runner.models) under these, model by model
    quotas: dict[str, Quota] = Field(default_factory=dict)
    default_quota: Quota = Field(default_factory=lambda: Quota(learn=True))

    # shared by every task; the account limit is 20
    poll_qps: float = Field(15.0, ge=MIN_POLL_QPS)
    # first look at a task of a model with no history
    poll_first_s: float = Field(0.5, gt=0, le=MAX_WAIT_S)
    request_timeout_s: float = Field(60.0, gt=0, le=MAX_WAIT_S)
    sync_timeout_s: float = Field(180.0, gt=0, le=MAX_WAIT_S)
    max_attempts: int = Field(6, ge=1)  # per row, across models, for retryable failures
    max_throttled: int = Field(200, ge=1)  # 429s one row may absorb before it gives up
    # a task still running after this is resubmitted
    task_timeout_s: float = Field(900.0, gt=0, le=MAX_WAIT_S)
    backoff_max_s: float = Field(8.0, gt=0, le=MAX_WAIT_S)
    retry_after_cap_s: float = Field(120.0, gt=0, le=MAX_WAIT_S)
    download_max_bytes: int = Field(40 * 1024 * 1024, gt=0)
    jpeg_quality: int = Field(95, ge=50, le=100)

    # per task type, one prompt variant per candidate (runner.prompts: plain, framed,
    # +negative, +extend); a number N is N plain candidates. Equal variants in a row share
    # one request where the model takes n (wanx: up to 4); the judge picks the best, the rest
    # stay under candidates/.
    candidates: dict[str, list[str]] = Field(
        default_factory=lambda: {t: ["plain"] for t in CANDIDATE_TYPES}
    )
    # --learned: each type's variants from the judge's verdicts of earlier runs in the output
    # folder (runner.backends.judge.wins): the winners first, only the winner when it wins
    # clearly
    learned: bool = False
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    faceswap: FaceSwapSettings = Field(default_factory=FaceSwapSettings)
    emulator: EmulatorSettings = Field(default_factory=EmulatorSettings)
    # local diffusers pipelines, named in [models] as "local:<name>" (runner.backends.local)
    local: dict[str, LocalModel] = Field(default_factory=dict)
    # a Ray cluster's address ("local": start one here): the local workers become actors
    ray: str | None = None
    # list prices per region and model (runner.cost); budget: most estimated spend a run may
    # commit, in the region's currency (None: no limit); expected_task_s: a task's typical
    # latency, for the dry run's duration before any has been observed
    prices: dict[str, RegionPrices] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    budget: float | None = Field(None, ge=0)
    # a paid request whose answer was lost may have been billed: its row fails, unless this
    # is set (--repay-uncertain), and then it is paid for again
    repay_uncertain: bool = False
    expected_task_s: float = Field(10.0, gt=0, le=MAX_WAIT_S)
    # which source set base_url (a settings file's path, the environment...), for messages
    _base_url_from: str = PrivateAttr("the built-in default")

    @field_validator("models")
    @classmethod
    def _models_known(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, names in v.items():
            if key not in API_TASK_TYPES:
                raise ValueError(f"[models] has unknown task type {key!r}")
            if not names:
                raise ValueError(f"[models] {key} lists no model")
            for name in names:
                # Any name: the table knows the documented ones, a pattern guesses the rest
                # (dated versions), "local:<name>" is a local model; doctor tells which.
                if not name.strip() or name != name.strip() or " " in name:
                    raise ValueError(f"[models] {key} has a malformed model name {name!r}")
                if name.startswith("local:") and not name.removeprefix("local:"):
                    raise ValueError(f"[models] {key}: 'local:' needs a model name after it")
        return v

    @field_validator("base_url")
    @classmethod
    def _key_only_over_https(cls, v: str) -> str:
        # The key goes to this address in every request's Authorization header.
        parts = urlsplit(v.strip())
        host = (parts.hostname or "").lower()
        if parts.scheme == "https" and host:
            return v.strip()
        if parts.scheme == "http" and is_loopback(host):
            return v.strip()  # the emulator, tests: the key never leaves this machine
        if parts.scheme == "http":
            raise ValueError(
                f"{v!r} is plain http to another machine: the key would travel unencrypted; "
                "use https (plain http only to 127.0.0.1, ::1 or localhost)"
            )
        raise ValueError(f"{v!r} is not an https URL")

    @field_validator("region", mode="before")
    @classmethod
    def _region_name(cls, v: Any) -> Any:
        if isinstance(v, str):
            name = REGION_NAMES.get(v.strip().lower())
            if name is None and v.strip().lower() != "auto":
                raise ValueError(f"region must be cn or intl, not {v!r}")
            return name or "auto"
        return v

    @model_validator(mode="after")
    def _region_defaults(self) -> Settings:
        if self.region == "auto":
            self.region = region_of_url(self.base_url)
        elif "base_url" not in self.model_fields_set:
            self.base_url = BASE_URLS[self.region]
        self.models = {**default_models(self.region), **self.models}
        self.quotas = {**default_quotas(self.region), **self.quotas}
        return self

    @model_validator(mode="after")
    def _local_tables(self) -> Settings:
        for kind, names in self.models.items():
            for name in names:
                local = name.removeprefix("local:")
                if name.startswith("local:") and local not in self.local:
                    raise ValueError(
                        f'[models] {kind} lists {name} but there is no [local."{local}"] '
                        f'table: add one with path = "<a diffusers pipeline folder>"'
                    )
        return self

    @model_validator(mode="before")
    @classmethod
    def _gone(cls, data: Any) -> Any:
        """A setting of old that is said otherwise now: one line on what to write instead."""
        if isinstance(data, dict):
            for key, instead in _GONE.items():
                if key in data:
                    raise ValueError(instead)
        return data

    @field_validator("candidates", mode="before")
    @classmethod
    def _candidates_form(cls, v: Any) -> Any:
        """A number N is N plain candidates (the settings of old)."""
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for key, names in v.items():
            if isinstance(names, int) and not isinstance(names, bool):
                if not 1 <= names <= MAX_CANDIDATES:
                    raise ValueError(
                        f"[candidates] {key} must be 1 to {MAX_CANDIDATES}, not {names}"
                    )
                names = ["plain"] * names
            elif isinstance(names, str):
                names = [names]
            out[key] = names
        return out

    @field_validator("candidates")
    @classmethod
    def _candidates_known(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, names in v.items():
            if key not in CANDIDATE_TYPES:
                raise ValueError(f"[candidates] has unknown task type {key!r}")
            if not 1 <= len(names) <= MAX_CANDIDATES:
                raise ValueError(
                    f"[candidates] {key} must list 1 to {MAX_CANDIDATES} variants, not {len(names)}"
                )
            try:
                v[key] = [parse_variant(name, key).name for name in names]
            except ValueError as exc:
                raise ValueError(f"[candidates] {key}: {exc}") from None
        return {**{t: ["plain"] for t in CANDIDATE_TYPES}, **v}

    @field_validator("prices")
    @classmethod
    def _merge_prices(cls, v: dict[str, RegionPrices]) -> dict[str, RegionPrices]:
        merged = dict(DEFAULT_PRICES)
        for region, table in v.items():
            if region not in BASE_URLS:  # [prices.beijing] would never be read: say so
                raise ValueError(f"[prices] has unknown region {region!r} (one of cn, intl)")
            base = merged.get(region)
            if base is None or (table.currency and table.currency != base.currency):
                merged[region] = table  # another currency: the built-in figures do not mix
            else:
                merged[region] = RegionPrices(
                    currency=table.currency or base.currency,
                    per_image={**base.per_image, **table.per_image},
                )
        return merged

    @model_validator(mode="after")
    def _auto_concurrency(self) -> Settings:
        # after the region's models and quotas are in: 0 becomes what they need
        if self.concurrency == 0:
            self.concurrency = auto_concurrency(self)
            self.__pydantic_fields_set__.discard("concurrency")
        return self

    @field_validator("size")
    @classmethod
    def _size_form(cls, v: str) -> str:
        w, _, h = v.partition("*")
        if not (w.isdigit() and h.isdigit()):
            raise ValueError(f"size must look like 1024*1024, not {v!r}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            DashScopeEnv(settings_cls),
        ]
        for path in _toml_files:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # --- derived -------------------------------------------------------------
    def quota(self, model: str) -> Quota:
        spec = self.local.get(model.removeprefix("local:")) if model.startswith("local:") else None
        if spec is not None:
            # a local lane's slots are its devices x batch; there is no submit rate to respect
            from runner.devices import device_list

            slots = len(device_list(spec.devices)) * spec.batch
            return Quota(submits_per_second=1000.0, in_flight=slots, max_in_flight=slots)
        return self.quotas.get(model, self.default_quota)

    @property
    def concurrency_given(self) -> bool:
        """Whether the overall cap is the user's (a setting, the environment, the command
        line), not the figure the quotas need."""
        return "concurrency" in self.model_fields_set

    def variants(self, task_type: str) -> list[str]:
        """The prompt variants of a type's candidates, one per candidate (a number left by
        ``model_copy``, which skips validation, is that many plain candidates)."""
        names: Any = self.candidates.get(task_type, ["plain"])
        return ["plain"] * names if isinstance(names, int) else list(names)

    def candidate_counts(self) -> dict[str, int]:
        """Candidates per task type."""
        return {t: len(self.variants(t)) for t in self.candidates}

    @property
    def base_url_from(self) -> str:
        """Where base_url came from: a settings file's path, the environment, the command
        line or the built-in default."""
        return self._base_url_from

    def key(self) -> str | None:
        """The API key, from the environment or the file the settings name. Raises
        SettingsError (one line, never the file's content) for a key file that does not hold
        exactly one line shaped like a key."""
        key: str | None = None
        if self.api_key is not None and self.api_key.get_secret_value().strip():
            key = self.api_key.get_secret_value().strip()
            if any(not ch.isprintable() or ch.isspace() for ch in key):
                raise SettingsError("the API key holds spaces or control characters")
        elif self.api_key_file is not None:
            key = read_key_file(self.api_key_file)
        add_secrets(key)  # from here on, scrub_text removes it wherever it turns up
        return key

    @property
    def emulated(self) -> bool:
        return self.key() is None


# Filled by load_settings just before construction; pydantic-settings reads sources from the
# class, so the file list travels through this module-level value.
_toml_files: list[Path] = []


def load_settings(settings_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from every source; ``overrides`` are the CLI's (highest priority).

    Raises SettingsError with one readable line on any problem.
    """
    files: list[Path] = []
    if settings_file is not None:
        if not settings_file.is_file():
            raise SettingsError(f"settings file {settings_file} does not exist")
        files.append(settings_file)
    local = Path("settings.toml")
    if local.is_file() and (settings_file is None or local.resolve() != settings_file.resolve()):
        files.append(local)
    for f in files:
        try:
            data = tomllib.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue  # reported below, in pydantic-settings' words
        if "api_key" in data or "DASHSCOPE_API_KEY" in data:
            raise SettingsError(
                f"settings: {f} holds an API key; keep keys out of settings files: set "
                "DASHSCOPE_API_KEY, or name a key file in api_key_file"
            )
    global _toml_files
    _toml_files = files
    origin = base_url_origin(files, overrides)
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        settings._base_url_from = origin
        return settings
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        if where == "base_url":
            where = f"base_url (set by {origin})"
        raise SettingsError(f"settings: {where}: {err.get('msg')}") from None
    except Exception as exc:  # a TOML syntax error and the like
        raise SettingsError(f"settings: {exc}") from None
    finally:
        _toml_files = []
