"""Prompt variants: plain sends the user's words as written; framed adds the project's frame
(t2i suffix, edit frames) in the prompt's language; +negative, +extend; the model's limit;
what was changed is said; a row's candidate prompts record the variant of every candidate."""

from __future__ import annotations

import pytest

from runner.prompts import (
    NEGATIVE_LIMIT,
    PROMPT_LIMIT,
    CandidatePrompts,
    build_prompt,
    detect_language,
    parse_variant,
    shorten,
)

STYLE_PROMPTS = [
    "水墨画风格",
    "水墨画风格的山水，远山近水，留白",
    "flat vector logo",
    "flat vector logo of a fox, two colours, no gradients",
    "Van Gogh oil painting of a harbour at night",
    "一家人 👨\u200d👩\u200d👧 在公园野餐",  # a ZWJ emoji sequence
    "a co\u00adop\u00aderative poster",  # soft hyphens
    "\u200fשלום\u200e sign on a café",  # direction marks
    "❤\ufe0f heart, 水墨\u3000风格",  # a variation selector, an ideographic space
]


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


@pytest.mark.parametrize("task_type", ["t2i", "tie", "vttie"])
@pytest.mark.parametrize("text", STYLE_PROMPTS)
def test_plain_sends_the_users_words_verbatim(task_type: str, text: str) -> None:
    sent = build_prompt(task_type, text, "plain")
    assert sent.sent == text  # every code point, in order
    assert sent.negative is None and not sent.extend and sent.changes == []
    assert sent.variant == "plain"
    assert build_prompt(task_type, text) == sent  # plain is the default


def test_framed_t2i_english_suffix_and_negative() -> None:
    sent = build_prompt("t2i", "A red fox in the snow", "framed+negative")
    assert sent.language == "en"
    assert sent.sent.startswith("A red fox in the snow. ")
    assert "sharp focus" in sent.sent and "photorealistic" in sent.sent.lower()
    assert sent.negative and "blurry" in sent.negative and "watermark" in sent.negative
    assert detect_language(sent.negative) == "en"
    assert sent.changes == [] and not sent.extend
    assert build_prompt("t2i", "A red fox", "framed").negative is None  # only with +negative


def test_framed_t2i_chinese_suffix_and_negative() -> None:
    sent = build_prompt("t2i", "一只橘猫坐在窗台上", "framed+negative")
    assert sent.language == "zh"
    assert sent.sent.startswith("一只橘猫坐在窗台上。")
    assert "高清" in sent.sent and "sharp" not in sent.sent
    assert sent.negative and "模糊" in sent.negative and "水印" in sent.negative
    assert detect_language(sent.sent) == "zh" and detect_language(sent.negative) == "zh"


def test_existing_sentence_end_not_doubled() -> None:
    assert build_prompt("t2i", "A cat.", "framed").sent.startswith("A cat. High")
    assert build_prompt("t2i", "一只猫！", "framed").sent.startswith("一只猫！高清")


def test_tie_frame_keeps_the_rest() -> None:
    en = build_prompt("tie", "change the shirt to gray", "framed")
    assert en.sent.startswith("change the shirt to gray. ")
    assert "Change only what this instruction names" in en.sent
    assert "keep everything else" in en.sent
    assert en.negative is None
    zh = build_prompt("tie", "把背景p成上海外滩", "framed")
    assert zh.sent.startswith("把背景p成上海外滩。")
    assert "只修改" in zh.sent and "保持不变" in zh.sent


def test_vttie_frame_keeps_font_and_size() -> None:
    en = build_prompt("vttie", "Replace the word SALE with OPEN", "framed")
    assert en.sent.startswith("Replace the word SALE with OPEN. ")
    for words in ("font", "font size", "other text unchanged"):
        assert words in en.sent
    zh = build_prompt("vttie", "把招牌文字改为“OPEN”", "framed")
    assert zh.language == "zh"
    for words in ("字体", "字号", "其他文字保持不变"):
        assert words in zh.sent


def test_extend_asks_the_service_and_changes_no_word() -> None:
    sent = build_prompt("t2i", "flat vector logo", "plain+extend")
    assert sent.extend and sent.sent == "flat vector logo" and sent.variant == "plain+extend"


