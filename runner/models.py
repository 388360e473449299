"""What each DashScope image model is: one capability table, from the protocol reference.

The scheduler, the settings, the cost estimate and doctor ask this table (``caps(model)``,
``caps(model, region)``) instead of testing model names: which route (endpoint, sync or
async) it is sent on, the other route it is also served on, what one request may return,
the size rule, the prompt limit, whether it takes ``prompt_extend``, the regions that serve
it, its published quota (per region where they differ) and its list price per region.
Unknown names get a sensible default by pattern (``caps().documented`` is then False).

Every fact carries where and when it was read (``# read <date>, <page>``). The pages are
the Model Studio docs as the shared reference (dashscope.md, 2026 edition) quotes them:
the rate-limit page updated 2026-02-24, the qwen-image-edit API page 2026-02-08, the
text-to-image guides, the pricing page and the OpenAI-compatible change notice. A model
served on both routes is sent on the faster one for its quota: sync where the sync route
has no in-flight cap (a sync call at 2 a second holds as many calls in flight as its
latency needs), async where both routes share an in-flight cap (an async task is a
journaled id that survives a crash; a sync call's answer lost in a crash is paid for
nothing).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote

# text2image / image2image: the async image-synthesis endpoints; generation: the newer async
# interface (image-generation/generation, wan2.6 and wan2.7); multimodal: the sync
# multimodal-generation endpoint; local: this machine's diffusers workers.
Endpoint = Literal["text2image", "image2image", "generation", "multimodal", "local"]
Kind = Literal["t2i", "edit"]
Region = Literal["cn", "intl"]
# How a request names its input: a t2i prompt, wanx2.1-imageedit's function +
# base_image_url, wan2.5-i2i-preview's images list, chat-style messages (text, and images
# for edits: the sync endpoint and the image-generation interface), a local worker's.
InputStyle = Literal["prompt", "function", "images", "messages", "local"]

REGIONS: tuple[Region, ...] = ("cn", "intl")
BASE_URLS: dict[Region, str] = {
    "cn": "https://dashscope.aliyuncs.com/api/v1",
    "intl": "https://dashscope-intl.aliyuncs.com/api/v1",
}
_BOTH: frozenset[Region] = frozenset(REGIONS)
_CN: frozenset[Region] = frozenset({"cn"})
_INTL: frozenset[Region] = frozenset({"intl"})
_T2I: frozenset[Kind] = frozenset({"t2i"})
_EDIT: frozenset[Kind] = frozenset({"edit"})
_BOTH_KINDS: frozenset[Kind] = frozenset({"t2i", "edit"})

QWEN_IMAGE_SIZES: tuple[str, ...] = ("1664*928", "1472*1104", "1328*1328", "1104*1472", "928*1664")
_ASPECT_MAX = 4.0  # the total-area rules allow aspect ratios 1:4 to 4:1
# The reference's durations (queueing included): image edit "about 5-15 s", t2i "about 1-3
# minutes". Only a prior: what a rate-bound (sync) lane needs in flight before any latency
# is seen, for the overall cap that must not bind before the quotas. Learned at run time.
EDIT_LATENCY_S = (5.0, 15.0)
T2I_LATENCY_S = (60.0, 180.0)


@dataclass(frozen=True)
class Route:
    """One way a model is served: the endpoint, how it names its input, its in-flight cap."""

    endpoint: Endpoint
    input_style: InputStyle
    in_flight: int | None


@dataclass(frozen=True)
class ModelCaps:
    name: str
    endpoint: Endpoint  # the route the runner sends it on
    kinds: frozenset[Kind] = _T2I  # t2i, edit, or both (qwen-image-2.0)
    n_max: int = 4
    prompt_limit: int = 800
    regions: frozenset[Region] = _BOTH
    input_style: InputStyle = "prompt"
    sizes: tuple[str, ...] | None = None  # a fixed list; None: the sides or the area rule
    min_side: int = 512
    max_side: int = 1440
    # (least, most) total pixels, aspect 1:4-4:1, no per-side limit (wan2.5-t2i-preview)
    area: tuple[int, int] | None = None
    submits_per_second: float = 2.0  # the published quota (the reference's rate table)
    in_flight: int | None = 2  # None: no in-flight limit (sync calls)
    # quotas that differ by region: (region, submits a second, in flight)
    regional: tuple[tuple[Region, float, int | None], ...] = ()
    quota_published: bool = True  # False: start from these figures, learn from 429s
    documented: bool = True  # False: guessed from the name's pattern
    prompt_extend: bool = False  # takes parameters.prompt_extend (sent explicitly, always)
    max_images: int = 1  # input images one edit request may name
    # the other documented route, used when the service says the table's route is the
    # wrong one for this account (403 "does not support ... calls")
    other_route: Route | None = None
    latency_s: tuple[float, float] = T2I_LATENCY_S  # the documented typical range

    @property
    def sync(self) -> bool:
        """A call that answers with its images (no task to poll)."""
        return self.endpoint in ("multimodal", "local")

    def served_in(self, region: str) -> bool:
        return region in self.regions

    def quota_in(self, region: str) -> tuple[float, int | None]:
        """(submits a second, tasks in flight) in ``region``."""
        for where, rate, in_flight in self.regional:
            if where == region:
                return rate, in_flight
        return self.submits_per_second, self.in_flight

    def in_region(self, region: str) -> ModelCaps:
        """These caps with ``region``'s quota."""
        rate, in_flight = self.quota_in(region)
        return replace(self, submits_per_second=rate, in_flight=in_flight)

    def on_other_route(self) -> ModelCaps | None:
        """The caps of the other documented route, None when it has only one."""
        other = self.other_route
        if other is None:
            return None
        return replace(
            self,
            endpoint=other.endpoint,
            input_style=other.input_style,
            in_flight=other.in_flight,
            regional=(),
            other_route=Route(self.endpoint, self.input_style, self.in_flight),
        )

    def size_for(self, prompt: str, default: str) -> str:
        """The size to ask for: the aspect ratio the prompt names ("16:9", "竖版"), else
        the default's; within the model's fixed list, side limits or pixel area."""
        ratio = aspect_ratio(prompt)
        if self.sizes is not None:
            if ratio is None and default in self.sizes:
                return default
            target = ratio if ratio is not None else _ratio_of(default)
            return min(self.sizes, key=lambda s: abs(math.log(_ratio_of(s) / target)))
        if self.area is not None:
            return self._size_in_area(ratio if ratio is not None else _ratio_of(default), default)
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

    def _size_in_area(self, ratio: float, default: str) -> str:
        """The default's pixel count (kept within the area rule) in the shape ``ratio``
        (kept within 1:4-4:1), sides in steps of 16 rounded inwards."""
        assert self.area is not None
        low, high = self.area
        ratio = min(_ASPECT_MAX, max(1 / _ASPECT_MAX, ratio))
        pixels = min(high, max(low, _area_of(default)))
        width = math.sqrt(pixels * ratio)
        height = width / ratio
        w, h = round(width / 16) * 16, round(height / 16) * 16
        while w * h > high:
            w, h = (w - 16, h) if w >= h else (w, h - 16)
        while w * h < low:
            w, h = (w + 16, h) if w <= h else (w, h + 16)
        return f"{w}*{h}"


