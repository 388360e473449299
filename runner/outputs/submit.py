"""The competition zip: ``result.csv`` + ``imgs/<index>.jpg`` for every row, in task order.

It packs the task list of the run in ``out_dir`` (remembered in its journal, absolute) unless
given another, and refuses, writing nothing, when the folder holds no run, when the given
list is not the one the run used (by fingerprint), or when a row changed since its image was
made. A row without a result gets the best fallback (its ori_image for tie/vttie/deepfake, a
neutral grey picture for t2i) and is named in the report; ``strict`` refuses instead.
Emulator placeholders are refused unless ``allow_emulated``.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from pydantic import BaseModel, Field

from runner.errors import RunnerError
from runner.images import ImageProblem, encode_jpeg, open_image, placeholder_jpeg
from runner.store.files import write_atomic_sync
from runner.store.fingerprint import fingerprints, tasklist_fingerprint
from runner.store.journal import JOURNAL_NAME, JournalState, replay
from runner.store.lock import OutLock
from runner.tasks import BadRow, TaskList, load_tasks


class SubmitRefused(RunnerError):
    """The zip was not written; the message says why."""


class SubmitReport(BaseModel):
    zip_path: Path
    tasks: Path  # the task list that was packed
    rows: int
    generated: int
    fallbacks: dict[str, str] = Field(default_factory=dict)  # index -> what was used and why
    emulated: list[str] = Field(default_factory=list)


TEAM_MAX = 64  # characters: a name, not a sentence


def zip_name(team: str) -> str:
    return f"{team}_图片生成_result.zip"


def check_team(team: str) -> str:
    """The team name as given, when it is a name and not a path (the zip is always written
    inside ``--out``); SubmitRefused, one line, else."""
    name = team.strip()
    why = None
    if not name:
        why = "it is empty"
    elif any(c in name for c in "/\\\0") or name.startswith("."):
        why = "it would be a path (no '/', '\\' or leading '.')"
    elif any(not c.isprintable() for c in name):
        why = "it holds control characters"
    elif len(name) > TEAM_MAX:
        why = f"it is longer than {TEAM_MAX} characters"
    if why:
        raise SubmitRefused(f"--team {team!r} is not a team name: {why}")
    return name


def _valid_jpeg(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
        open_image(path)  # proves it decodes whole
    except (OSError, ImageProblem):
        return None
    return data if data[:3] == b"\xff\xd8\xff" else None


def _the_run(out_dir: Path) -> JournalState:
    """The journal of the run in ``out_dir``; SubmitRefused when there is none."""
    journal = out_dir / JOURNAL_NAME
    if not journal.is_file():
        raise SubmitRefused(
            f"{out_dir} holds no run (no {JOURNAL_NAME}): give the --out of a finished run"
        )
    state = replay(journal)
    if state.last_run is None:
        raise SubmitRefused(f"{journal} records no run: give the --out of a finished run")
    return state


def _check_same_list(
    state: JournalState, tasklist: TaskList, fps: dict[str, str], out_dir: Path
) -> None:
    """The task list must be the one the last run used, and every done row unchanged."""
    last = state.last_run or {}
    used, used_fp = last.get("tasks"), last.get("tasks_fp")
    if used_fp and tasklist_fingerprint(tasklist, fps) != used_fp:
        raise SubmitRefused(
            f"{tasklist.path} is not the task list the run in {out_dir} used ({used}): "
            "their rows differ; pack that list, or run this one first"
        )
    changed = [
        index
        for index in tasklist.order
        if (row := state.rows.get(index)) is not None
        and row.done
        and row.fp is not None
        and row.fp != fps.get(index)
    ]
    if changed:
        raise SubmitRefused(
            f"{len(changed)} row(s) changed since their image was made (rows {_few(changed)}): "
            "run the task list again to remake them, then submit"
        )


def pack(
    out_dir: Path,
    team: str,
    *,
    tasks: Path | None = None,
    images: Path | None = None,
    strict: bool = False,
    allow_emulated: bool = False,
) -> SubmitReport:
    """Write ``out_dir/<team>_图片生成_result.zip``; SubmitRefused (nothing written) else."""
    team = check_team(team)
    _the_run(out_dir)  # before the lock, which would create the folder
    with OutLock(out_dir, "submit"):  # no run may write images while they are packed
        return _pack(out_dir, team, tasks, images, strict, allow_emulated)


def _pack(
    out_dir: Path,
    team: str,
    tasks: Path | None,
    images: Path | None,
    strict: bool,
    allow_emulated: bool,
) -> SubmitReport:
    state = _the_run(out_dir)  # read under the lock: no run is adding to it now
    tasklist = load_tasks(*_list_of_the_run(state, out_dir, tasks, images))
    fps = fingerprints(tasklist)
    _check_same_list(state, tasklist, fps, out_dir)
    files, fallbacks, emulated = _row_images(out_dir, state, tasklist)
    _check_packable(out_dir, tasklist, fallbacks, emulated, strict, allow_emulated)
    path = out_dir / zip_name(team)
    if path.parent != out_dir:  # check_team's promise, kept where the file is named
        raise SubmitRefused(f"--team {team!r} would write outside {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic_sync(path, _zip_bytes(tasklist.order, files))
    return SubmitReport(
        zip_path=path,
        tasks=tasklist.path,
        rows=len(tasklist.order),
        generated=len(tasklist.order) - len(fallbacks),
        fallbacks=fallbacks,
        emulated=emulated,
    )


def _list_of_the_run(
    state: JournalState, out_dir: Path, tasks: Path | None, images: Path | None
) -> tuple[Path, Path | None]:
    """The task list (and images folder) to pack: the one given, else the run's own."""
    if tasks is not None:
        return tasks, images
    last = state.last_run or {}
    if not last.get("tasks"):
        raise SubmitRefused(f"the run in {out_dir} does not name its task list: give --tasks")
    if images is None and last.get("images"):
        images = Path(last["images"])
    return Path(last["tasks"]), images


