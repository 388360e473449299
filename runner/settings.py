"""Settings: CLI > environment > ``--settings`` file > ``./settings.toml`` > built-in defaults.

The built-in defaults equal the repository's ``settings.toml``, so a run from any folder
behaves the same. ``DASHSCOPE_API_KEY`` and ``DASHSCOPE_HTTP_BASE_URL`` are read without
a prefix because the official SDK reads those two names; everything else may be set as
``RUNNER_<FIELD>`` (nested with ``__``, e.g. ``RUNNER_FACESWAP__BACKEND=classic``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import SettingsError

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
TaskType = Literal["t2i", "tie", "vttie", "deepfake"]
API_TASK_TYPES: tuple[str, ...] = ("t2i", "tie", "vttie")


class Quota(BaseModel):
    """What one model allows per account. ``learn`` = not published: adapt from 429s."""

    submits_per_second: float = Field(2.0, gt=0)
    in_flight: int = Field(2, ge=1)
    learn: bool = False
    max_in_flight: int = Field(8, ge=1)  # the ceiling a learned limit may probe up to


class FaceSwapSettings(BaseModel):
    backend: str = "auto"  # "inswapper", "classic" or "auto" (inswapper when its weights exist)
    models_dir: Path = Path("models")
    workers: int = Field(0, ge=0)  # 0: chosen from the cores and the backend
    candidates: int = Field(1, ge=1)


class JudgeSettings(BaseModel):
    """The VIEScore judge on DashScope's OpenAI-compatible endpoint."""

    enabled: bool = True  # score candidates (always when a row has more than one)
    model: str = "qwen-vl-max"
    requests_per_minute: float = Field(600.0, gt=0)  # qwen-vl-max allows 1,200
    budget: int = Field(3000, ge=0)  # most judge calls in one run
    max_side: int = Field(1024, ge=256)  # images are shrunk to this before sending


class EmulatorSettings(BaseModel):
    """The embedded DashScope emulator started when no API key is set."""

    time_scale: float = Field(0.1, gt=0)  # 1.0 = the real 5-15 s latency
    seed: int = 0
    faults: float = Field(0.0, ge=0, le=1)  # share of answers made faulty on purpose


_DEFAULT_MODELS: dict[str, list[str]] = {
    "t2i": ["wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wan2.2-t2i-flash"],
    "tie": ["wanx2.1-imageedit", "qwen-image-edit"],
    "vttie": ["qwen-image-edit", "wanx2.1-imageedit"],
}

_DEFAULT_QUOTAS: dict[str, Quota] = {
    "wanx2.1-t2i-turbo": Quota(submits_per_second=2, in_flight=2),
    "wanx2.1-t2i-plus": Quota(submits_per_second=2, in_flight=2),
    "wanx2.1-imageedit": Quota(submits_per_second=2, in_flight=2),
    "qwen-image": Quota(submits_per_second=2, in_flight=2),
    "wanx-v1": Quota(submits_per_second=2, in_flight=1),
    "wan2.2-t2i-flash": Quota(submits_per_second=2, in_flight=2, learn=True),
    "wan2.2-t2i-plus": Quota(submits_per_second=2, in_flight=2, learn=True),
    "qwen-image-edit": Quota(submits_per_second=2, in_flight=2, learn=True),
}