def _t2i(name: str, regions: frozenset[Region] = _BOTH, **kw: Any) -> ModelCaps:
    """An async text2image model (wan2.x t2i): prompt_extend, n 1-4, sides 512-1440."""
    return ModelCaps(
        **{"name": name, "endpoint": "text2image", "regions": regions, "prompt_extend": True, **kw}
    )


def _qwen_image(name: str, *, both_routes: bool, **kw: Any) -> ModelCaps:
    """A qwen-image text-to-image model on the sync endpoint: 2 calls a second and no
    in-flight limit there (read 2026-02-24, rate-limit page), n 1, five sizes.
    ``both_routes``: also served async on text2image (2 in flight there)."""
    return ModelCaps(
        name=name,
        endpoint="multimodal",
        input_style="messages",
        n_max=1,
        sizes=QWEN_IMAGE_SIZES,
        in_flight=None,
        prompt_extend=True,
        other_route=Route("text2image", "prompt", 2) if both_routes else None,
        **kw,
    )


def _qwen_image_2(name: str, **kw: Any) -> ModelCaps:
    """A qwen-image-2.0 model: one model for generation and editing, sync only, 1-3 input
    images, total area 512x512 to 2048x2048, n 1 (read 2026-02-24: the Qwen image
    generation and editing API page), 2 calls a second unless ``submits_per_second``."""
    return ModelCaps(
        name=name,
        endpoint="multimodal",
        kinds=_BOTH_KINDS,
        input_style="messages",
        n_max=1,
        area=_AREA_512_2048,
        in_flight=None,
        prompt_extend=True,
        max_images=3,
        **kw,
    )


