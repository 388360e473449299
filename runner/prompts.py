"""Prompt text as sent to the API: the user's words as written, in named variants.

A row's candidates are **prompt variants** (``[candidates]`` in settings, one name per
candidate): ``plain`` sends the task file's prompt as written; ``framed`` adds the project's
frame (t2i: a quality/realism suffix; tie: change only what is named; vttie: keep the font,
size and the other text) after the user's words, in the prompt's own language; ``+negative``
adds a negative prompt (t2i); ``+extend`` asks the service to rewrite the prompt itself
(``prompt_extend``, where the model takes it). The judge scores each candidate against the
user's own words, so the runner learns which variant wins (``runner.backends.judge.wins``).

Only what the API cannot take is changed, and each change is said (``SentPrompt.changes``,
journaled with the row): a prompt longer than the model reads (800 characters for wan2.1/2.2)
is cut at a sentence end; when something must give way, the frame goes before the user's
words do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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


_FRAMES: dict[str, dict[str, str]] = {
    "t2i": _T2I_SUFFIX,
    "tie": _TIE_FRAME,
    "vttie": _VTTIE_FRAME,
}

VARIANT_BASES = ("plain", "framed")
VARIANT_FLAGS = ("negative", "extend")  # in the order a canonical name lists them


class Variant(BaseModel, frozen=True):
    """A prompt variant: ``plain`` or ``framed``, with ``+negative`` and ``+extend``."""

    name: str  # canonical: base, then the flags in VARIANT_FLAGS order
    framed: bool = False
    negative: bool = False
    extend: bool = False


def parse_variant(name: str, task_type: str = "t2i") -> Variant:
    """The variant a name means; raises ValueError (one line) for a name it does not know."""
    base, *flags = [p.strip() for p in str(name).split("+")]
    if base not in VARIANT_BASES:
        raise ValueError(
            f"unknown prompt variant {name!r}: it must start with plain or framed "
            f"(then +negative, +extend), e.g. plain+extend"
        )
    unknown = [f for f in flags if f not in VARIANT_FLAGS]
    if unknown or len(set(flags)) != len(flags):
        raise ValueError(
            f"prompt variant {name!r}: after {base} only +negative and +extend may follow, "
            "each once"
        )
    if "negative" in flags and task_type != "t2i":
        raise ValueError(f"prompt variant {name!r}: +negative is for t2i rows only")
    if task_type == "deepfake" and name != "plain":
        raise ValueError(f"prompt variant {name!r}: deepfake rows send no prompt (use plain)")
    canonical = "+".join([base, *(f for f in VARIANT_FLAGS if f in flags)])
    return Variant(
        name=canonical,
        framed=base == "framed",
        negative="negative" in flags,
        extend="extend" in flags,
    )


class SentPrompt(BaseModel):
    """What one request sends: ``sent`` (and ``negative``, ``extend``) go to the API;
    ``changes`` says what was changed from the user's words and why (empty: as written)."""

    variant: str
    sent: str
    negative: str | None = None
    extend: bool = False
    language: str = "en"
    changes: list[str] = []


@dataclass(eq=False)
class CandidatePrompts:
    """One row's candidates: the variant of each, and what was sent at each position (a
    request of n images fills n positions with one variant)."""

    task_type: str
    original: str  # the task file's prompt
    variants: list[str]
    sent: dict[int, SentPrompt] = field(default_factory=dict)

    @property
    def want(self) -> int:
        return len(self.variants)

    def run_length(self, position: int) -> int:
        """How many candidates from ``position`` on share its variant (one request's n)."""
        n = 1
        while (
            position + n < len(self.variants)
            and self.variants[position + n] == self.variants[position]
        ):
            n += 1
        return n

    def send(self, position: int, n: int, limit: int = PROMPT_LIMIT) -> SentPrompt:
        """The prompt of the request that makes candidates ``position .. position+n-1``
        (within the model's ``limit``), recorded for them."""
        index = min(position, len(self.variants) - 1)
        out = build_prompt(self.task_type, self.original, self.variants[index], limit=limit)
        for k in range(position, position + n):
            self.sent[k] = out
        return out

    def at(self, position: int) -> SentPrompt | None:
        """What candidate ``position`` was made from; None for one paid by an earlier run."""
        return self.sent.get(position)


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


def _fit(user: str, addition: str, language: str, limit: int) -> tuple[str, bool]:
    """(sent text, whether the user's words were cut): always within ``limit``."""
    full = _join(user, addition, language)
    if len(full) <= limit:
        return full, False
    if len(user) <= limit:
        return user, False  # the words fit whole: our addition gives way, not them
    # 2 chars of slack for the sentence end and the space _join may add.
    room = limit - len(addition) - 2
    if room >= limit * _MIN_USER_SHARE:
        cut, was_cut = shorten(user, room)
        sent = _join(cut, addition, language)
        if len(sent) <= limit:
            return sent, was_cut
    # The prompt alone fills the limit: drop our addition rather than more of the user's words.
    return shorten(user, limit)


def build_prompt(
    task_type: str, prompt: str, variant: str = "plain", *, limit: int = PROMPT_LIMIT
) -> SentPrompt:
    """What one request of ``variant`` sends for a row; deepfake rows send no prompt."""
    v = parse_variant(variant, task_type)
    text = prompt.strip()
    language = detect_language(text)
    if task_type == "deepfake":
        return SentPrompt(variant=v.name, sent="", language=language)
    changes: list[str] = []
    addition = _FRAMES.get(task_type, {}).get(language) if v.framed else None
    if addition is None:
        sent, cut = shorten(text, limit)
    else:
        sent, cut = _fit(text, addition, language, limit)
        if addition not in sent:
            changes.append(f"frame left out: the prompt alone fills the model's {limit} characters")
    if cut:
        changes.append(
            f"the user's words cut from {len(text)} characters at a sentence end or a space: "
            f"the model reads at most {limit}"
        )
        log.info("prompt_shortened", task_type=task_type, chars=len(text), sent=len(sent))
    negative = None
    if v.negative:
        negative = shorten(_T2I_NEGATIVE[language], NEGATIVE_LIMIT)[0]
    return SentPrompt(
        variant=v.name,
        sent=sent,
        negative=negative,
        extend=v.extend,
        language=language,
        changes=changes,
    )
