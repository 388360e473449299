"""Prices, the budget guard and the dry-run estimate (runner.cost)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cost import Budget, Lane, PriceBook, estimate, estimate_for, price_book
from runner.errors import SettingsError
from runner.models import PRICES_READ
from runner.settings import Quota, load_settings

INTL = PriceBook(region="intl", currency="USD", per_image={"wan2.1-t2i-turbo": 0.025, "b": 0.1})


def test_the_2026_list_prices_are_built_in_per_region() -> None:
    cn = price_book(load_settings(None))
    assert (cn.region, cn.currency) == ("cn", "CNY")
    assert (cn.price("qwen-image-edit"), cn.price("qwen-image-edit-plus")) == (0.3, 0.2)
    assert (cn.price("qwen-image"), cn.price("qwen-image-plus")) == (0.25, 0.20)
    assert (cn.price("qwen-image-2.0"), cn.price("qwen-image-2.0-pro")) == (0.2, 0.5)
    intl = price_book(load_settings(None, base_url="https://dashscope-intl.aliyuncs.com/api/v1"))
    assert (intl.region, intl.currency) == ("intl", "CNY")  # the page's CNY-equivalents
    assert intl.price("wan2.5-t2i-preview") == 0.220 and intl.price("wan2.1-t2i-plus") == 0.367
    assert intl.price("qwen-image-edit-plus") == 0.220
    assert intl.money(intl.cost("wan2.5-t2i-preview", 1000)) == "220.00 CNY"
    # nothing is guessed for a model or region the reference gives no price for
    assert cn.price("wanx2.1-t2i-turbo") is None and intl.price("qwen-image-plus") is None
    assert PRICES_READ.startswith("2026-")


def test_prices_table_from_a_settings_file_merges_over_defaults(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(
        '[prices.intl]\n"qwen-image-plus" = 0.22\n'
        '[prices.cn]\ncurrency = "CNY"\n"wanx2.1-t2i-turbo" = 0.14\n"qwen-image" = 0.3\n',
        encoding="utf-8",
    )
    s = load_settings(f)
    assert s.prices["intl"].per_image["qwen-image-plus"] == 0.22
    assert s.prices["intl"].per_image["wan2.5-t2i-preview"] == 0.220  # the built-in stays
    book = price_book(s)  # default base URL: Beijing
    assert (book.region, book.currency, book.price("wanx2.1-t2i-turbo")) == ("cn", "CNY", 0.14)
    assert book.price("qwen-image") == 0.3  # the setting overrides the built-in 0.25


def test_a_table_in_another_currency_replaces_the_built_in_one(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[prices.intl]\ncurrency = "USD"\n"wan2.1-t2i-turbo" = 0.025\n')
    book = price_book(load_settings(f, region="intl"))
    assert book.per_image == {"wan2.1-t2i-turbo": 0.025} and book.currency == "USD"


def test_negative_price_is_one_settings_line(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[prices.intl]\n"m" = -1\n', encoding="utf-8")
    with pytest.raises(SettingsError, match="negative"):
        load_settings(f)


def test_budget_refuses_the_request_that_would_pass_it() -> None:
    b = Budget(INTL, limit=0.1)
    assert b.allows("wan2.1-t2i-turbo", 2, {})  # 0.05
    assert b.allows("wan2.1-t2i-turbo", 2, {"wan2.1-t2i-turbo": 2})  # 0.10: the limit
    assert not b.allows("wan2.1-t2i-turbo", 1, {"wan2.1-t2i-turbo": 4})  # 0.125 passes it
    assert b.exhausted and "0.10 USD" in b.reason({"wan2.1-t2i-turbo": 4})


def test_budget_names_unpriced_models() -> None:
    b = Budget(INTL, limit=1.0)
    assert not b.allows("b", 1, {"b": 10})
    assert b.allows("unknown-model", 3, {})  # no price: no money counted
    assert b.unpriced(["b", "unknown-model", "wan2.1-t2i-turbo"]) == ["unknown-model"]
    assert Budget(INTL).allows("b", 10**6, {})  # no limit


def test_estimate_splits_by_rate_and_gives_the_quota_bound() -> None:
    a, b = "wan2.2-t2i-flash", "qwen-image"  # n up to 4 a request; n 1
    lanes = {
        a: Lane(submits_per_second=2, in_flight=2, latency_s=10.0),  # 0.2 req/s
        b: Lane(submits_per_second=2, in_flight=6, latency_s=10.0),  # 0.6 req/s
    }
    book = PriceBook(region="intl", currency="USD", per_image={b: 0.1})
    est = estimate({"t2i": 80, "deepfake": 5}, {"t2i": [a, b]}, {"t2i": 2}, lanes, book)
    plans = {p.model: p for p in est.models}
    assert plans[a].rows == pytest.approx(20) and plans[b].rows == pytest.approx(60)
    assert plans[a].images == pytest.approx(40) and plans[a].requests == pytest.approx(20)
    assert plans[b].requests == pytest.approx(120)  # one image a request
    assert plans[a].cost is None and plans[b].cost == pytest.approx(12.0)
    assert est.local_rows == 5
    assert est.duration_s == pytest.approx(140 / 0.8)


def test_estimate_shared_models_bound_by_the_tightest_group() -> None:
    lanes = {m: Lane(2, 2, 10.0) for m in ("x", "y", "z")}
    est = estimate(
        {"tie": 100, "vttie": 100, "t2i": 10},
        {"tie": ["x"], "vttie": ["x", "y"], "t2i": ["z"]},
        {},
        lanes,
        INTL,
    )
    # tie alone: 100 / 0.2 = 500 s; tie + vttie over x and y: 200 / 0.4 = 500 s
    assert est.duration_s == pytest.approx(500.0)


def test_prices_for_an_unknown_region_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[prices.beijing]\n"wanx2.1-t2i-turbo" = 0.14\n', encoding="utf-8")
    with pytest.raises(SettingsError, match="unknown region 'beijing'"):
        load_settings(f)


def test_requests_per_row_follow_each_models_n() -> None:
    names = ("wan2.2-t2i-flash", "qwen-image-edit-plus", "qwen-image")
    lanes = {m: Lane(2, 2, 10.0) for m in names}
    est = estimate(
        {"t2i": 10, "tie": 10},
        {"t2i": ["qwen-image"], "tie": ["qwen-image-edit-plus"]},
        {"t2i": 4, "tie": 6},
        lanes,
        INTL,
    )
    plans = {p.model: p for p in est.models}
    assert plans["qwen-image"].requests == pytest.approx(40)  # n 1: a request an image
    assert plans["qwen-image-edit-plus"].requests == pytest.approx(10)  # n up to 6


def test_sync_models_are_bound_by_their_rate_not_a_default_cap() -> None:
    # two sync models at 2 calls a second: 4 a second whatever the latency, unless the user
    # caps concurrency (then 8 in flight at 30 s: 0.27 a second)
    two = {"t2i": ["qwen-image-plus", "qwen-image-2.0"]}
    s = load_settings(None, expected_task_s=30.0, models=two)
    est = estimate_for(s, {"t2i": 400}, emulated=False)
    assert est.duration_s == pytest.approx(100.0)
    capped = load_settings(None, expected_task_s=30.0, concurrency=8, models=two)
    assert estimate_for(capped, {"t2i": 400}, emulated=False).duration_s > 500
    assert Quota().submits_per_second == 2  # the default quota of an unknown model