# Models whose answers are synchronous (multimodal-generation): they hold a slot for the
# whole call and have no task id to journal.
SYNC_MODELS = frozenset({"qwen-image-edit"})
# Models that return one image a request (n must be 1): candidates are separate requests.
SINGLE_IMAGE_MODELS = frozenset({"qwen-image-edit", "qwen-image"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RUNNER_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DASHSCOPE_API_KEY", "api_key")
    )
    api_key_file: Path | None = None
    base_url: str = Field(
        DEFAULT_BASE_URL, validation_alias=AliasChoices("DASHSCOPE_HTTP_BASE_URL", "base_url")
    )
    image_base_url: str | None = None  # when set, sources are sent as this URL + file name

    concurrency: int = Field(32, ge=1)
    size: str = "1024*1024"
    edit_strength: float = Field(0.5, ge=0, le=1)
    prompt_extend: bool = True
    seed: int | None = None

    models: dict[str, list[str]] = Field(default_factory=lambda: dict(_DEFAULT_MODELS))
    quotas: dict[str, Quota] = Field(default_factory=lambda: dict(_DEFAULT_QUOTAS))
    default_quota: Quota = Field(default_factory=lambda: Quota(learn=True))

    poll_qps: float = Field(15.0, gt=0)  # shared by every task; the account limit is 20
    poll_first_s: float = Field(0.5, gt=0)  # first look at a task of a model with no history
    request_timeout_s: float = Field(60.0, gt=0)
    sync_timeout_s: float = Field(180.0, gt=0)
    max_attempts: int = Field(6, ge=1)  # per row, across models, for retryable failures
    max_throttled: int = Field(200, ge=1)  # 429s one row may absorb before it gives up
    task_timeout_s: float = Field(900.0, gt=0)  # a task still running after this is resubmitted
    backoff_max_s: float = Field(8.0, gt=0)
    retry_after_cap_s: float = Field(120.0, gt=0)
    download_max_bytes: int = Field(40 * 1024 * 1024, gt=0)
    jpeg_quality: int = Field(95, ge=50, le=100)

    # candidates per task type: wanx models take n up to 4 in one request; others get
    # separate seeded requests. The judge picks the best; the rest stay under candidates/.
    candidates: dict[str, int] = Field(
        default_factory=lambda: {"t2i": 1, "tie": 1, "vttie": 1, "deepfake": 1}
    )
    prompt_templates: bool = True  # quality suffix / edit frame (runner.prompts)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    faceswap: FaceSwapSettings = Field(default_factory=FaceSwapSettings)
    emulator: EmulatorSettings = Field(default_factory=EmulatorSettings)

    @field_validator("models")
    @classmethod
    def _models_known(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, names in v.items():
            if key not in API_TASK_TYPES:
                raise ValueError(f"[models] has unknown task type {key!r}")
            if not names:
                raise ValueError(f"[models] {key} lists no model")
        return {**_DEFAULT_MODELS, **v}

    @field_validator("candidates")
    @classmethod
    def _candidates_range(cls, v: dict[str, int]) -> dict[str, int]:
        for key, n in v.items():
            if key not in (*API_TASK_TYPES, "deepfake"):
                raise ValueError(f"[candidates] has unknown task type {key!r}")
            if not 1 <= n <= 8:
                raise ValueError(f"[candidates] {key} must be 1 to 8, not {n}")
        return {"t2i": 1, "tie": 1, "vttie": 1, "deepfake": 1, **v}

    @field_validator("quotas")
    @classmethod
    def _merge_quotas(cls, v: dict[str, Quota]) -> dict[str, Quota]:
        return {**_DEFAULT_QUOTAS, **v}

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        for path in _toml_files:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # --- derived -------------------------------------------------------------
    def quota(self, model: str) -> Quota:
        return self.quotas.get(model, self.default_quota)

    def key(self) -> str | None:
        """The API key, from the environment or the file the settings name."""
        if self.api_key is not None and self.api_key.get_secret_value().strip():
            return self.api_key.get_secret_value().strip()
        if self.api_key_file is not None:
            try:
                text = self.api_key_file.expanduser().read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SettingsError(
                    f"api_key_file {self.api_key_file}: {exc.strerror or exc}"
                ) from None
            return text or None
        return None

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
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise SettingsError(f"settings: {where}: {err.get('msg')}") from None
    except Exception as exc:  # a TOML syntax error and the like
        raise SettingsError(f"settings: {exc}") from None
    finally:
        _toml_files = []
