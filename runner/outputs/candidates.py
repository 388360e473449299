"""The files a row's current result left in a run folder: what the report shows and what
``runner rejudge`` scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.store.journal import RowState

__all__ = ["candidate_files", "result_candidates"]


def _numbered_first(path: Path) -> tuple[bool, int, str]:
    """candidates/<index>/<k>.jpg in k order, any other name after them by name."""
    stem = path.stem
    return (not stem.isdigit(), int(stem) if stem.isdigit() else 0, path.name)


def result_candidates(out_dir: Path, index: str, row: RowState) -> list[dict[str, Any]]:
    """The candidates of the row's current result that exist, relative to ``out_dir``: those
    it lists, then any other .jpg under candidates/<index>/. Empty for a one-image result.

    Each entry: {"file", "model", "identity_target"} (the last two may be None).
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    listed = row.result.get("candidates") or []
    for c in listed:
        if isinstance(c, dict) and isinstance(c.get("file"), str):
            _add(out, seen, out_dir, c["file"], c.get("model"), c.get("identity_target"))
    folder = out_dir / "candidates" / index
    # Only a result made with candidates owns the folder: files left there by an earlier
    # result of the row are stale and must never be shown or replace the current image.
    if listed and folder.is_dir():
        files = [p for p in folder.iterdir() if p.suffix.lower() == ".jpg" and p.is_file()]
        for p in sorted(files, key=_numbered_first):
            _add(out, seen, out_dir, f"candidates/{index}/{p.name}")
    return out


def candidate_files(out_dir: Path, index: str, row: RowState) -> list[dict[str, Any]]:
    """Every output of one row to judge: its result's candidates, else imgs/<index>.jpg."""
    out = result_candidates(out_dir, index, row)
    if not out:
        model, identity = row.result.get("model"), row.result.get("identity_target")
        _add(out, set(), out_dir, f"imgs/{index}.jpg", model, identity)
    return out


def _add(
    out: list[dict[str, Any]],
    seen: set[str],
    out_dir: Path,
    rel: str,
    model: Any = None,
    identity: Any = None,
) -> None:
    rel = rel.replace("\\", "/")  # a journal written on Windows names files with backslashes
    if rel in seen or not (out_dir / rel).is_file():
        return
    seen.add(rel)
    out.append({"file": rel, "model": model, "identity_target": identity})
