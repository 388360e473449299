"""The capability table (runner.models): endpoints, n, sizes, prompt limits, regions."""

from __future__ import annotations

import pytest

from runner.models import (
    QWEN_IMAGE_SIZES,
    aspect_ratio,
    caps,
    default_models,
    known_models,
    list_price,
    region_of_url,
    source_url,
)


def test_table_matches_the_reference() -> None:
    edit = caps("qwen-image-edit")
    assert (edit.endpoint, edit.sync, edit.n_max, edit.in_flight) == ("multimodal", True, 1, None)
    assert (edit.prompt_extend, edit.max_images) == (False, 3)  # 1-3 images, no prompt_extend
    plus = caps("qwen-image-edit-plus")
    assert (plus.sync, plus.n_max, plus.submits_per_second, plus.prompt_extend) == (
        True,
        6,
        2,
        True,
    )
    assert caps("qwen-image-edit-max").submits_per_second == pytest.approx(2 / 60)
    assert caps("wanx2.1-imageedit").regions == {"cn"}
    assert caps("wanx2.1-imageedit").input_style == "function"
    assert caps("wan2.1-t2i-turbo").regions == {"intl"}
    assert caps("wanx2.1-t2i-turbo").regions == {"cn"}
    i2i = caps("wan2.5-i2i-preview")
    assert (i2i.endpoint, i2i.input_style, i2i.in_flight, i2i.submits_per_second) == (
        "image2image",
        "images",
        5,
        5,
    )
    assert caps("wan2.5-t2i-preview").prompt_limit == 2000
    assert caps("wan2.2-t2i-plus").prompt_limit == 800
    assert all(caps(m).documented for m in known_models())


def test_item1_sync_only_models_are_sent_sync() -> None:
    # "only qwen-image-plus and qwen-image support the async interface"
    for model in ("qwen-image-max", "qwen-image-plus-2026-01-09"):
        found = caps(model)
        assert (found.endpoint, found.sync, found.other_route) == ("multimodal", True, None)
    assert caps("qwen-image-max").submits_per_second == pytest.approx(2 / 60)


def test_item2_served_both_ways_takes_the_faster_route() -> None:
    # sync where the sync route has no in-flight cap: 2 calls a second, whatever the latency
    for model in ("qwen-image", "qwen-image-plus"):
        found = caps(model)
        assert (found.endpoint, found.sync, found.in_flight, found.sizes) == (
            "multimodal",
            True,
            None,
            QWEN_IMAGE_SIZES,
        )
        other = found.on_other_route()
        assert other is not None
        assert (other.endpoint, other.input_style, other.in_flight) == ("text2image", "prompt", 2)
    # wan2.5: 5/5 published (no longer a guess), a total area instead of sides
    wan25 = caps("wan2.5-t2i-preview")
    assert (wan25.submits_per_second, wan25.in_flight, wan25.quota_published) == (5, 5, True)
    assert wan25.area == (768 * 768, 1440 * 1440)
    # an in-flight cap on both routes: async (a task id survives a crash)
    wan26 = caps("wan2.6-t2i")
    assert (wan26.endpoint, wan26.input_style, wan26.sync) == ("generation", "messages", False)
    assert wan26.on_other_route() is not None and wan26.on_other_route().sync  # type: ignore[union-attr]


def test_item3_newer_models_and_snapshots() -> None:
    assert caps("qwen-image-2.0").kinds == {"t2i", "edit"}
    assert caps("qwen-image-2.0").sync and caps("qwen-image-2.0-pro").sync
    assert caps("qwen-image-2.0-pro").submits_per_second == pytest.approx(2 / 60)
    assert caps("z-image-turbo").sync and caps("z-image-turbo").kinds == {"t2i"}
    for model in ("wan2.6-image", "wan2.7-image", "wan2.7-image-pro"):
        found = caps(model)
        assert (found.endpoint, found.kinds) == ("generation", {"edit"})
    assert caps("wan2.6-image").in_flight == 5 and not caps("wan2.7-image").quota_published
    for model in ("qwen-image-edit-plus-2025-10-30", "qwen-image-edit-plus-2025-12-15"):
        assert caps(model).n_max == 6 and caps(model).documented
    assert caps("qwen-image-edit-max-2026-01-16").submits_per_second == pytest.approx(2 / 60)
    # wan2.6-t2i: 5 a second in Singapore, 1 in Beijing, 5 in flight in both
    assert caps("wan2.6-t2i", "intl").quota_in("intl") == (5, 5)
    assert (caps("wan2.6-t2i", "cn").submits_per_second, caps("wan2.6-t2i", "cn").in_flight) == (
        1,
        5,
    )