def _qwen_edit(name: str, n_max: int, **kw: Any) -> ModelCaps:
    """The qwen-image-edit family: sync only, 1-3 input images, 2 calls a second and no
    in-flight limit (read 2026-02-08, qwen-image-edit API page; 2026-02-24, rate limits)."""
    return ModelCaps(
        name=name,
        endpoint="multimodal",
        kinds=_EDIT,
        n_max=n_max,
        input_style="messages",
        min_side=384,
        max_side=3072,
        in_flight=None,
        max_images=3,
        latency_s=EDIT_LATENCY_S,
        **kw,
    )


def _wan_new(name: str, kinds: frozenset[Kind], **kw: Any) -> ModelCaps:
    """The newer wan interface: async tasks on image-generation/generation, messages input,
    polls answered with ``choices``; also documented on the sync endpoint. Sent async: its
    in-flight cap is the model's on either route, and a task id survives a crash."""
    caps_ = ModelCaps(
        name=name,
        endpoint="generation",
        kinds=kinds,
        input_style="messages",
        latency_s=EDIT_LATENCY_S if kinds == _EDIT else T2I_LATENCY_S,
        **kw,
    )
    return replace(caps_, other_route=Route("multimodal", "messages", caps_.in_flight))


_2_PER_MINUTE = 2 / 60
_AREA_768_1440 = (768 * 768, 1440 * 1440)
_AREA_512_2048 = (512 * 512, 2048 * 2048)

_TABLE: dict[str, ModelCaps] = {
    c.name: c
    for c in (
        # read 2026-02-24, rate-limit page: wan2.1 / wan2.2 t2i 2 submits a second, 2 tasks
        # in flight; prompts at most 800 characters (text-to-image guide).
        _t2i("wanx2.1-t2i-turbo", _CN),
        _t2i("wanx2.1-t2i-plus", _CN),
        _t2i("wan2.1-t2i-turbo", _INTL),
        _t2i("wan2.1-t2i-plus", _INTL),
        _t2i("wan2.2-t2i-flash"),
        _t2i("wan2.2-t2i-plus"),
        # read 2026-02-24, rate-limit page: 5 a second, 5 in flight; text-to-image guide:
        # prompts up to 2000 characters, a total area of 768x768-1440x1440 at 1:4-4:1.
        _t2i(
            "wan2.5-t2i-preview",
            prompt_limit=2000,
            area=_AREA_768_1440,
            submits_per_second=5,
            in_flight=5,
        ),
        _t2i(
            "wanx-v1",
            _CN,
            in_flight=1,
            prompt_extend=False,
            sizes=("1024*1024", "720*1280", "1280*720", "768*1152"),
        ),
        # read 2026-02-24: 5 a second and 5 in flight in Singapore, 1 a second and 5 in
        # Beijing. Text-to-image V2 page (2025-12-17, 2026-03-15): sync and async, a total
        # area between 1280x1280 (one edition says 768x768) and 1440x1440: the intersection.
        _wan_new(
            "wan2.6-t2i",
            _T2I,
            prompt_limit=2000,
            area=(1280 * 1280, 1440 * 1440),
            submits_per_second=5,
            in_flight=5,
            regional=(("cn", 1.0, 5),),
            prompt_extend=True,
        ),
        # qwen-image, qwen-image-plus: both routes ("only qwen-image-plus and qwen-image
        # support the async interface"); qwen-image-max and the dated plus are sync-only,
        # 2 a minute for max (read 2026-02-24, rate-limit page; text-to-image guide).
        _qwen_image("qwen-image", both_routes=True),
        _qwen_image("qwen-image-plus", both_routes=True),
        _qwen_image("qwen-image-plus-2026-01-09", both_routes=False),
        _qwen_image("qwen-image-max", both_routes=False, submits_per_second=_2_PER_MINUTE),
        # One model for generation and editing, sync; 2.0 at 2 a second, 2.0-pro at 2 a
        # minute (read 2026-02-24, rate-limit page). Area and 1-3 input images: the 2026
        # Qwen image generation and editing API page.
        _qwen_image_2("qwen-image-2.0"),
        _qwen_image_2("qwen-image-2.0-pro", submits_per_second=_2_PER_MINUTE),
        # z-image-turbo: sync text-to-image, 2 a second ("prompt_extend on doubles its
        # price"; read 2026-02-24, rate-limit page and pricing page).
        ModelCaps(
            name="z-image-turbo",
            endpoint="multimodal",
            input_style="messages",
            n_max=1,
            area=_AREA_512_2048,
            in_flight=None,
            prompt_extend=True,
        ),
        ModelCaps(
            name="wanx2.1-imageedit",
            endpoint="image2image",
            kinds=_EDIT,
            regions=_CN,
            input_style="function",
            max_side=4096,
            latency_s=EDIT_LATENCY_S,
        ),
        # read 2026-02-24, rate-limit page: 5 a second, 5 in flight; 1-3 images, prompts
        # up to 2000 characters, prompt_extend (default true).
        ModelCaps(
            name="wan2.5-i2i-preview",
            endpoint="image2image",
            kinds=_EDIT,
            input_style="images",
            prompt_limit=2000,
            min_side=384,
            max_side=5000,
            submits_per_second=5,
            in_flight=5,
            prompt_extend=True,
            max_images=3,
            latency_s=EDIT_LATENCY_S,
        ),
        # wan2.6-image: 5 a second, 5 in flight (read 2026-02-24); 1-4 images (wan2.6 image
        # page, 2026-03-15). wan2.7-image(-pro): the same interface; no quota published:
        # start at wan2.1's 2/2 and learn from 429s.
        _wan_new(
            "wan2.6-image",
            _EDIT,
            prompt_limit=2000,
            min_side=384,
            max_side=5000,
            submits_per_second=5,
            in_flight=5,
            max_images=4,
        ),
        _wan_new(
            "wan2.7-image",
            _EDIT,
            prompt_limit=5000,
            min_side=240,
            max_side=8000,
            max_images=9,
            quota_published=False,
        ),
        _wan_new(
            "wan2.7-image-pro",
            _EDIT,
            prompt_limit=5000,
            min_side=240,
            max_side=8000,
            max_images=9,
            quota_published=False,
        ),
        # qwen-image-edit: n 1, no size, no prompt_extend. -plus (= -2025-10-30, also
        # -2025-12-15): n 1-6, prompt_extend default true. -max (= -2026-01-16): 2 calls a
        # minute (read 2026-02-08, qwen-image-edit API page; 2026-02-24, rate limits).
        _qwen_edit("qwen-image-edit", 1),
        _qwen_edit("qwen-image-edit-plus", 6, prompt_extend=True),
        _qwen_edit("qwen-image-edit-plus-2025-10-30", 6, prompt_extend=True),
        _qwen_edit("qwen-image-edit-plus-2025-12-15", 6, prompt_extend=True),
        _qwen_edit("qwen-image-edit-max", 6, prompt_extend=True, submits_per_second=_2_PER_MINUTE),
        _qwen_edit(
            "qwen-image-edit-max-2026-01-16",
            6,
            prompt_extend=True,
            submits_per_second=_2_PER_MINUTE,
        ),
    )
}


