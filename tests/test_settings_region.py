"""Settings after the reference: the SDK's environment variables only, regions, quotas."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SettingsError
from runner.settings import SINGLE_IMAGE_MODELS, SYNC_MODELS, load_settings

_ENV = (
    "DASHSCOPE_API_KEY",
    "DASHSCOPE_API_KEY_FILE_PATH",
    "DASHSCOPE_HTTP_BASE_URL",
    "DASHSCOPE_BASE_URL",
    "DASHSCOPE_REGION",
    "API_KEY",
    "BASE_URL",
    "RUNNER_REGION",
    "RUNNER_BASE_URL",
    "RUNNER_API_KEY",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_stray_unprefixed_names_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "sk-stray0000000000")
    monkeypatch.setenv("BASE_URL", "http://elsewhere.example/api")
    monkeypatch.setenv("api_key", "sk-stray1111111111")
    monkeypatch.setenv("base_url", "http://elsewhere.example/v2")
    s = load_settings()
    assert s.key() is None and s.emulated
    assert s.base_url == "https://dashscope.aliyuncs.com/api/v1"


def test_sdk_variables_and_their_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("sk-fromfile000000\n")
    monkeypatch.setenv("DASHSCOPE_API_KEY_FILE_PATH", str(keyfile))
    assert load_settings().key() == "sk-fromfile000000"
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-fromenv0000000")
    assert load_settings().key() == "sk-fromenv0000000"  # the key itself wins, as in the SDK

    monkeypatch.setenv("DASHSCOPE_BASE_URL", "https://dashscope-intl.aliyuncs.com")
    s = load_settings()
    assert s.base_url == "https://dashscope-intl.aliyuncs.com/api/v1" and s.region == "intl"
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", "http://127.0.0.1:9/api/v1")
    assert load_settings().base_url == "http://127.0.0.1:9/api/v1"  # the HTTP one wins


def test_region_from_base_url_picks_the_defaults() -> None:
    cn = load_settings()
    assert cn.region == "cn" and cn.models["t2i"][0] == "wanx2.1-t2i-turbo"
    intl = load_settings(base_url="https://dashscope-intl.aliyuncs.com/api/v1")
    assert intl.region == "intl"
    assert intl.models["t2i"] == ["wan2.1-t2i-turbo", "wan2.1-t2i-plus"]
    assert "wanx2.1-imageedit" not in intl.models["tie"] + intl.models["vttie"]
    assert intl.quota("wan2.1-t2i-turbo").in_flight == 2


def test_region_setting_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DASHSCOPE_REGION", "ap-southeast-1")
    s = load_settings()
    assert (s.region, s.base_url) == ("intl", "https://dashscope-intl.aliyuncs.com/api/v1")
    monkeypatch.delenv("DASHSCOPE_REGION")
    (tmp_path / "settings.toml").write_text('region = "intl"\n[models]\nt2i = ["qwen-image"]\n')
    s = load_settings()
    assert s.region == "intl" and s.models["t2i"] == ["qwen-image"]
    assert s.models["tie"][0] == "qwen-image-edit"  # the others from the region
    (tmp_path / "settings.toml").write_text('region = "mars"\n')
    with pytest.raises(SettingsError, match="region"):
        load_settings()


def test_documented_quotas_and_no_in_flight_limit(tmp_path: Path) -> None:
    s = load_settings()
    for model in ("qwen-image-edit", "qwen-image-edit-plus"):
        quota = s.quota(model)
        assert (quota.submits_per_second, quota.in_flight, quota.learn) == (2, None, False)
    assert s.quota("wan2.2-t2i-flash").in_flight == 2 and not s.quota("wan2.2-t2i-flash").learn
    assert s.quota("wan2.5-i2i-preview").in_flight == 5
    (tmp_path / "settings.toml").write_text(
        '[quotas."wanx2.1-t2i-turbo"]\nin_flight = 0\n[quotas."qwen-image"]\nin_flight = "none"\n'
    )
    s = load_settings()
    assert s.quota("wanx2.1-t2i-turbo").in_flight is None
    assert s.quota("qwen-image").in_flight is None
    assert s.judge.tokens_per_minute > 0


def test_models_accept_table_pattern_and_local_names(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text(
        '[models]\ntie = ["qwen-image-edit-plus", "qwen-image-edit-plus-2025-10-30", '
        '"local:flux-kontext"]\n'
        '[local."flux-kontext"]\npath = "models/FLUX.1-Kontext"\n'
    )
    assert load_settings().models["tie"][2] == "local:flux-kontext"
    for bad in ('"local:"', '"two words"', '" qwen-image"'):
        (tmp_path / "settings.toml").write_text(f"[models]\ntie = [{bad}]\n")
        with pytest.raises(SettingsError, match="models"):
            load_settings()


def test_thin_aliases_come_from_the_table() -> None:
    assert {"qwen-image-edit", "qwen-image-edit-plus"} <= SYNC_MODELS
    assert "wanx2.1-imageedit" not in SYNC_MODELS
    assert {"qwen-image", "qwen-image-edit"} <= SINGLE_IMAGE_MODELS
    assert "qwen-image-edit-plus" not in SINGLE_IMAGE_MODELS  # n 1-6 in one call


def test_judge_url_follows_the_region() -> None:
    from pydantic import SecretStr

    from runner.backends.dashscope import ClientConfig

    for region, host in (("intl", "dashscope-intl"), ("cn", "dashscope")):
        s = load_settings(region=region)
        config = ClientConfig(base_url=s.base_url, api_key=SecretStr("sk-x"))
        assert config.compatible_base_url == f"https://{host}.aliyuncs.com/compatible-mode/v1"
