"""The client's configuration, its constants and the User-Agent it sends.

httpx style: nothing is read from the environment here; the settings layer maps
DASHSCOPE_API_KEY / DASHSCOPE_HTTP_BASE_URL onto :class:`ClientConfig`.
"""

from __future__ import annotations

from importlib import metadata
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["USER_AGENT", "ClientConfig"]

MiB = 1024 * 1024

T2I_PATH = "/services/aigc/text2image/image-synthesis"
I2I_PATH = "/services/aigc/image2image/image-synthesis"
MULTIMODAL_PATH = "/services/aigc/multimodal-generation/generation"
# the newer async interface (wan2.6 / wan2.7): messages input, polls answered with choices
GENERATION_PATH = "/services/aigc/image-generation/generation"
CHUNK = 64 * 1024
ERROR_BODY_MAX = 64 * 1024  # error bodies are small; never buffer a huge one
# A sync call holds its connection for its whole latency: at 2 calls a second and 30 s that
# is 60 per model, and the overall cap defaults to what the quotas need. The connector must
# not bind before them (the lanes and the cap bound the requests; polls share 20 a second).
CONNECTION_LIMIT = 1024  # API host + OSS host together
CONNECTION_LIMIT_PER_HOST = 768


def _user_agent() -> str:
    try:
        version = metadata.version("runner")
    except metadata.PackageNotFoundError:
        version = "0.1.0"
    return f"runner/{version} (quota-aware DashScope job runner; aiohttp/{aiohttp.__version__})"


USER_AGENT = _user_agent()


class ClientConfig(BaseModel):
    """Explicit client configuration: URLs, the key, timeouts, retries and the breaker."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: SecretStr
    timeout_s: float = Field(60.0, gt=0)  # per request, connect + read
    sync_timeout_s: float = Field(180.0, gt=0)  # multimodal-generation is sync and slow
    max_retries: int = Field(4, ge=0)  # idempotent GETs only (poll, download)
    backoff_max_s: float = Field(8.0, gt=0)
    retry_after_cap_s: float = Field(120.0, gt=0)
    download_max_bytes: int = Field(40 * MiB, gt=0)
    compatible_base_url: str | None = None  # None: derived from base_url
    connect_timeout_s: float = Field(10.0, gt=0)  # a connect slower than this is a failure
    # Circuit breaker: this long of nothing but connection failures to a host stops the run.
    breaker_window_s: float = Field(30.0, ge=0)
    breaker_min_failures: int = Field(3, ge=1)

    @field_validator("base_url", "compatible_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _strip_key(cls, value: object) -> object:
        # A pasted key often carries a newline; stripping here never raises, so a bad key is
        # never echoed back in a ValidationError.
        if isinstance(value, SecretStr):
            return SecretStr(value.get_secret_value().strip())
        if isinstance(value, str):
            return value.strip()
        return value

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("api_key is empty")
        return value

    @model_validator(mode="after")
    def _derive_compatible(self) -> ClientConfig:
        if self.compatible_base_url is None:
            if self.base_url.endswith("/api/v1"):
                self.compatible_base_url = self.base_url[: -len("/api/v1")] + "/compatible-mode/v1"
            else:
                parts = urlsplit(self.base_url)
                self.compatible_base_url = f"{parts.scheme}://{parts.netloc}/compatible-mode/v1"
        return self
