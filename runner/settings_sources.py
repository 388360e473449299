"""Where setting values come from besides the files: the official SDK's variables, the API
key file, and which source decided the base URL (for messages).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from pydantic_settings import PydanticBaseSettingsSource

from runner.errors import SettingsError

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