def test_item5_prompt_extend_is_a_capability() -> None:
    takes = {m for m in known_models() if caps(m).prompt_extend}
    assert {"qwen-image-edit", "wanx2.1-imageedit", "wanx-v1"}.isdisjoint(takes)
    assert {"qwen-image-edit-plus", "qwen-image-edit-max", "qwen-image", "wan2.6-t2i"} <= takes


def test_area_rule_sizes() -> None:
    wan25 = caps("wan2.5-t2i-preview")
    for prompt in ("a cat", "16:9 street", "竖版海报", "21:9 panorama"):
        w, h = (int(x) for x in wan25.size_for(prompt, "1024*1024").split("*"))
        assert 768 * 768 <= w * h <= 1440 * 1440 and 0.25 <= w / h <= 4, prompt
    w, h = (int(x) for x in caps("wan2.6-t2i").size_for("a cat", "1024*1024").split("*"))
    assert w * h >= 1280 * 1280  # its least area is above 1024x1024: scaled up


@pytest.mark.parametrize(
    ("model", "endpoint", "sync", "n_max"),
    [
        ("qwen-image-edit-plus-2026-06-01", "multimodal", True, 6),
        ("qwen-image-edit-2509", "multimodal", True, 1),
        ("qwen-image-2025-08-01", "multimodal", True, 1),  # the family is served sync
        ("wanx2.1-imageedit-v2", "image2image", False, 4),
        ("wan2.6-i2i", "generation", False, 4),
        ("wan2.7-t2i", "generation", False, 4),
        ("local:flux", "local", True, 1),
        ("something-else", "text2image", False, 1),
    ],
)
def test_unknown_names_by_pattern(model: str, endpoint: str, sync: bool, n_max: int) -> None:
    found = caps(model)
    assert (found.endpoint, found.sync, found.n_max, found.documented) == (
        endpoint,
        sync,
        n_max,
        False,
    )


@pytest.mark.parametrize(
    ("prompt", "qwen", "wan"),
    [
        ("a red fox in snow", "1328*1328", "1024*1024"),
        ("电影海报，16:9，夜景", "1664*928", "1360*768"),
        ("竖版海报，一只猫", "928*1664", "768*1360"),
        ("a 4:3 photo of a kitchen", "1472*1104", "1184*880"),
        ("3：4 的人像", "1104*1472", "880*1184"),
        ("a clock showing 10:30 on a wall", "1328*1328", "1024*1024"),  # a time, not a shape
        ("a portrait of an old man", "1328*1328", "1024*1024"),  # a subject, not a shape
    ],
)
def test_size_follows_the_named_aspect_ratio(prompt: str, qwen: str, wan: str) -> None:
    assert caps("qwen-image").size_for(prompt, "1024*1024") == qwen
    assert caps("wanx2.1-t2i-turbo").size_for(prompt, "1024*1024") == wan


def test_size_keeps_an_allowed_default_and_the_sides() -> None:
    assert caps("qwen-image").size_for("a cat", "1664*928") == "1664*928"
    wide = caps("wan2.2-t2i-flash").size_for("21:9 panorama", "1440*1440")
    w, h = (int(x) for x in wide.split("*"))
    assert max(w, h) <= 1440 and min(w, h) >= 512 and w > h
    assert aspect_ratio("横版构图") == pytest.approx(16 / 9)
    assert aspect_ratio("nothing here") is None


def test_regions() -> None:
    assert region_of_url("https://dashscope-intl.aliyuncs.com/api/v1") == "intl"
    assert region_of_url("https://dashscope-us.aliyuncs.com/api/v1") == "intl"
    assert region_of_url("https://dashscope.aliyuncs.com/api/v1") == "cn"
    assert region_of_url("http://127.0.0.1:8000/api/v1") == "cn"
    for region in ("cn", "intl"):
        for kind, names in default_models(region).items():
            assert all(caps(n).served_in(region) for n in names), (region, names)
            want = "t2i" if kind == "t2i" else "edit"
            assert all(want in caps(n).kinds for n in names), (region, kind, names)
            assert all(list_price(n, region) is not None for n in names), (region, names)


def test_source_url_percent_encodes() -> None:
    assert (
        source_url("http://mirror.test/imgs/", "店铺 招牌.jpg")
        == "http://mirror.test/imgs/%E5%BA%97%E9%93%BA%20%E6%8B%9B%E7%89%8C.jpg"
    )
    assert source_url("http://m.test/a", "sub/x#1.png") == "http://m.test/a/sub/x%231.png"
