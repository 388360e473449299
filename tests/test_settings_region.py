"""Settings after the reference: the SDK's environment variables only, regions, quotas."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SettingsError
from runner.models import caps, list_price
from runner.settings import load_settings

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
    assert cn.region == "cn" and cn.models["t2i"] == ["qwen-image-plus"]
    assert cn.models["tie"] == cn.models["vttie"] == ["qwen-image-edit-plus", "qwen-image-2.0"]
    intl = load_settings(base_url="https://dashscope-intl.aliyuncs.com/api/v1")
    assert intl.region == "intl"
    assert intl.models["t2i"] == ["wan2.5-t2i-preview"]
    assert intl.models["tie"] == intl.models["vttie"] == ["qwen-image-edit-plus"]
    assert intl.quota("wan2.1-t2i-turbo").in_flight == 2
    assert intl.quota("wan2.5-t2i-preview").in_flight == 5


def test_defaults_pay_the_least_for_each_capability() -> None:
    # item 4: every default has a built-in price in its region, and no cheaper documented
    # model of the same kind and route family is left out for a dearer one
    for region in ("cn", "intl"):
        s = load_settings(region=region)
        for kind, names in s.models.items():
            for name in names:
                assert list_price(name, region) is not None, (region, kind, name)
        assert "qwen-image-edit" not in s.models["tie"] + s.models["vttie"]  # 0.3 vs 0.2
    assert "qwen-image" not in load_settings(region="cn").models["t2i"]  # 0.25 vs plus 0.20
    assert "wan2.1-t2i-plus" not in load_settings(region="intl").models["t2i"]


def test_quotas_follow_the_region() -> None:
    # wan2.6-t2i: 5 a second in Singapore, 1 in Beijing, 5 in flight in both
    cn, intl = load_settings(region="cn"), load_settings(region="intl")
    assert (cn.quota("wan2.6-t2i").submits_per_second, cn.quota("wan2.6-t2i").in_flight) == (
        1,
        5,
    )
    assert intl.quota("wan2.6-t2i").submits_per_second == 5
    assert not cn.quota("wan2.5-t2i-preview").learn  # published in 2026: 5/5
    assert cn.quota("wan2.7-image").learn  # not published: learned from 429s


def test_region_setting_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DASHSCOPE_REGION", "ap-southeast-1")
    s = load_settings()
    assert (s.region, s.base_url) == ("intl", "https://dashscope-intl.aliyuncs.com/api/v1")
    monkeypatch.delenv("DASHSCOPE_REGION")
    (tmp_path / "settings.toml").write_text('region = "intl"\n[models]\nt2i = ["qwen-image"]\n')
    s = load_settings()
    assert s.region == "intl" and s.models["t2i"] == ["qwen-image"]
    assert s.models["tie"][0] == "qwen-image-edit-plus"  # the others from the region
    (tmp_path / "settings.toml").write_text('region = "mars"\n')
    with pytest.raises(SettingsError, match="region"):
        load_settings()


def test_documented_quotas_and_no_in_flight_limit(tmp_path: Path) -> None:
    s = load_settings()
    for model in ("qwen-image-edit", "qwen-image-edit-plus", "qwen-image", "qwen-image-2.0"):
        quota = s.quota(model)
        assert (quota.submits_per_second, quota.in_flight, quota.learn) == (2, None, False)
    assert s.quota("qwen-image-max").submits_per_second == pytest.approx(2 / 60)
    assert s.quota("wan2.2-t2i-flash").in_flight == 2 and not s.quota("wan2.2-t2i-flash").learn
    assert s.quota("wan2.5-i2i-preview").in_flight == 5
    (tmp_path / "settings.toml").write_text(
        '[quotas."wanx2.1-t2i-turbo"]\nin_flight = 0\n[quotas."qwen-image"]\nin_flight = "none"\n'
    )
    s = load_settings()
    assert s.quota("wanx2.1-t2i-turbo").in_flight is None
    assert s.quota("qwen-image").in_flight is None


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


def test_concurrency_defaults_to_what_the_quotas_need(tmp_path: Path) -> None:
    s = load_settings()
    assert not s.concurrency_given
    # sync lanes: 2 calls a second x the slowest documented latency (t2i 180 s, edits 15 s)
    need = {"qwen-image-plus": 360, "qwen-image-2.0": 360, "qwen-image-edit-plus": 30}
    assert s.concurrency == sum(need.values())
    assert load_settings(region="intl").concurrency == 5 + 30  # wan2.5's 5 in flight
    (tmp_path / "settings.toml").write_text("concurrency = 16\n")
    given = load_settings()
    assert (given.concurrency, given.concurrency_given) == (16, True)
    assert load_settings(concurrency=8).concurrency_given
    assert caps("qwen-image-plus").sync  # served both ways: sync, where no in-flight cap


def test_judge_url_follows_the_region() -> None:
    from pydantic import SecretStr

    from runner.backends.dashscope import ClientConfig

    for region, host in (("intl", "dashscope-intl"), ("cn", "dashscope")):
        s = load_settings(region=region)
        config = ClientConfig(base_url=s.base_url, api_key=SecretStr("sk-x"))
        assert config.compatible_base_url == f"https://{host}.aliyuncs.com/compatible-mode/v1"
