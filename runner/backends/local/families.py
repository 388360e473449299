"""Per-family details of diffusers pipelines, in one table: the guidance argument and its
default, the negative prompt, the prompt suffix the model card recommends, and sizes.

No torch here: the worker asks this module how to call its pipeline, the tests check it
without a model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from runner.models import aspect_ratio

_CJK = re.compile(r"[\u3400-\u9fff]")
_FULL_STOP = re.compile(r"(?<=\d)\.(?!\d)")


@dataclass(frozen=True)
class Family:
    name: str
    classes: tuple[str, ...]  # pipeline class names this family covers
    cfg_arg: str | None = "guidance_scale"  # the call argument that takes the guidance
    guidance: float | None = None  # None: the pipeline's own default
    negative: str | None = None  # sent when none is configured
    suffix: dict[str, str] = field(default_factory=dict)  # by language: "en", "zh"
    # t2i sizes by aspect ratio (the model card's table); empty: the configured size's area
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


# Qwen-Image's model card: true CFG 4.0 with a one-space negative prompt, the "positive
# magic" suffix, and its aspect-ratio table.
_QWEN_SIZES = {
    "1:1": (1328, 1328),
    "16:9": (1664, 928),
    "9:16": (928, 1664),
    "4:3": (1472, 1140),
    "3:4": (1140, 1472),
    "3:2": (1584, 1056),
    "2:3": (1056, 1584),
}

FAMILIES: tuple[Family, ...] = (
    Family(
        "qwen-image",
        ("QwenImagePipeline",),
        cfg_arg="true_cfg_scale",
        guidance=4.0,
        negative=" ",
        suffix={"en": ", Ultra HD, 4K, cinematic composition.", "zh": ", 超清，4K，电影级构图."},
        sizes=_QWEN_SIZES,
    ),
    Family(
        "qwen-image-edit",
        ("QwenImageEditPipeline", "QwenImageEditPlusPipeline"),
        cfg_arg="true_cfg_scale",
        guidance=4.0,
        negative=" ",
    ),
    Family("flux-kontext", ("FluxKontextPipeline",), guidance=2.5),
)
GENERIC = Family("generic", ())


def family_of(pipeline_class: str) -> Family:
    for fam in FAMILIES:
        if pipeline_class in fam.classes:
            return fam
    return GENERIC


def language(prompt: str) -> str:
    return "zh" if _CJK.search(prompt) else "en"


def with_suffix(fam: Family, prompt: str) -> str:
    """The prompt with the family's recommended suffix, once."""
    suffix = fam.suffix.get(language(prompt), "")
    core = suffix.strip(" ,，.。")
    if not suffix or core in prompt:
        return prompt
    return prompt.rstrip() + suffix


def _dims(size: str) -> tuple[int, int]:
    w, _, h = size.partition("*")
    return int(w), int(h)


def _snap(x: float, multiple: int) -> int:
    return max(multiple, round(x / multiple) * multiple)


def t2i_size(fam: Family, prompt: str, size: str, multiple: int) -> tuple[int, int]:
    """(width, height): the configured size, or the shape the prompt names at its area.

    With the family's table and the configured size one of its entries, the table's entry
    for the named ratio is used as is (the model was trained at those sizes)."""
    w, h = _dims(size)
    # a sentence's full stop after the ratio ("... 16:9. High quality") is not a decimal
    ratio = aspect_ratio(_FULL_STOP.sub(" ", prompt))
    if ratio is None:
        return _snap(w, multiple), _snap(h, multiple)
    if fam.sizes and (w, h) in fam.sizes.values():
        best = min(fam.sizes.values(), key=lambda s: abs(math.log((s[0] / s[1]) / ratio)))
        return _snap(best[0], multiple), _snap(best[1], multiple)
    width = math.sqrt(w * h * ratio)
    return _snap(width, multiple), _snap(width / ratio, multiple)


def edit_size(source: tuple[int, int], size: str, multiple: int) -> tuple[int, int]:
    """(width, height) for an edit: the source's aspect at the configured size's area, in
    multiples the VAE needs (the output is resized back to the source's size)."""
    sw, sh = source
    w, h = _dims(size)
    ratio = sw / sh
    width = math.sqrt(w * h * ratio)
    return _snap(width, multiple), _snap(width / ratio, multiple)
