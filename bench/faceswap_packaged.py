"""The face-swap benchmark's second set: pairs unlike the LFW crops, built at run time from
photos that installed packages ship (nothing is copied into the repository).

Photos: insightface's group photo ``t1.jpg`` (six faces, about 108 px each) and
``Tom_Hanks_54745.png`` (a grey 112 px studio portrait), scikit-image's ``astronaut``
(Eileen Collins, an 87 px face in a 512 px colour picture) and matplotlib's
``grace_hopper.jpg`` (a 215 px face with glasses). From them, ``SOURCES`` builds pictures
of nine people in the conditions LFW does not have: grey photos (greyscale JPEGs, and a
grey photo in a colour JPEG with a scan's faint tint and chroma noise), small faces
upscaled from a downscaled group photo (soft, like the issue's "ghost" rows), a group
photo at half size (a 54 px face among three others), a large picture (3x, 645 px face),
and a face cut by the frame's left edge. ``PAIRS`` pairs them, two different people
each, by the condition tested. Every picture is saved as a JPEG (q95, 4:2:0, or greyscale)
like the competition's inputs; the same code gives the same bytes on every run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

QUALITY = 95
# t1.jpg's faces (dlib HOG boxes, x0, y0, x1, y1), by the number used in the names below.
T1_FACES = {
    0: (68, 284, 176, 392),
    1: (1111, 284, 1220, 392),
    2: (728, 368, 836, 476),
    3: (452, 296, 560, 404),
    4: (884, 80, 991, 188),
    5: (266, 176, 356, 266),
}
CROP = 250  # LFW's size: the crops are the same shape as the first set's pictures


def _package_file(module: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{module} is not installed")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def _t1() -> Path:
    return _package_file("insightface", "data", "images", "t1.jpg")


def _hanks() -> Path:
    return _package_file("insightface", "data", "images", "Tom_Hanks_54745.png")


def _astronaut() -> Path:
    return _package_file("skimage", "data", "astronaut.png")


def _hopper() -> Path:
    return _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.ascontiguousarray(np.asarray(img.convert("RGB")))


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L").convert("RGB"))


def _scanned(rgb: np.ndarray) -> np.ndarray:
    """A grey print as a colour scan gives it: the grey picture with a faint warm tint and
    chroma noise (about 2 Lab units, like the grey LFW photo of row 769), not exact grey."""
    lab = cv2.cvtColor(_grey(rgb), cv2.COLOR_RGB2LAB).astype(np.float32)
    noise = np.random.default_rng(769).normal(0.0, 2.0, size=(*lab.shape[:2], 2))
    lab[..., 1:] += cv2.GaussianBlur(noise.astype(np.float32), (0, 0), 1.0)
    lab[..., 1:] += np.array([0.5, 1.5], dtype=np.float32)
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _resize(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (round(w * factor), round(h * factor))
    method = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, size, interpolation=method)


def _around(rgb: np.ndarray, box: tuple[float, ...], side: int) -> np.ndarray:
    """A ``side`` x ``side`` crop centred on ``box`` (a little above its centre, as LFW's),
    kept inside the picture."""
    h, w = rgb.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2 + 0.08 * (box[3] - box[1])
    left = int(min(max(0, round(cx - side / 2)), w - side))
    top = int(min(max(0, round(cy - side / 2)), h - side))
    return np.ascontiguousarray(rgb[top : top + side, left : left + side])


def t1_crop(face: int) -> np.ndarray:
    """An LFW-like 250 px crop of one face of the group photo (face about 108 px)."""
    return _around(_rgb(_t1()), T1_FACES[face], CROP)


def t1_tiny(face: int) -> np.ndarray:
    """The group photo at 40 %, a crop round one face (about 43 px) upscaled to 250 px:
    a small face, soft as an upscaled thumbnail is."""
    scale = 0.4
    small = _resize(_rgb(_t1()), scale)
    box = tuple(v * scale for v in T1_FACES[face])
    return _resize(_around(small, box, 100), CROP / 100)


def t1_group() -> np.ndarray:
    """The group photo at half size, cut to 480 x 360 round face 2 (54 px), the subject:
    the face nearest the centre, with three others in the picture."""
    half = _resize(_rgb(_t1()), 0.5)
    x0, y0, x1, y1 = (v / 2 for v in T1_FACES[2])
    left = round((x0 + x1) / 2 - 240)
    top = round((y0 + y1) / 2 - 180)
    return np.ascontiguousarray(half[top : top + 360, left : left + 480])


def hanks() -> np.ndarray:
    """The grey 112 px portrait upscaled to 250 px (its chin on the lower edge)."""
    return _resize(_rgb(_hanks()), CROP / 112)


def collins() -> np.ndarray:
    return _rgb(_astronaut())


def collins_edge() -> np.ndarray:
    """The astronaut cut so that the left tenth of her face is outside the frame."""
    return np.ascontiguousarray(_rgb(_astronaut())[40:352, 188:500])


def hopper() -> np.ndarray:
    return _rgb(_hopper())


def hopper_large() -> np.ndarray:
    """Grace Hopper at 3x (1536 x 1800, a 645 px face)."""
    return _resize(_rgb(_hopper()), 3.0)


@dataclass(frozen=True)
class Source:
    """One picture of the set: how it is built and how it is saved."""

    name: str
    person: str
    build: Callable[[], np.ndarray]
    mode: str = "colour"  # "colour", "grey" (a greyscale JPEG) or "grey-rgb" (a grey
    # photo in a colour JPEG, with a scan's faint tint and chroma noise)

    @property
    def file(self) -> str:
        return f"{self.name}.jpg"


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("hanks-grey", "hanks", hanks, "grey"),
    Source("collins", "collins", collins),
    Source("collins-grey", "collins", lambda: _scanned(collins()), "grey-rgb"),
    Source("collins-edge", "collins", collins_edge),
    Source("hopper", "hopper", hopper),
    Source("hopper-grey", "hopper", lambda: _grey(hopper()), "grey"),
    Source("hopper-large", "hopper", hopper_large),
    Source("t1-group", "t1-2", t1_group),
    *(Source(f"t1-{k}", f"t1-{k}", (lambda k=k: t1_crop(k))) for k in T1_FACES),
    *(Source(f"t1-{k}-tiny", f"t1-{k}", (lambda k=k: t1_tiny(k))) for k in (0, 2, 3, 4, 5)),
)}

# (ori, target, what it tests): each pair two different people.
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("hanks-grey", "collins", "grey ori, colour target"),
    ("hanks-grey", "t1-2", "grey ori, colour target"),
    ("collins-grey", "hopper", "grey (colour JPEG) ori, colour target"),
    ("hopper-grey", "t1-3", "grey ori, colour target"),
    ("collins", "hanks-grey", "colour ori, grey target"),
    ("hopper", "hanks-grey", "colour ori, grey target"),
    ("t1-0", "collins-grey", "colour ori, grey (colour JPEG) target"),
    ("t1-4", "hopper-grey", "colour ori, grey target"),
    ("t1-0-tiny", "hopper", "small soft ori, sharp target"),
    ("t1-2-tiny", "collins", "small soft ori, sharp target"),
    ("t1-3-tiny", "t1-5", "small soft ori"),
    ("t1-4-tiny", "hopper-large", "small soft ori, large target"),
    ("t1-5-tiny", "t1-1", "small soft ori"),
    ("hopper", "t1-3-tiny", "sharp ori, small soft target"),
    ("collins", "t1-4-tiny", "small ori face, small soft target"),
    ("t1-1", "t1-0-tiny", "small soft target"),
    ("hopper-large", "collins", "large ori, small target face"),
    ("hopper-large", "t1-2", "large ori"),
    ("t1-3", "hopper-large", "large target"),
    ("collins-edge", "t1-3", "ori's face cut by the edge"),
    ("collins-edge", "hopper", "ori's face cut by the edge"),
    ("t1-2", "collins-edge", "target's face cut by the edge"),
    ("t1-group", "hopper", "group photo, 54 px face"),
    ("t1-group", "collins", "group photo, 54 px face"),
    ("collins", "hopper", "colour, small ori face"),
    ("hopper", "collins", "colour, glasses"),
    ("t1-5", "hanks-grey", "colour ori, grey small target"),
    ("collins", "t1-0", "colour, small ori face"),
)


def missing() -> str | None:
    """None when every photo the set is built from is installed, else which is not."""
    lost = []
    for name, find in (("insightface", _t1), ("insightface", _hanks),
                       ("scikit-image", _astronaut), ("matplotlib", _hopper)):
        try:
            if not find().is_file():
                lost.append(name)
        except FileNotFoundError:
            lost.append(name)
    return f"{', '.join(sorted(set(lost)))} sample photos not installed" if lost else None


def save(rgb: np.ndarray, path: Path, mode: str) -> None:
    img = Image.fromarray(rgb)
    if mode == "grey":
        img = img.convert("L")
    img.save(path, "JPEG", quality=QUALITY, subsampling=2)


def build(folder: Path) -> list[dict[str, str]]:
    """Write every source picture into ``folder``; the pairs as task rows (``index``,
    ``ori_image``, ``target_image``, ``what``), indices p01, p02, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    used = {name for pair in PAIRS for name in pair[:2]}
    for name in sorted(used):
        source = SOURCES[name]
        save(source.build(), folder / source.file, source.mode)
    rows = []
    for n, (ori, target, what) in enumerate(PAIRS, start=1):
        if SOURCES[ori].person == SOURCES[target].person:
            raise ValueError(f"pair {n}: {ori} and {target} are the same person")
        rows.append({"index": f"p{n:02d}", "ori_image": SOURCES[ori].file,
                     "target_image": SOURCES[target].file, "what": what})
    return rows