def test_deepfake_sends_no_prompt() -> None:
    sent = build_prompt("deepfake", "")
    assert sent.sent == "" and sent.negative is None and sent.changes == []


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("plain", "plain"),
        ("framed", "framed"),
        ("plain+extend", "plain+extend"),
        ("framed+extend+negative", "framed+negative+extend"),
        (" framed + negative ", "framed+negative"),
    ],
)
def test_variant_names(name: str, canonical: str) -> None:
    assert parse_variant(name).name == canonical


@pytest.mark.parametrize(
    ("name", "task_type", "words"),
    [
        ("fancy", "t2i", "must start with plain or framed"),
        ("plain+extend+extend", "t2i", "each once"),
        ("plain+loud", "t2i", r"only \+negative and \+extend"),
        ("framed+negative", "tie", "t2i rows only"),
        ("framed", "deepfake", "no prompt"),
    ],
)
def test_unknown_variants_refused_in_one_line(name: str, task_type: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        parse_variant(name, task_type)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("task_type", ["t2i", "tie", "vttie"])
@pytest.mark.parametrize(
    ("sentence", "ends"),
    [
        ("The quick brown fox jumps over the lazy dog. ", "."),
        ("一只橘猫坐在阳光下的窗台上。", "。"),
    ],
)
@pytest.mark.parametrize("variant", ["plain", "framed"])
def test_long_prompt_cut_at_sentence_end_and_said(
    task_type: str, sentence: str, ends: str, variant: str
) -> None:
    long = (sentence * 400)[:5000]
    sent = build_prompt(task_type, long, variant)
    assert len(sent.sent) <= PROMPT_LIMIT
    assert any("at most 800" in c for c in sent.changes)
    # the user's words come first, cut right after a sentence end, then our frame/suffix
    user_part = sent.sent[: sent.sent.rfind(sentence.strip()) + len(sentence.strip())]
    assert long.startswith(user_part)
    assert user_part.endswith(ends)
    assert len(user_part) >= PROMPT_LIMIT // 2
    if variant == "framed":
        assert len(sent.sent) > len(user_part)  # the frame still follows
    if sent.negative is not None:
        assert len(sent.negative) <= NEGATIVE_LIMIT


def test_a_model_that_reads_more_gets_more() -> None:
    text = "A lighthouse on a cliff. " * 60  # 1500 characters
    assert build_prompt("t2i", text, limit=2000).sent == text.strip()
    assert len(build_prompt("t2i", text, limit=800).sent) <= 800


def test_prompt_without_sentence_ends_cut_at_a_word() -> None:
    # one huge "sentence": cut at a space, never inside a word; the frame still follows
    long = "word " * 1000
    sent = build_prompt("tie", long, "framed")
    assert len(sent.sent) <= PROMPT_LIMIT
    user_part = sent.sent[: sent.sent.index(".")]
    assert long.startswith(user_part + " ")
    assert user_part.endswith("word")
    assert "Change only what this instruction names" in sent.sent
    assert sent.changes


def test_near_limit_prompt_stays_whole_and_the_frame_gives_way() -> None:
    text = "x" * 700 + "."
    sent = build_prompt("t2i", text, "framed")
    assert sent.sent == text  # the words fit whole; the suffix did not
    assert sent.changes == ["frame left out: the prompt alone fills the model's 800 characters"]


def test_shorten_unchanged() -> None:
    assert shorten("short") == ("short", False)
    text = "A" * 500 + ". " + "B" * 500
    cut, was = shorten(text)
    assert was and cut == "A" * 500 + "."
    hard = "C" * 900
    assert shorten(hard) == ("C" * 800, True)


def test_candidate_prompts_record_the_variant_of_every_candidate() -> None:
    prompts = CandidatePrompts("t2i", "a cat", ["plain", "plain", "framed", "plain+extend"])
    assert prompts.want == 4
    assert [prompts.run_length(k) for k in range(4)] == [2, 1, 1, 1]
    first = prompts.send(0, 2)  # one request of n=2 for the two plain candidates
    assert first.sent == "a cat" and prompts.at(0) == prompts.at(1) == first
    assert prompts.send(2, 1).variant == "framed" and prompts.at(2).sent.startswith("a cat. High")
    assert prompts.at(3) is None  # nothing sent for it yet (or paid by an earlier run)
    assert prompts.send(3, 1).extend
