"""Settings precedence: CLI > env > --settings file > ./settings.toml > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SettingsError
from runner.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "DASHSCOPE_API_KEY",
        "DASHSCOPE_HTTP_BASE_URL",
        "DASHSCOPE_BASE_URL",
        "DASHSCOPE_REGION",
        "DASHSCOPE_API_KEY_FILE_PATH",
        "RUNNER_CONCURRENCY",
        "RUNNER_POLL_QPS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_equal_the_shipped_file() -> None:
    s = load_settings()
    repo = Path(__file__).resolve().parents[1] / "settings.toml"
    shipped = load_settings(repo)
    assert s.models == shipped.models
    assert {k: v.model_dump() for k, v in s.quotas.items()} == {
        k: v.model_dump() for k, v in shipped.quotas.items()
    }
    assert s.concurrency == shipped.concurrency and not s.concurrency_given
    assert s.models["tie"][0] == "qwen-image-edit-plus"
    assert s.quota("wanx2.1-t2i-turbo").in_flight == 2
    # sync qwen-image-edit: 2 calls a second, no in-flight limit (the reference)
    assert s.quota("qwen-image-edit").in_flight is None and not s.quota("qwen-image-edit").learn
    assert s.emulated


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "settings.toml").write_text("concurrency = 5\npoll_qps = 9\nsize = '512*512'\n")
    extra = tmp_path / "mine.toml"
    extra.write_text("concurrency = 6\npoll_qps = 8\n")
    assert load_settings().concurrency == 5
    s = load_settings(extra)
    assert (s.concurrency, s.poll_qps, s.size) == (6, 8, "512*512")
    monkeypatch.setenv("RUNNER_CONCURRENCY", "7")
    assert load_settings(extra).concurrency == 7
    assert load_settings(extra, concurrency=8).concurrency == 8


def test_quota_table_keys_are_the_interface(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text(
        '[models]\nt2i = ["wan2.2-t2i-flash"]\n[quotas."wan2.2-t2i-flash"]\n'
        "submits_per_second = 1\nin_flight = 3\n"
    )
    s = load_settings()
    assert s.models["t2i"] == ["wan2.2-t2i-flash"] and s.models["tie"][0] == "qwen-image-edit-plus"
    assert s.quota("wan2.2-t2i-flash").in_flight == 3
    assert s.quota("wanx2.1-imageedit").in_flight == 2  # untouched defaults stay


def test_key_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test123456789")
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", "http://127.0.0.1:9/api/v1")
    s = load_settings()
    assert s.key() == "sk-test123456789" and not s.emulated
    assert s.base_url == "http://127.0.0.1:9/api/v1"
    assert "sk-test" not in repr(s) and "sk-test" not in str(s.model_dump())
    monkeypatch.delenv("DASHSCOPE_API_KEY")
    keyfile = tmp_path / "key.txt"
    keyfile.write_text("sk-fromfile99999\n")
    assert load_settings(api_key_file=keyfile).key() == "sk-fromfile99999"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurrency = -1\n", "concurrency"),
        ("[models]\npaint = ['x']\n", "unknown task type"),
        ("size = '1024x1024'\n", "size"),
        ("nonsense = 1\n", "nonsense"),
        ("concurrency = \n", "settings"),
    ],
)
def test_bad_settings_one_line(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(bad)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_settings_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