def _row_images(
    out_dir: Path, state: JournalState, tasklist: TaskList
) -> tuple[dict[str, bytes], dict[str, str], list[str]]:
    """Each row's JPEG; the rows given a fallback (and why); the rows the emulator made."""
    by_index = {t.index: t for t in tasklist.tasks}
    bad_by_index = {b.index: b for b in tasklist.bad}
    files: dict[str, bytes] = {}
    fallbacks: dict[str, str] = {}
    emulated: list[str] = []
    for index in tasklist.order:
        row = state.rows.get(index)
        produced = out_dir / "imgs" / f"{index}.jpg"
        data = _valid_jpeg(produced) if row is not None and row.done else None
        if data is not None:
            files[index] = data
            if row is not None and row.emulated:
                emulated.append(index)
            continue
        why = (row.failed_reason if row else None) or "no result"
        ori: Path | None = None
        if index in by_index:
            ori = by_index[index].ori_image
        elif index in bad_by_index:
            ori = _bad_row_ori(tasklist, bad_by_index[index])
        files[index], fallbacks[index] = _fallback(tasklist.types.get(index, ""), ori, why)
    return files, fallbacks, emulated


def _bad_row_ori(tasklist: TaskList, bad: BadRow) -> Path | None:
    """A bad row's ori_image, when it names a file inside the images folder."""
    if not bad.ori_name:
        return None
    candidate = (tasklist.images_dir / bad.ori_name).resolve()
    if candidate.is_relative_to(tasklist.images_dir.resolve()) and candidate.is_file():
        return candidate
    return None


def _fallback(task_type: str, ori: Path | None, why: str) -> tuple[bytes, str]:
    """The stand-in for a row without a result, and what the report says of it."""
    if task_type != "t2i" and ori is not None:
        try:
            # the API's own bound: a huge source is never decoded at full size here
            return encode_jpeg(open_image(ori, max_side=4096), 95), f"ori_image copied ({why})"
        except ImageProblem:
            pass
    return placeholder_jpeg(), f"grey placeholder ({why})"


def _check_packable(
    out_dir: Path,
    tasklist: TaskList,
    fallbacks: dict[str, str],
    emulated: list[str],
    strict: bool,
    allow_emulated: bool,
) -> None:
    """SubmitRefused when the zip would hold no result, emulator pictures, or (strict) any
    fallback."""
    if tasklist.order and len(fallbacks) == len(tasklist.order):
        raise SubmitRefused(
            f"no row of the run in {out_dir} has a result: the zip would hold only "
            "fallbacks; run the task list first (or check --out)"
        )
    if emulated and not allow_emulated:
        raise SubmitRefused(
            f"{len(emulated)} image(s) are emulator placeholders (rows {_few(emulated)}); "
            "run with DASHSCOPE_API_KEY set, or pass --allow-emulated to pack them anyway"
        )
    if strict and fallbacks:
        raise SubmitRefused(
            f"{len(fallbacks)} row(s) have no result (rows {_few(list(fallbacks))}); "
            "without --strict they would get fallbacks"
        )


def _zip_bytes(order: list[str], files: dict[str, bytes]) -> bytes:
    """result.csv and imgs/<index>.jpg for every row, in task order."""
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    writer.writerow(["index", "gen_image"])
    writer.writerows([index, f"{index}.jpg"] for index in order)
    zbuf = io.BytesIO()
    # JPEGs do not compress: store them; only the CSV is deflated
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("result.csv", csv_buf.getvalue().encode("utf-8-sig"), zipfile.ZIP_DEFLATED)
        for index in order:
            zf.writestr(f"imgs/{index}.jpg", files[index])
    return zbuf.getvalue()


def _few(items: list[str], n: int = 8) -> str:
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")