def known_models() -> tuple[str, ...]:
    return tuple(_TABLE)


def caps(model: str, region: str | None = None) -> ModelCaps:
    """The capabilities of ``model`` (with ``region``'s quota when given): from the table,
    else guessed from its name."""
    found = _TABLE.get(model)
    if found is None:
        found = replace(_by_pattern(model), quota_published=False)
    return found.in_region(region) if region is not None else found


def _by_pattern(model: str) -> ModelCaps:
    name = model.lower()
    if name.startswith("local:"):
        kind: frozenset[Kind] = _EDIT if "edit" in name or "swap" in name else _T2I
        return ModelCaps(
            name=model,
            endpoint="local",
            kinds=kind,
            n_max=1,
            input_style="local",
            in_flight=None,
            documented=False,
        )
    if name.startswith("qwen-image-edit"):  # dated versions of the family
        n_max = 6 if ("-plus" in name or "-max" in name) else 1
        return _qwen_edit(model, n_max, prompt_extend=n_max > 1, documented=False)
    if name.startswith(("qwen-image", "z-image")):  # the whole family is served sync
        guess = _qwen_image(model, both_routes=False, documented=False)
        return replace(guess, sizes=None, area=_AREA_512_2048)
    if name.startswith(("wan2.6", "wan2.7")):  # the newer interface
        return _wan_new(model, _T2I if "t2i" in name else _EDIT, documented=False)
    if "imageedit" in name or "i2i" in name:
        # an imageedit model takes function + base_image_url, an i2i one an images list
        style: InputStyle = "function" if "imageedit" in name else "images"
        return ModelCaps(
            name=model,
            endpoint="image2image",
            kinds=_EDIT,
            input_style=style,
            max_side=4096,
            documented=False,
            latency_s=EDIT_LATENCY_S,
        )
    if "t2i" in name or name.startswith("wan"):
        return _t2i(model, documented=False)
    return _t2i(model, n_max=1, prompt_extend=False, documented=False)


