"""What each DashScope image model is: one capability table, from the protocol reference.

The scheduler, the settings and doctor ask this table (``caps(model)``) instead of testing
model names: which endpoint, sync or async, how many images one request may return, the
size rule, the prompt limit, the regions that serve it and its published quota.
Unknown names get a sensible default by pattern (``caps().documented`` is then False).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote

Endpoint = Literal["text2image", "image2image", "multimodal", "local"]
Kind = Literal["t2i", "edit"]
Region = Literal["cn", "intl"]
# How an edit request names its source: wanx2.1-imageedit's function + base_image_url,
# wan2.5-i2i-preview's images list, the qwen-image-edit family's chat messages.
InputStyle = Literal["prompt", "function", "images", "messages", "local"]

REGIONS: tuple[Region, ...] = ("cn", "intl")
BASE_URLS: dict[Region, str] = {
    "cn": "https://dashscope.aliyuncs.com/api/v1",
    "intl": "https://dashscope-intl.aliyuncs.com/api/v1",
}
_BOTH: frozenset[Region] = frozenset(REGIONS)
_CN: frozenset[Region] = frozenset({"cn"})
_INTL: frozenset[Region] = frozenset({"intl"})

QWEN_IMAGE_SIZES: tuple[str, ...] = ("1664*928", "1472*1104", "1328*1328", "1104*1472", "928*1664")


@dataclass(frozen=True)
class ModelCaps:
    name: str
    endpoint: Endpoint
    kind: Kind
    sync: bool = False
    n_max: int = 4
    prompt_limit: int = 800
    regions: frozenset[Region] = _BOTH
    input_style: InputStyle = "prompt"
    sizes: tuple[str, ...] | None = None  # a fixed list; None: any size within the sides
    min_side: int = 512
    max_side: int = 1440
    submits_per_second: float = 2.0  # the published quota (reference's table)
    in_flight: int | None = 2  # None: no in-flight limit (sync calls)
    quota_published: bool = True  # False: start from these figures, learn from 429s
    documented: bool = True  # False: guessed from the name's pattern

    @property
    def n_min(self) -> int:
        return 1

    def served_in(self, region: str) -> bool:
        return region in self.regions

    def size_for(self, prompt: str, default: str) -> str:
        """The size to ask for: the aspect ratio the prompt names ("16:9", "竖版"), else
        the default; within the model's fixed list or side limits."""
        ratio = aspect_ratio(prompt)
        if self.sizes is not None:
            if ratio is None and default in self.sizes:
                return default
            target = ratio if ratio is not None else _ratio_of(default)
            return min(self.sizes, key=lambda s: abs(math.log(_ratio_of(s) / target)))
        if ratio is None:
            return default
        # Same pixel count as the default, in the named shape, in steps of 16, within sides.
        area = _area_of(default)
        width = math.sqrt(area * ratio)
        height = width / ratio
        scale = min(1.0, self.max_side / max(width, height))
        width, height = width * scale, height * scale
        w = min(self.max_side, max(self.min_side, round(width / 16) * 16))
        h = min(self.max_side, max(self.min_side, round(height / 16) * 16))
        return f"{w}*{h}"


def _t2i(name: str, regions: frozenset[Region] = _BOTH, **kw: Any) -> ModelCaps:
    return ModelCaps(name=name, endpoint="text2image", kind="t2i", regions=regions, **kw)


def _qwen_image(name: str, **kw: Any) -> ModelCaps:
    return _t2i(name, n_max=1, sizes=QWEN_IMAGE_SIZES, **kw)


def _qwen_edit(name: str, n_max: int, **kw: Any) -> ModelCaps:
    # Sync calls: no in-flight limit, 2 calls a second (the reference's quota table).
    return ModelCaps(
        name=name,
        endpoint="multimodal",
        kind="edit",
        sync=True,
        n_max=n_max,
        input_style="messages",
        min_side=384,
        max_side=3072,
        in_flight=None,
        **kw,
    )


_TABLE: dict[str, ModelCaps] = {
    c.name: c
    for c in (
        _t2i("wanx2.1-t2i-turbo", _CN),
        _t2i("wanx2.1-t2i-plus", _CN),
        _t2i("wan2.1-t2i-turbo", _INTL),
        _t2i("wan2.1-t2i-plus", _INTL),
        _t2i("wan2.2-t2i-flash"),
        _t2i("wan2.2-t2i-plus"),
        _t2i("wan2.5-t2i-preview", prompt_limit=2000, quota_published=False),
        _t2i("wanx-v1", _CN, in_flight=1, sizes=("1024*1024", "720*1280", "1280*720", "768*1152")),
        _qwen_image("qwen-image"),
        _qwen_image("qwen-image-plus"),
        _qwen_image("qwen-image-max", submits_per_second=2 / 60, in_flight=None),
        ModelCaps(
            name="wanx2.1-imageedit",
            endpoint="image2image",
            kind="edit",
            regions=_CN,
            input_style="function",
            max_side=4096,
        ),
        ModelCaps(
            name="wan2.5-i2i-preview",
            endpoint="image2image",
            kind="edit",
            input_style="images",
            prompt_limit=2000,
            min_side=384,
            max_side=5000,
            submits_per_second=5,
            in_flight=5,
        ),
        _qwen_edit("qwen-image-edit", 1),
        _qwen_edit("qwen-image-edit-plus", 6),
        _qwen_edit("qwen-image-edit-max", 6, submits_per_second=2 / 60),
    )
}


