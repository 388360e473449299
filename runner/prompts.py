"""Prompt text as sent to the API: within its limits, shortened on purpose when too long.

``build_prompt`` turns a task's prompt into what is sent: t2i prompts get a quality/realism
suffix in the prompt's own language and a negative prompt; edit prompts get a frame that asks
to change only what is named and keep the rest (vttie: keep font, size and the other text).
The user's words always come first; when something must give way to the 800-character limit,
the frame goes before the user's words do.
"""

from __future__ import annotations

import re
from typing import Literal

import structlog
from pydantic import BaseModel

log = structlog.get_logger(__name__)

PROMPT_LIMIT = 800  # characters; the service cuts longer prompts silently
NEGATIVE_LIMIT = 500

_SENTENCE_END = re.compile(r"[。！？!?；;.\n]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_ENDS_SENTENCE = tuple("。！？!?；;.…")

Language = Literal["zh", "en"]

# A frame is only worth keeping while the user's prompt keeps at least this share of the limit:
# a long prompt already says what it wants, and it is the part the judge scores against.
_MIN_USER_SHARE = 0.5

_T2I_SUFFIX: dict[str, str] = {
    "en": (
        "High quality, photorealistic where the scene is real, fine detail, sharp focus, "
        "natural lighting, realistic textures, correct proportions and anatomy."
    ),
    "zh": "高清画质，真实场景写实呈现，细节丰富，对焦清晰，"
    "光影自然，质感真实，比例与人体结构正确。",
}

_T2I_NEGATIVE: dict[str, str] = {
    "en": (
        "blurry, low resolution, low quality, noisy, distorted, deformed, bad anatomy, "
        "extra fingers, extra limbs, malformed hands, disfigured face, watermark, signature, "
        "jpeg artifacts, overexposed, oversaturated"
    ),
    "zh": "模糊，低分辨率，低质量，噪点，畸变，变形，人体结构错误，多余的手指，多余的肢体，"
    "手部畸形，面部扭曲，水印，签名，压缩痕迹，过曝，过饱和",
}

_TIE_FRAME: dict[str, str] = {
    "en": (
        "Change only what this instruction names; keep everything else exactly as in the "
        "original image: composition, subjects, faces, pose, background, colours, lighting "
        "and style."
    ),
    "zh": "只修改指令中提到的内容，其余部分与原图完全一致："
    "构图、主体、人物面部、姿态、背景、色彩、光照和风格都保持不变。",
}

_VTTIE_FRAME: dict[str, str] = {
    "en": (
        "Change only the text this instruction names; keep the same font, font size, colour, "
        "position and alignment as the original text, keep all other text unchanged, and keep "
        "the rest of the image exactly as it is."
    ),
    "zh": "只修改指令中提到的文字，保持原有的字体、字号、颜色、位置和排版，"
    "其他文字保持不变，图片其余部分保持原样。",
}


class PromptPlan(BaseModel):
    """What one row sends: ``sent`` (and ``negative``) go to the API, ``original`` is the
    task file's prompt, kept for the journal and the report."""

    original: str
    sent: str
    negative: str | None = None
    language: str
    shortened: bool = False  # the user's own words were cut to fit the limit


def shorten(text: str, limit: int = PROMPT_LIMIT) -> tuple[str, bool]:
    """Return (text within ``limit``, whether it was shortened).

    Cuts at the last sentence end inside the limit when that keeps at least half of it,
    else at the last space, else hard.
    """
    text = text.strip()
    if len(text) <= limit:
        return text, False
    head = text[:limit]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= limit // 2:
        return head[: ends[-1]].strip(), True
    space = head.rfind(" ")
    if space >= limit // 2:
        return head[:space].strip(), True
    return head, True


def detect_language(text: str) -> Language:
    """Return "zh" when Chinese characters carry the prompt, else "en".

    A Chinese prompt often quotes English words ("把招牌改为“OPEN”") and an English one may
    quote Chinese text to write into a picture, so the counts are compared, not just found.
    """
    cjk = len(_CJK.findall(text))
    words = len(_LATIN_WORD.findall(text))
    return "zh" if cjk >= 2 and cjk >= 1.5 * words else "en"


def _join(user: str, addition: str, language: str) -> str:
    """User's words, a sentence end if they lack one, then our addition."""
    if not user:
        return addition
    if not user.endswith(_ENDS_SENTENCE):
        user += "。" if language == "zh" else "."
    return user + addition if language == "zh" else f"{user} {addition}"


def _fit(user: str, addition: str, language: str) -> tuple[str, bool]:
    """(sent text, whether the user's words were cut): always within PROMPT_LIMIT."""
    full = _join(user, addition, language)
    if len(full) <= PROMPT_LIMIT:
        return full, False
    if len(user) <= PROMPT_LIMIT:
        return user, False  # the words fit whole: our addition gives way, not them
    # 2 chars of slack for the sentence end and the space _join may add.
    room = PROMPT_LIMIT - len(addition) - 2
    if room >= PROMPT_LIMIT * _MIN_USER_SHARE:
        cut, was_cut = shorten(user, room)
        sent = _join(cut, addition, language)
        if len(sent) <= PROMPT_LIMIT:
            return sent, was_cut
    # The prompt alone fills the limit: drop our addition rather than more of the user's words.
    return shorten(user, PROMPT_LIMIT)


def build_prompt(task_type: str, prompt: str, *, templates: bool = True) -> PromptPlan:
    """The prompt (and negative prompt) to send for one row; deepfake rows send none."""
    original = prompt
    text = prompt.strip()
    language = detect_language(text)
    if task_type == "deepfake":
        return PromptPlan(original=original, sent="", negative=None, language=language)
    if not templates:
        sent, cut = shorten(text)
        return PromptPlan(
            original=original, sent=sent, negative=None, language=language, shortened=cut
        )
    negative: str | None = None
    if task_type == "t2i":
        sent, cut = _fit(text, _T2I_SUFFIX[language], language)
        negative = shorten(_T2I_NEGATIVE[language], NEGATIVE_LIMIT)[0]
    elif task_type == "vttie":
        sent, cut = _fit(text, _VTTIE_FRAME[language], language)
    elif task_type == "tie":
        sent, cut = _fit(text, _TIE_FRAME[language], language)
    else:  # an unknown type: send the words as they are
        sent, cut = shorten(text)
    if cut:
        log.info("prompt_shortened", task_type=task_type, chars=len(text), sent=len(sent))
    return PromptPlan(
        original=original, sent=sent, negative=negative, language=language, shortened=cut
    )