# --------------------------------------------------------------------------- prices

# List prices per image, CNY, read 2026-12-06 from the reference's "Prices" section (the
# 2026 pricing pages). Beijing as listed; Singapore as the CNY-equivalents that page gives.
# The international page lists wan2.1-t2i-turbo in USD only ($0.025): not mixed in here (a
# [prices.intl] table with currency = "USD" replaces this one). Settings override them.
PRICES_READ = "2026-12-06"
PRICE_CURRENCY: dict[Region, str] = {"cn": "CNY", "intl": "CNY"}
LIST_PRICES: dict[Region, dict[str, float]] = {
    "cn": {
        "qwen-image-edit": 0.3,
        "qwen-image-edit-plus": 0.2,
        "qwen-image": 0.25,
        "qwen-image-plus": 0.20,
        "qwen-image-2.0": 0.2,
        "qwen-image-2.0-pro": 0.5,
    },
    "intl": {
        "qwen-image-edit": 0.330,
        "qwen-image-edit-plus": 0.220,
        "wan2.1-t2i-plus": 0.367,
        "wan2.5-t2i-preview": 0.220,
    },
}


def list_price(model: str, region: str) -> float | None:
    """The built-in list price of one image of ``model`` in ``region`` (None: unknown)."""
    return LIST_PRICES.get("intl" if region == "intl" else "cn", {}).get(model)


# --------------------------------------------------------------------------- regions


def region_of_url(base_url: str) -> Region:
    """intl for the Singapore (dashscope-intl) and US (dashscope-us) hosts, else cn."""
    host = base_url.split("://", 1)[-1].split("/", 1)[0].lower()
    if host.startswith(("dashscope-intl.", "dashscope-us.")) or ".ap-southeast-1." in host:
        return "intl"
    return "cn"


# Per region and task type, in order of preference; every listed model gets a lane. Only
# models with a built-in list price in the region, so that --dry-run and --budget work as
# installed; a region serves more (README: "More models"), listed in settings.
DEFAULT_MODELS: dict[Region, dict[str, list[str]]] = {
    "cn": {
        # qwen-image-plus: strong text rendering in pictures, 0.20 CNY (qwen-image: the
        # same capability at 0.25), sync at 2 calls a second with no in-flight cap.
        "t2i": ["qwen-image-plus"],
        # qwen-image-edit-plus: instruction edits incl. precise text edits, 0.2 CNY
        # (qwen-image-edit costs 0.3 for less: n 1), sync 2/s, no in-flight cap;
        # qwen-image-2.0: the 2026 generation-and-editing model, 0.2 CNY, sync 2/s, a
        # second full-rate lane for the edits (twice the t2i rows in the competition's
        # list: 2 lanes against 1 end together). Not in t2i too: a model two types share
        # goes to the type whose rows wait in the pool, and edit rows wait there only a
        # few at a time (their sources are prepared first), so the t2i rows would take
        # its turns and the edits end last.
        "tie": ["qwen-image-edit-plus", "qwen-image-2.0"],
        # text in pictures: the 2026 page gives the whole edit family precise text edits
        "vttie": ["qwen-image-edit-plus", "qwen-image-2.0"],
    },
    "intl": {
        # wan2.5-t2i-preview: 0.220 CNY-eq (wan2.1-t2i-plus: 0.367 for an older model),
        # prompts up to 2000 characters, 5 a second and 5 in flight (wan2.1's: 2 and 2).
        "t2i": ["wan2.5-t2i-preview"],
        # qwen-image-edit-plus: 0.220 CNY-eq against qwen-image-edit's 0.330, n 1-6,
        # sync 2/s with no in-flight cap; wanx2.1-imageedit is not served in Singapore.
        "tie": ["qwen-image-edit-plus"],
        "vttie": ["qwen-image-edit-plus"],
    },
}


def default_models(region: str) -> dict[str, list[str]]:
    table = DEFAULT_MODELS["intl" if region == "intl" else "cn"]
    return {k: list(v) for k, v in table.items()}


def served_for(region: str, kind: Kind) -> list[str]:
    """Every documented model ``region`` serves for ``kind`` (t2i or edit), cheapest known
    price first: the candidates for more lanes."""
    names = [n for n, c in _TABLE.items() if c.served_in(region) and kind in c.kinds]
    return sorted(names, key=lambda n: (list_price(n, region) is None, list_price(n, region) or 0))


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