def known_models() -> tuple[str, ...]:
    return tuple(_TABLE)


def caps(model: str) -> ModelCaps:
    """The capabilities of ``model``: from the table, else guessed from its name."""
    found = _TABLE.get(model)
    if found is not None:
        return found
    return replace(_by_pattern(model), quota_published=False)


def _by_pattern(model: str) -> ModelCaps:
    name = model.lower()
    if name.startswith("local:"):
        kind: Kind = "edit" if "edit" in name or "swap" in name else "t2i"
        return ModelCaps(
            name=model,
            endpoint="local",
            kind=kind,
            sync=True,
            n_max=1,
            regions=_BOTH,
            input_style="local",
            in_flight=None,
            documented=False,
        )
    if name.startswith("qwen-image-edit"):  # dated versions of the family
        n_max = 6 if ("-plus" in name or "-max" in name) else 1
        return _qwen_edit(model, n_max, documented=False)
    if name.startswith("qwen-image"):
        return _qwen_image(model, documented=False)
    if "imageedit" in name or "i2i" in name:
        # an imageedit model takes function + base_image_url, an i2i one an images list
        style: InputStyle = "function" if "imageedit" in name else "images"
        return ModelCaps(
            name=model,
            endpoint="image2image",
            kind="edit",
            input_style=style,
            max_side=4096,
            documented=False,
        )
    if "t2i" in name or name.startswith("wan"):
        return _t2i(model, documented=False)
    return _t2i(model, n_max=1, documented=False)


# --------------------------------------------------------------------------- regions


def region_of_url(base_url: str) -> Region:
    """intl for the Singapore (dashscope-intl) and US (dashscope-us) hosts, else cn."""
    host = base_url.split("://", 1)[-1].split("/", 1)[0].lower()
    if host.startswith(("dashscope-intl.", "dashscope-us.")) or ".ap-southeast-1." in host:
        return "intl"
    return "cn"


DEFAULT_MODELS: dict[Region, dict[str, list[str]]] = {
    "cn": {
        "t2i": ["wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wan2.2-t2i-flash"],
        "tie": ["wanx2.1-imageedit", "qwen-image-edit"],
        "vttie": ["qwen-image-edit", "wanx2.1-imageedit"],
    },
    # wanx2.1-imageedit is Beijing-only: Singapore edits use the qwen-image-edit family.
    "intl": {
        "t2i": ["wan2.1-t2i-turbo", "wan2.1-t2i-plus"],
        "tie": ["qwen-image-edit", "qwen-image-edit-plus"],
        "vttie": ["qwen-image-edit", "qwen-image-edit-plus"],
    },
}


def default_models(region: str) -> dict[str, list[str]]:
    table = DEFAULT_MODELS["intl" if region == "intl" else "cn"]
    return {k: list(v) for k, v in table.items()}


# --------------------------------------------------------------------------- prompts


# a ratio may end a sentence ("16:9."), but "16:9.5" or "10:30:15" is no picture shape
_RATIO = re.compile(r"(?<![\d.:])(\d{1,2})\s*[:：比]\s*(\d{1,2})(?![\d:]|\.\d)")
# Only the usual picture ratios: "at 10:30" is a time, not a shape.
_KNOWN_RATIOS = frozenset({(1, 1), (16, 9), (9, 16), (4, 3), (3, 4), (3, 2), (2, 3), (21, 9)})
# Words that name a shape, not a subject ("a portrait of ..." is not an orientation).
_PORTRAIT = ("竖版", "竖图", "竖屏", "竖幅", "竖构图", "portrait orientation", "vertical format")
_LANDSCAPE = (
    "横版",
    "横图",
    "横屏",
    "横幅",
    "横构图",
    "宽屏",
    "landscape orientation",
    "widescreen",
)
_SQUARE = ("方图", "正方形构图", "方形构图", "square format")


def aspect_ratio(prompt: str) -> float | None:
    """width / height the prompt asks for ("16:9", "9：16", "竖版", "square"), or None."""
    for match in _RATIO.finditer(prompt):
        w, h = int(match.group(1)), int(match.group(2))
        if (w, h) in _KNOWN_RATIOS:
            return w / h
    folded = prompt.casefold()
    if any(word in folded for word in _PORTRAIT):
        return 9 / 16
    if any(word in folded for word in _LANDSCAPE):
        return 16 / 9
    if any(word in folded for word in _SQUARE):
        return 1.0
    return None


def _dims(size: str) -> tuple[int, int]:
    w, _, h = size.partition("*")
    try:
        return max(1, int(w)), max(1, int(h))
    except ValueError:
        return 1024, 1024


def _ratio_of(size: str) -> float:
    w, h = _dims(size)
    return w / h


def _area_of(size: str) -> int:
    w, h = _dims(size)
    return w * h


# --------------------------------------------------------------------------- sources


def source_url(base: str, name: str) -> str:
    """``image_base_url`` + a file name, percent-encoded: a URL must not carry Chinese
    characters or spaces (the reference); the path's slashes stay."""
    return base.rstrip("/") + "/" + quote(name.lstrip("/"), safe="/")
