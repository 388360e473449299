"""Hostile settings: a settings file in the working folder must not decide where the key goes,
a key file must hold a key, and no setting may turn a wait into a hang. Each is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SettingsError
from runner.logs import REDACTED, scrub_text
from runner.settings import load_settings

KEY = "sk-0123456789abcdef0123456789abcdef"


pytestmark = pytest.mark.usefixtures("clean_env")


def _one_line(exc: pytest.ExceptionInfo[SettingsError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_plain_http_base_url_from_a_settings_file_is_refused_and_the_file_named(
    tmp_path: Path,
) -> None:
    (tmp_path / "settings.toml").write_text('base_url = "http://evil.example/api/v1"\n')
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = _one_line(info)
    assert "plain http" in text and str((tmp_path / "settings.toml").resolve()) in text


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/api/v1", "http://localhost:9/api/v1", "http://[::1]:9/api/v1"],
)
def test_plain_http_to_this_machine_is_allowed(url: str) -> None:
    assert load_settings(base_url=url).base_url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.0.0.5/api/v1", "plain http"),
        ("http://127.0.0.1.evil.example/api/v1", "plain http"),
        ("ftp://example.org/api/v1", "not an https URL"),
        ("https:///api/v1", "not an https URL"),
    ],
)
def test_other_base_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(base_url=url)
    text = _one_line(info)
    assert why in text and "set by the command line" in text


def test_where_base_url_came_from_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().base_url_from == "the built-in default"
    other = tmp_path / "mine.toml"
    other.write_text('base_url = "https://dashscope-intl.aliyuncs.com/api/v1"\n')
    s = load_settings(other)
    assert s.base_url_from == f"settings file {other.resolve()}"
    assert s.base_url == "https://dashscope-intl.aliyuncs.com/api/v1"
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", "http://127.0.0.1:9/api/v1")
    assert load_settings(other).base_url_from == "the environment (DASHSCOPE_HTTP_BASE_URL)"
    assert load_settings(other, base_url="https://x.example/api/v1").base_url_from == (
        "the command line"
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("myhostzz\n", "not shaped like a DashScope key"),  # /etc/hostname
        (f"root:{KEY}:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n", "2 non-empty lines"),
        (f"{KEY}\n{KEY}\n", "2 non-empty lines"),
        ("\n\n", "0 non-empty lines"),
        (f"export DASHSCOPE_API_KEY={KEY}\n", "not shaped like"),
        (f"{KEY} # mine\n", "not shaped like"),
    ],
)
def test_a_key_file_must_hold_one_line_shaped_like_a_key(
    tmp_path: Path, content: str, why: str
) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    s = load_settings(api_key_file=path)
    with pytest.raises(SettingsError) as info:
        s.key()
    text = _one_line(info)
    assert why in text and str(path) in text
    for shown in ("myhostzz", KEY, "19000", "export", "mine"):  # never the content
        assert shown not in text


def test_key_files_that_are_not_small_text_files(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100_000)
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 4)
    for path, why in (
        (big, "over 4096 bytes"),
        (binary, "not text"),
        (tmp_path, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),  # would read forever
    ):
        with pytest.raises(SettingsError) as info:
            load_settings(api_key_file=path).key()
        assert why in _one_line(info)


def test_a_good_key_file_is_read_and_its_key_redacted_from_then_on(tmp_path: Path) -> None:
    path = tmp_path / "dashscope.key"
    key = "sk-" + "7f" * 16
    path.write_text(f"\n  {key}  \n")
    assert load_settings(api_key_file=path).key() == key
    assert scrub_text(f"the server said {key[3:]}{key}") == f"the server said {key[3:]}{REDACTED}"


def test_a_key_with_a_line_break_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-abc\r\nX-Evil: 1")
    with pytest.raises(SettingsError) as info:
        load_settings().key()
    assert "control characters" in _one_line(info) and "Evil" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"poll_qps": 1e-6}, "poll_qps"),
        ({"quotas": {"wanx2.1-t2i-turbo": {"submits_per_second": 1e-9}}}, "submits_per_second"),
        ({"default_quota": {"submits_per_second": 0.0}}, "submits_per_second"),
        ({"request_timeout_s": 1e9}, "request_timeout_s"),
        ({"task_timeout_s": float("inf")}, "task_timeout_s"),
        ({"retry_after_cap_s": 86_400}, "retry_after_cap_s"),
        ({"backoff_max_s": float("nan")}, "backoff_max_s"),
        ({"sync_timeout_s": 7200}, "sync_timeout_s"),
        ({"poll_first_s": 1e6}, "poll_first_s"),
        ({"judge": {"requests_per_minute": 1e-6}}, "requests_per_minute"),
        ({"judge": {"tokens_per_minute": 1}}, "tokens_per_minute"),
    ],
)
def test_rates_and_waits_that_would_hang_the_run_are_refused(
    overrides: dict, field: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    assert field in _one_line(info)


def test_a_hanging_rate_in_a_settings_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("poll_qps = 1e-6\n")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "poll_qps" in _one_line(info)


def test_the_slowest_sane_rates_are_accepted() -> None:
    s = load_settings(
        poll_qps=0.1,
        quotas={"wanx2.1-t2i-turbo": {"submits_per_second": 0.01}},
        task_timeout_s=3600,
    )
    assert s.poll_qps == 0.1 and s.quota("wanx2.1-t2i-turbo").submits_per_second == 0.01
