"""Prompt building: language, t2i suffix + negative, edit frames, the 800-character limit."""

from __future__ import annotations

import pytest

from runner.prompts import (
    NEGATIVE_LIMIT,
    PROMPT_LIMIT,
    PromptPlan,
    build_prompt,
    detect_language,
    shorten,
)


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("一只橘猫坐在窗台上，阳光明媚", "zh"),
        ("把招牌文字改为“OPEN”", "zh"),
        ("把背景p成上海外滩", "zh"),
        ("A red fox in the snow, photorealistic", "en"),
        ("Change the text 'Hello' to '你好'", "en"),
        ("", "en"),
    ],
)
def test_detect_language(text: str, lang: str) -> None:
    assert detect_language(text) == lang


def test_t2i_english_suffix_and_negative() -> None:
    plan = build_prompt("t2i", "A red fox in the snow")
    assert isinstance(plan, PromptPlan)
    assert plan.language == "en"
    assert plan.original == "A red fox in the snow"
    assert plan.sent.startswith("A red fox in the snow. ")
    assert "sharp focus" in plan.sent and "photorealistic" in plan.sent.lower()
    assert plan.negative and "blurry" in plan.negative and "watermark" in plan.negative
    assert detect_language(plan.negative) == "en"
    assert not plan.shortened


def test_t2i_chinese_suffix_and_negative() -> None:
    plan = build_prompt("t2i", "一只橘猫坐在窗台上")
    assert plan.language == "zh"
    assert plan.sent.startswith("一只橘猫坐在窗台上。")
    assert "高清" in plan.sent and "sharp" not in plan.sent
    assert plan.negative and "模糊" in plan.negative and "水印" in plan.negative
    assert detect_language(plan.sent) == "zh" and detect_language(plan.negative) == "zh"


def test_existing_sentence_end_not_doubled() -> None:
    assert build_prompt("t2i", "A cat.").sent.startswith("A cat. High")
    assert build_prompt("t2i", "一只猫！").sent.startswith("一只猫！高清")


def test_tie_frame_keeps_the_rest() -> None:
    en = build_prompt("tie", "change the shirt to gray")
    assert en.sent.startswith("change the shirt to gray. ")
    assert "Change only what this instruction names" in en.sent
    assert "keep everything else" in en.sent
    assert en.negative is None
    zh = build_prompt("tie", "把背景p成上海外滩")
    assert zh.sent.startswith("把背景p成上海外滩。")
    assert "只修改" in zh.sent and "保持不变" in zh.sent


def test_vttie_frame_keeps_font_and_size() -> None:
    en = build_prompt("vttie", "Replace the word SALE with OPEN")
    assert en.sent.startswith("Replace the word SALE with OPEN. ")
    for words in ("font", "font size", "other text unchanged"):
        assert words in en.sent
    zh = build_prompt("vttie", "把招牌文字改为“OPEN”")
    assert zh.language == "zh"
    for words in ("字体", "字号", "其他文字保持不变"):
        assert words in zh.sent


def test_deepfake_sends_no_prompt() -> None:
    plan = build_prompt("deepfake", "")
    assert plan.sent == "" and plan.negative is None and not plan.shortened


def test_templates_off_sends_words_only() -> None:
    plan = build_prompt("t2i", "A red fox", templates=False)
    assert plan.sent == "A red fox" and plan.negative is None


@pytest.mark.parametrize("task_type", ["t2i", "tie", "vttie"])
@pytest.mark.parametrize(
    ("sentence", "ends"),
    [
        ("The quick brown fox jumps over the lazy dog. ", "."),
        ("一只橘猫坐在阳光下的窗台上。", "。"),
    ],
)
def test_long_prompt_cut_at_sentence_end(task_type: str, sentence: str, ends: str) -> None:
    long = (sentence * 400)[:5000]
    plan = build_prompt(task_type, long)
    assert len(plan.sent) <= PROMPT_LIMIT
    assert plan.shortened
    assert plan.original == long
    # the user's words come first, cut right after a sentence end, then our frame/suffix
    kept = plan.sent.split(ends)
    user_part = plan.sent[: plan.sent.rfind(sentence.strip()) + len(sentence.strip())]
    assert long.startswith(user_part)
    assert user_part.endswith(ends)
    assert len(user_part) >= PROMPT_LIMIT // 2
    assert len(kept) > 2
    if plan.negative is not None:
        assert len(plan.negative) <= NEGATIVE_LIMIT


def test_prompt_without_sentence_ends_cut_at_a_word() -> None:
    # one huge "sentence": cut at a space, never inside a word; the frame still follows
    long = "word " * 1000
    plan = build_prompt("tie", long)
    assert len(plan.sent) <= PROMPT_LIMIT
    user_part = plan.sent[: plan.sent.index(".")]
    assert long.startswith(user_part + " ")
    assert user_part.endswith("word")
    assert "Change only what this instruction names" in plan.sent
    assert plan.shortened


def test_near_limit_prompt_stays_whole_and_within_limit() -> None:
    text = "x" * 700 + "."
    plan = build_prompt("t2i", text)
    assert len(plan.sent) <= PROMPT_LIMIT
    assert plan.sent.startswith(text)  # the words fit whole; the suffix did not
    assert not plan.shortened


def test_shorten_unchanged() -> None:
    assert shorten("short") == ("short", False)
    text = "A" * 500 + ". " + "B" * 500
    cut, was = shorten(text)
    assert was and cut == "A" * 500 + "."
    hard = "C" * 900
    assert shorten(hard) == ("C" * 800, True)
