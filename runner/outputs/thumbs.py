"""The report's thumbnails: every picture the page shows, made small under thumbs/ in a few
threads and reused while newer than their source."""

from __future__ import annotations

import io
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import structlog
from PIL import Image

from runner.images import ImageProblem, open_image
from runner.store.files import TEMP_MARK

log = structlog.get_logger(__name__)

__all__ = ["THUMBS_DIR", "THUMB_QUALITY", "THUMB_SIDE", "Thumb", "Thumbs", "url"]

THUMBS_DIR = "thumbs"
THUMB_SIDE = 160
THUMB_QUALITY = 75
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _make_thumb(src: Path, dst: Path) -> tuple[int, int] | None:
    """Blocking: (w, h) of dst, made from src unless dst is already newer. None: unreadable."""
    try:
        src_m = src.stat().st_mtime_ns
    except OSError:
        return None
    try:
        if dst.stat().st_mtime_ns >= src_m:
            with Image.open(dst) as img:  # the header is enough for the size
                return img.size
    except OSError:
        pass
    tmp = dst.with_name(f".{dst.name}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}")
    try:
        # src may be an input nobody vetted: the guarded opener bounds its decode
        rgb = open_image(src, max_side=THUMB_SIDE)
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
        dst.parent.mkdir(parents=True, exist_ok=True)
        # A cache that is rebuilt when missing: atomic (rename) but not fsynced, which would
        # cost more than making the thumbnail. The temp name is the one sweep_temp removes.
        try:
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, dst)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return rgb.size
    except (OSError, ImageProblem) as exc:
        log.info("report.thumb_failed", src=str(src), error=str(exc))
        return None


@dataclass
class Thumb:
    src: Path  # the full image
    href: str  # relative link to the full image
    thumb: str  # relative link to the thumbnail
    dst: Path
    size: tuple[int, int] | None = None  # None until made, or when src is unreadable


class Thumbs:
    """Collects every picture the page shows, then makes the thumbnails in a few threads."""

    def __init__(self, out_dir: Path, images_dir: Path) -> None:
        self.out_dir = out_dir
        self.images_dir = images_dir.resolve() if images_dir.exists() else images_dir
        self.items: dict[Path, Thumb] = {}

    def output(self, rel: str) -> Thumb:
        """A file of the run folder, by its path relative to it."""
        src = self.out_dir / rel
        return self._add(src, url(rel), f"{THUMBS_DIR}/{rel}", self.out_dir / THUMBS_DIR / rel)

    def input(self, path: Path) -> Thumb:
        """A task's input image, linked relatively even when outside the run folder."""
        try:
            rel = path.resolve().relative_to(self.images_dir).as_posix()
        except ValueError:
            rel = path.name
        name = "__".join(_SAFE_NAME.sub("_", part) for part in rel.split("/")) + ".jpg"
        href = url(Path(os.path.relpath(path.resolve(), self.out_dir.resolve())).as_posix())
        return self._add(
            path, href, f"{THUMBS_DIR}/inputs/{name}", self.out_dir / THUMBS_DIR / "inputs" / name
        )

    def _add(self, src: Path, href: str, thumb: str, dst: Path) -> Thumb:
        if src not in self.items:
            self.items[src] = Thumb(src=src, href=href, thumb=url(thumb), dst=dst)
        return self.items[src]

    def make_all(self) -> None:
        items = list(self.items.values())
        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thumb") as pool:
            for item, size in zip(
                items, pool.map(lambda t: _make_thumb(t.src, t.dst), items), strict=True
            ):
                item.size = size


def url(rel: str) -> str:
    """A relative path as it goes into href/src: percent-encoded, slashes kept."""
    return quote(rel, safe="/._-~")
