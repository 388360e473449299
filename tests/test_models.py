"""The capability table (runner.models): endpoints, n, sizes, prompt limits, regions."""

from __future__ import annotations

import pytest

from runner.models import (
    QWEN_IMAGE_SIZES,
    aspect_ratio,
    caps,
    default_models,
    known_models,
    region_of_url,
    source_url,
)


def test_table_matches_the_reference() -> None:
    edit = caps("qwen-image-edit")
    assert (edit.endpoint, edit.sync, edit.n_max, edit.in_flight) == ("multimodal", True, 1, None)
    plus = caps("qwen-image-edit-plus")
    assert (plus.sync, plus.n_max, plus.submits_per_second) == (True, 6, 2)
    qwen = caps("qwen-image")
    assert (qwen.endpoint, qwen.sync, qwen.n_max, qwen.sizes) == (
        "text2image",
        False,
        1,
        QWEN_IMAGE_SIZES,
    )
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


@pytest.mark.parametrize(
    ("model", "endpoint", "sync", "n_max"),
    [
        ("qwen-image-edit-plus-2025-10-30", "multimodal", True, 6),
        ("qwen-image-edit-2509", "multimodal", True, 1),
        ("qwen-image-2025-08-01", "text2image", False, 1),
        ("wanx2.1-imageedit-v2", "image2image", False, 4),
        ("wan2.6-i2i", "image2image", False, 4),
        ("wan2.6-t2i", "text2image", False, 4),
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
        for names in default_models(region).values():
            assert all(caps(n).served_in(region) for n in names), (region, names)


def test_source_url_percent_encodes() -> None:
    assert (
        source_url("http://mirror.test/imgs/", "店铺 招牌.jpg")
        == "http://mirror.test/imgs/%E5%BA%97%E9%93%BA%20%E6%8B%9B%E7%89%8C.jpg"
    )
    assert source_url("http://m.test/a", "sub/x#1.png") == "http://m.test/a/sub/x%231.png"
