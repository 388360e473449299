"""report.html under --out: one self-contained page (inline CSS/JS, no network) with a summary
on top and a row per task, thumbnails instead of full images so 1000 rows load fast.

Everything is linked relatively (thumbs/, imgs/, candidates/), so the folder can be zipped and
moved; input images outside the folder are linked relatively too, their thumbnails live inside.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from PIL import Image

from runner.images import ImageProblem, open_image
from runner.outcomes import runs_view
from runner.store.files import TEMP_MARK, write_atomic_sync
from runner.store.journal import JOURNAL_NAME, JournalState, RowState, replay
from runner.tasks import TASK_TYPES, BadRow, Task, TaskList, load_tasks

log = structlog.get_logger(__name__)

REPORT_NAME = "report.html"
THUMBS_DIR = "thumbs"
THUMB_SIDE = 160
THUMB_QUALITY = 75
SUMMARY_NAME = "summary.json"  # written by runner.job at the end of a run
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------- thumbnails


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
class _Thumb:
    src: Path  # the full image
    href: str  # relative link to the full image
    thumb: str  # relative link to the thumbnail
    dst: Path
    size: tuple[int, int] | None = None


class _Thumbs:
    """Collects every picture the page shows, then makes the thumbnails in a few threads."""

    def __init__(self, out_dir: Path, images_dir: Path) -> None:
        self.out_dir = out_dir
        self.images_dir = images_dir.resolve() if images_dir.exists() else images_dir
        self.items: dict[Path, _Thumb] = {}

    def output(self, rel: str) -> _Thumb:
        src = self.out_dir / rel
        return self._add(src, _url(rel), f"{THUMBS_DIR}/{rel}", self.out_dir / THUMBS_DIR / rel)

    def input(self, path: Path) -> _Thumb:
        try:
            rel = path.resolve().relative_to(self.images_dir).as_posix()
        except ValueError:
            rel = path.name
        name = "__".join(_SAFE_NAME.sub("_", part) for part in rel.split("/")) + ".jpg"
        href = _url(Path(os.path.relpath(path.resolve(), self.out_dir.resolve())).as_posix())
        return self._add(
            path, href, f"{THUMBS_DIR}/inputs/{name}", self.out_dir / THUMBS_DIR / "inputs" / name
        )

    def _add(self, src: Path, href: str, thumb: str, dst: Path) -> _Thumb:
        if src not in self.items:
            self.items[src] = _Thumb(src=src, href=href, thumb=_url(thumb), dst=dst)
        return self.items[src]

    def make_all(self) -> None:
        items = list(self.items.values())
        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thumb") as pool:
            for item, size in zip(
                items, pool.map(lambda t: _make_thumb(t.src, t.dst), items), strict=True
            ):
                item.size = size


def _url(rel: str) -> str:
    return quote(rel, safe="/._-~")


# --------------------------------------------------------------------------- the rows


@dataclass
class _Row:
    index: str
    task_type: str
    prompt: str
    status: str  # done, failed, bad input, not run
    reason: str | None = None
    inputs: list[tuple[str, _Thumb | None, str]] = field(default_factory=list)  # label, thumb, name
    output: _Thumb | None = None
    chosen_file: str | None = None
    chosen_score: dict[str, Any] | None = None
    candidates: list[tuple[str, _Thumb, dict[str, Any] | None, str | None]] = field(
        default_factory=list
    )  # file, thumb, judge record, model
    model: str | None = None
    emulated: bool = False
    result: dict[str, Any] = field(default_factory=dict)


def _candidate_entries(out_dir: Path, index: str, row: RowState) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for c in row.result.get("candidates") or []:
        if isinstance(c, dict) and isinstance(c.get("file"), str) and c["file"] not in seen:
            if (out_dir / c["file"]).is_file():
                seen.add(c["file"])
                out.append(c)
    folder = out_dir / "candidates" / index
    if folder.is_dir():
        names = sorted(
            (p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg"),
            key=lambda n: (not n[:-4].isdigit(), int(n[:-4]) if n[:-4].isdigit() else 0, n),
        )
        for name in names:
            rel = f"candidates/{index}/{name}"
            if rel not in seen:
                seen.add(rel)
                out.append({"file": rel})
    return out


def _scored(rec: dict[str, Any] | None) -> bool:
    return bool(rec) and rec.get("error") is None and isinstance(rec.get("overall"), int | float)


def _build_rows(
    out_dir: Path,
    tasklist: TaskList,
    state: JournalState,
    summary: dict[str, Any],
    thumbs: _Thumbs,
) -> list[_Row]:
    tasks: dict[str, Task] = {t.index: t for t in tasklist.tasks}
    bad: dict[str, BadRow] = {b.index: b for b in tasklist.bad}
    # the last "chosen" record of each row (rejudge or the scheduler's pick), from replay
    chosen_ev = {i: r.chosen for i, r in state.rows.items() if r.chosen}
    last_run: dict[str, dict[str, Any]] = {
        str(r.get("index")): r for r in summary.get("rows") or [] if isinstance(r, dict)
    }
    rows: list[_Row] = []
    for index in tasklist.order:
        task = tasks.get(index)
        state_row = state.rows.get(index) or RowState(index=index)
        result = state_row.result
        prompt = task.prompt if task else ""
        row = _Row(
            index=index,
            task_type=tasklist.types.get(index, "?"),
            prompt=prompt,
            status="not run",
            model=state_row.model,
            emulated=state_row.emulated,
            result=result,
        )
        # inputs: shown for every row, failed ones included
        if task is not None:
            for label, path, name in (
                ("ori", task.ori_image, task.ori_name),
                ("target", task.target_image, task.target_name),
            ):
                if path is not None:
                    row.inputs.append((label, thumbs.input(path), name))
        elif index in bad and bad[index].ori_name:
            name = bad[index].ori_name
            path = (tasklist.images_dir / name).resolve()
            inside = path.is_relative_to(thumbs.images_dir)
            row.inputs.append(
                ("ori", thumbs.input(path) if inside and path.is_file() else None, name)
            )
        out_rel = f"imgs/{index}.jpg"
        has_output = (out_dir / out_rel).is_file()
        prior = last_run.get(index, {})
        if index in bad:  # the row's own input: one status everywhere ("bad input")
            row.status, row.reason = "bad input", bad[index].reason
        elif state_row.done and has_output:
            row.status = "done"
        elif state_row.failed_reason:
            row.status, row.reason = "failed", state_row.failed_reason
        elif prior.get("status") == "bad":
            row.status, row.reason = "bad input", prior.get("reason") or "bad input"
        elif prior.get("status") in ("failed", "stopped"):
            row.status, row.reason = "failed", prior.get("reason") or prior.get("status")
        elif has_output:
            row.status = "done"
        if has_output:
            row.output = thumbs.output(out_rel)
        # candidates and scores
        judged = state_row.judged
        for c in _candidate_entries(out_dir, index, state_row):
            row.candidates.append(
                (c["file"], thumbs.output(c["file"]), judged.get(c["file"]), c.get("model"))
            )
        chosen = chosen_ev.get(index)
        picked = result.get("chosen")  # the scheduler's pick: a position in "candidates"
        listed = result.get("candidates")
        if chosen is None and isinstance(picked, str):
            chosen = picked
        elif (
            chosen is None
            and isinstance(picked, int)
            and isinstance(listed, list)
            and 0 <= picked < len(listed)
            and isinstance(listed[picked], dict)
        ):
            chosen = listed[picked].get("file")
        if chosen is None and row.candidates:
            best = max(
                (c for c in row.candidates if _scored(c[2])),
                key=lambda c: float(c[2]["overall"]) if c[2] else -1.0,
                default=None,
            )
            chosen = best[0] if best else None
        if chosen is None and has_output:
            chosen = out_rel
        row.chosen_file = chosen
        if chosen is not None:
            row.chosen_score = judged.get(chosen) or (judged.get(out_rel) if has_output else None)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- summary


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "–"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _type_stats(rows: list[_Row]) -> tuple[list[dict[str, Any]], float | None, int]:
    """Per-type table rows, the estimated overall score (unscored rows count 0), scored rows."""
    order = [t for t in TASK_TYPES if any(r.task_type == t for r in rows)]
    order += sorted({r.task_type for r in rows} - set(order))
    table: list[dict[str, Any]] = []
    all_overall: list[float] = []
    scored_total = 0
    for ttype in order:
        mine = [r for r in rows if r.task_type == ttype]
        counts = Counter(r.status for r in mine)
        scores = [r.chosen_score for r in mine if r.status == "done" and _scored(r.chosen_score)]
        per_row = [
            float(r.chosen_score["overall"])
            if r.status == "done" and r.chosen_score and _scored(r.chosen_score)
            else 0.0
            for r in mine
        ]
        all_overall += per_row
        scored_total += len(scores)
        table.append(
            {
                "type": ttype,
                "rows": len(mine),
                "done": counts["done"],
                "failed": counts["failed"],
                "bad input": counts["bad input"],
                "not run": counts["not run"],
                "scored": len(scores),
                "sc": _mean([min(s["sc"]) for s in scores if s and s.get("sc")]),
                "pq": _mean([min(s["pq"]) for s in scores if s and s.get("pq")]),
                "identity": _mean(
                    [float(s["identity"]) for s in scores if s and s.get("identity") is not None]
                ),
                "overall": _mean([float(s["overall"]) for s in scores if s]),
                "estimate": _mean(per_row),
            }
        )
    return table, _mean(all_overall), scored_total


def _total(runs: list[dict[str, Any]], key: str, fallback: Any) -> Any:
    """A figure summed over the folder's closed runs (the last summary's when none closed)."""
    values = [r[key] for r in runs if r.get("ended") and isinstance(r.get(key), int | float)]
    return sum(values) if values else fallback


def _money(amount: Any, currency: str) -> str:
    if not isinstance(amount, int | float):
        return "price unknown"
    return f"{amount:,.2f} {currency}".strip()


def _cost_fact(summary: dict[str, Any]) -> str:
    billed = [b for b in summary.get("billed") or [] if isinstance(b, dict) and b.get("images")]
    if not billed:
        return "–"
    currency = next((str(b.get("currency")) for b in billed if b.get("currency")), "")
    known = [b["cost"] for b in billed if isinstance(b.get("cost"), int | float)]
    images = sum(int(b["images"]) for b in billed)
    text = f"{images} images billed, " + (
        _money(sum(known), currency) if known else "price unknown"
    )
    missing = [str(b["model"]) for b in billed if not isinstance(b.get("cost"), int | float)]
    if missing and known:
        text += f" (+ {', '.join(missing)}: no price in settings)"
    if summary.get("emulated"):
        text += "; at list prices: the emulator bills nothing"
    return text


def _billed_html(summary: dict[str, Any]) -> str:
    billed = [b for b in summary.get("billed") or [] if isinstance(b, dict) and b.get("images")]
    if not billed:
        return ""
    e = html.escape
    parts = [
        '<table class="types"><caption>Images billed per model (all runs, list prices)'
        "</caption><thead><tr><th>model</th><th>images</th><th>price / image</th>"
        "<th>est. cost</th></tr></thead><tbody>"
    ]
    for b in billed:
        price = b.get("price")
        parts.append(
            f"<tr><td>{e(str(b.get('model')))}</td><td>{_fmt(b.get('images'))}</td>"
            f"<td>{_fmt(price, 4) if isinstance(price, int | float) else '–'}</td>"
            f"<td>{e(_money(b.get('cost'), str(b.get('currency') or '')))}</td></tr>"
        )
    parts.append("</tbody></table>")
    return "".join(parts)


def _runs_html(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return ""
    e = html.escape
    parts = [
        '<table class="types"><caption>Runs in this folder</caption><thead><tr><th>#</th>'
        "<th>started (UTC)</th><th>time</th><th>submits</th><th>429s</th><th>retries</th>"
        "<th>done</th><th>not done</th><th>service</th><th>note</th></tr></thead><tbody>"
    ]
    for i, r in enumerate(runs, 1):
        t = r.get("t")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(t)))
            if isinstance(t, int | float)
            else "–"
        )
        note = (
            "ended without closing (killed?)"
            if not r.get("ended")
            else (
                f"interrupted ({r['interrupted']})"
                if r.get("interrupted")
                else (f"stopped: {r['stopped']}" if r.get("stopped") else "")
            )
        )
        ended = bool(r.get("ended"))
        parts.append(
            f"<tr><td>{i}</td><td>{e(when)}</td>"
            f"<td>{_duration(r.get('elapsed_s')) if ended else '–'}</td>"
            + "".join(
                f"<td>{_fmt(r.get(k)) if ended else '–'}</td>"
                for k in ("submits", "throttled", "retries", "done", "failed")
            )
            + f"<td>{'emulator' if r.get('emulated') else 'DashScope'}</td><td>{e(note)}</td></tr>"
        )
    parts.append("</tbody></table>")
    return "".join(parts)


def _summary_html(rows: list[_Row], summary: dict[str, Any], state: JournalState) -> str:
    table, estimate, scored = _type_stats(rows)
    runs = runs_view(state.runs_info)
    counts = Counter(r.status for r in rows)
    emulated = summary.get("emulated")
    if emulated is None:
        emulated = any(r.emulated for r in rows) if any(r.status == "done" for r in rows) else None
    backend = summary.get("backend")
    if emulated is True:
        service = "EMULATOR (local stand-in, not DashScope: images are placeholders)"
    elif emulated is False:
        service = f"DashScope ({backend})" if backend else "DashScope"
    else:
        service = "unknown (no summary.json)"
    used: list[str] = []
    for m in summary.get("models") or []:
        if isinstance(m, dict) and m.get("submits"):
            used.append(
                f"{m.get('model')}: {m.get('submits')} submits, {m.get('throttled', 0)} × 429"
                + (f", p50 {m['p50_s']} s" if m.get("p50_s") else "")
            )
    seen_models = Counter(r.model for r in rows if r.model)
    if not used:
        used = [f"{name}: {n} rows" for name, n in sorted(seen_models.items())]
    judges = sorted(
        {
            str(rec.get("judge_model"))
            for st in state.rows.values()
            for rec in st.judged.values()
            if rec.get("judge_model")
        }
    )
    emulated_judge = any(
        rec.get("emulated") for st in state.rows.values() for rec in st.judged.values()
    )
    facts = [
        ("Rows", f"{len(rows)}"),
        ("Done", f"{counts['done']}"),
        ("Failed", f"{counts['failed']}"),
        ("Bad input", f"{counts['bad input']}"),
        ("Not run", f"{counts['not run']}"),
        (
            "Estimated overall score",
            f"{_fmt(estimate)} ({scored} of {len(rows)} rows scored; "
            "mean of per-row VIEScore overall, unscored rows count as 0)",
        ),
        ("Runs", f"{len(runs)} in this folder (listed below)" if runs else "–"),
        ("Run time (all runs)", _duration(_total(runs, "elapsed_s", summary.get("elapsed_s")))),
        ("Retries (all runs)", _fmt(_total(runs, "retries", summary.get("retries")))),
        ("429s (all runs)", _fmt(_total(runs, "throttled", summary.get("throttled")))),
        ("Estimated cost", _cost_fact(summary)),
        ("Service", service),
        ("Models used", "; ".join(used) or "–"),
        (
            "Judge",
            (", ".join(judges) + (" (emulated)" if emulated_judge else "")) if judges else "–",
        ),
    ]
    if summary.get("faceswap"):
        facts.append(("Face swap", str(summary["faceswap"])))
    if summary.get("stopped_reason"):
        facts.append(("Stopped", str(summary["stopped_reason"])))
    if state.damaged_lines:
        facts.append(("Journal", f"{state.damaged_lines} damaged line(s) skipped"))
    e = html.escape
    parts = ['<section id="summary"><dl class="facts">']
    for name, value in facts:
        cls = ' class="warn"' if name == "Service" and emulated else ""
        parts.append(f"<div{cls}><dt>{e(name)}</dt><dd>{e(value)}</dd></div>")
    parts.append("</dl>")
    parts.append(
        '<table class="types"><thead><tr><th>type</th><th>rows</th><th>done</th>'
        "<th>failed</th><th>bad input</th><th>not run</th><th>scored</th><th>mean SC</th>"
        "<th>mean PQ</th>"
        "<th>mean identity</th><th>mean overall (scored)</th>"
        "<th>estimate (unscored = 0)</th></tr></thead><tbody>"
    )
    for t in table:
        parts.append(
            f"<tr><td>{e(t['type'])}</td><td>{t['rows']}</td><td>{t['done']}</td>"
            f"<td>{t['failed']}</td><td>{t['bad input']}</td><td>{t['not run']}</td>"
            f"<td>{t['scored']}</td>"
            f"<td>{_fmt(t['sc'])}</td><td>{_fmt(t['pq'])}</td><td>{_fmt(t['identity'], 3)}</td>"
            f"<td>{_fmt(t['overall'])}</td><td>{_fmt(t['estimate'])}</td></tr>"
        )
    parts.append("</tbody></table>")
    parts.append(_billed_html(summary))
    parts.append(_runs_html(runs))
    parts.append("</section>")
    return "".join(parts)


# --------------------------------------------------------------------------- the page


def _img(t: _Thumb | None, alt: str, cls: str = "") -> str:
    e = html.escape
    if t is None:
        return f'<span class="missing">{e(alt)}: missing</span>'
    if t.size is None:
        return f'<a href="{e(t.href)}" class="missing">{e(alt)}: unreadable</a>'
    w, h = t.size
    c = f' class="{cls}"' if cls else ""
    return (
        f'<a href="{e(t.href)}"><img{c} src="{e(t.thumb)}" width="{w}" height="{h}" '
        f'loading="lazy" decoding="async" alt="{e(alt)}"></a>'
    )


def _score_html(rec: dict[str, Any] | None) -> str:
    e = html.escape
    if not rec:
        return '<span class="dim">not judged</span>'
    if not _scored(rec):
        return f'<span class="err">unscored: {e(str(rec.get("error") or "no score"))}</span>'

    def parts(v: Any) -> str:
        return "[" + ", ".join(_fmt(float(x), 0) for x in v) + "]" if v else "–"

    bits = [f"<b>{_fmt(float(rec['overall']))}</b>"]
    if rec.get("sc"):
        bits.append(f"SC {parts(rec['sc'])}")
    if rec.get("identity") is not None:
        bits.append(f"id {_fmt(float(rec['identity']), 3)}")
    if rec.get("pq"):
        bits.append(f"PQ {parts(rec['pq'])}")
    title = e(str(rec.get("reasoning") or ""))
    return f'<span class="score" title="{title}">{" · ".join(bits)}</span>'


def _row_html(r: _Row) -> str:
    e = html.escape
    cells: list[str] = [f"<td class='idx'>{e(r.index)}</td>", f"<td>{e(r.task_type)}</td>"]
    prompt = [f'<div class="prompt">{e(r.prompt)}</div>' if r.prompt else ""]
    sent = r.result.get("prompt_sent")
    if isinstance(sent, str) and sent and sent != r.prompt:
        prompt.append(f"<details><summary>sent</summary>{e(sent)}</details>")
    if r.result.get("negative_prompt"):
        prompt.append(
            f"<details><summary>negative</summary>{e(str(r.result['negative_prompt']))}</details>"
        )
    actual = r.result.get("actual_prompt")
    if isinstance(actual, list):
        actual = " / ".join(str(a) for a in actual)
    if isinstance(actual, str) and actual:
        prompt.append(f"<details><summary>actual</summary>{e(actual)}</details>")
    cells.append(f"<td>{''.join(prompt)}</td>")
    inputs = "".join(
        f"<figure>{_img(t, label)}<figcaption>{e(label)}: {e(name)}</figcaption></figure>"
        for label, t, name in r.inputs
    )
    cells.append(f"<td class='pics'>{inputs or '<span class=dim>–</span>'}</td>")
    cells.append(
        f"<td class='pics'>{_img(r.output, 'output', 'out') if r.output else '–'}"
        f"<div>{_score_html(r.chosen_score) if r.output else ''}</div></td>"
    )
    others = []
    for file, thumb, rec, model in r.candidates:
        mark = " chosen" if file == r.chosen_file else ""
        label = file.rsplit("/", 1)[-1]
        others.append(
            f'<figure class="cand{mark}">{_img(thumb, label)}'
            f"<figcaption>{e(label)}{' ✓' if mark else ''}"
            f"{' · ' + e(str(model)) if model else ''}<br>{_score_html(rec)}</figcaption></figure>"
        )
    cells.append(f"<td class='pics cands'>{''.join(others) or '<span class=dim>–</span>'}</td>")
    ident = []
    for key, label in (("identity_target", "target"), ("identity_ori", "ori")):
        v = r.result.get(key)
        if isinstance(v, int | float):
            ident.append(f"{label} {v:.3f}")
    cells.append(f"<td>{e(' / '.join(ident)) or '–'}</td>")
    model = e(r.model or "–") + (' <span class="badge">emulator</span>' if r.emulated else "")
    cells.append(f"<td>{model}</td>")
    status = f'<span class="st st-{r.status.replace(" ", "-")}">{e(r.status)}</span>'
    if r.reason:
        status += f'<div class="reason">{e(r.reason)}</div>'
    cells.append(f"<td>{status}</td>")
    return (
        f'<tr class="row" id="row-{e(r.index)}" data-type="{e(r.task_type)}" '
        f'data-status="{e(r.status)}">{"".join(cells)}</tr>'
    )


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC",sans-serif;
margin:16px;color:#1d232b;background:#fff}
h1{font-size:20px;margin:0 0 4px}.meta{color:#666;margin:0 0 12px}
.facts{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 12px}
.facts div{border:1px solid #dde;border-radius:6px;padding:6px 10px;background:#f7f8fb}
.facts dt{font-size:11px;color:#667;text-transform:uppercase}.facts dd{margin:0;font-weight:600}
.facts .warn{background:#fff4d6;border-color:#e8c060}
table{border-collapse:collapse}th,td{border-bottom:1px solid #e4e6eb;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#f0f2f6;position:sticky;top:0;z-index:1}
.types td{text-align:right}.types td:first-child{text-align:left}
#controls{margin:12px 0;display:flex;gap:12px;align-items:center;flex-wrap:wrap}
.prompt{max-width:360px;white-space:pre-wrap;word-break:break-word}
details{max-width:360px;color:#555;font-size:12px;word-break:break-word}
.pics figure{display:inline-block;margin:0 6px 4px 0;vertical-align:top;max-width:170px}
figcaption{font-size:11px;color:#555;word-break:break-all}
img{display:block;background:#eee;border-radius:3px}.cand.chosen img{outline:3px solid #2b8a3e}
.cands{min-width:260px}.cand{max-width:112px}.cand img{width:104px;height:auto}
.st{padding:1px 6px;border-radius:8px;font-size:12px;white-space:nowrap}
.st-done{background:#d3f9d8}.st-failed{background:#ffe3e3}.st-bad-input{background:#ffd8a8}.st-not-run{background:#e9ecef}
.reason{color:#b02a2a;font-size:12px;max-width:260px;word-break:break-word}
.err{color:#b02a2a;font-size:12px}.dim,.missing{color:#999;font-size:12px}
.badge{background:#fff4d6;border-radius:6px;padding:0 4px;font-size:11px}
.score{font-size:12px;white-space:nowrap}.idx{font-variant-numeric:tabular-nums}
"""

_JS = """
(function(){
  var rows=Array.prototype.slice.call(document.querySelectorAll('tr.row'));
  var type=document.getElementById('f-type'),status=document.getElementById('f-status');
  var q=document.getElementById('f-q'),shown=document.getElementById('shown');
  var text=new Map();
  function apply(){
    var t=type.value,s=status.value,needle=q.value.trim().toLowerCase(),n=0;
    rows.forEach(function(r){
      var ok=(!t||r.dataset.type===t)&&(!s||r.dataset.status===s);
      if(ok&&needle){
        if(!text.has(r))text.set(r,r.textContent.toLowerCase());
        ok=text.get(r).indexOf(needle)>=0;
      }
      r.hidden=!ok; if(ok)n++;
    });
    shown.textContent=n+' of '+rows.length+' rows shown';
  }
  type.addEventListener('change',apply);status.addEventListener('change',apply);
  q.addEventListener('input',apply);apply();
})();
"""


def _page(rows: list[_Row], summary_html: str, out_dir: Path) -> str:
    e = html.escape
    types = [t for t in TASK_TYPES if any(r.task_type == t for r in rows)]
    types += sorted({r.task_type for r in rows} - set(types))
    statuses = [
        s for s in ("done", "failed", "bad input", "not run") if any(r.status == s for r in rows)
    ]
    type_opts = "".join(f'<option value="{e(t)}">{e(t)}</option>' for t in types)
    status_opts = "".join(f'<option value="{e(s)}">{e(s)}</option>' for s in statuses)
    body_rows = "\n".join(_row_html(r) for r in rows)
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Run report: {e(out_dir.name)}</title><style>{_CSS}</style></head>
<body>
<h1>Run report</h1>
<p class="meta">{e(str(out_dir))} · generated {e(generated)}</p>
{summary_html}
<div id="controls">
<label>type <select id="f-type"><option value="">all</option>{type_opts}</select></label>
<label>status <select id="f-status"><option value="">all</option>{status_opts}</select></label>
<label>search <input id="f-q" type="search" placeholder="index or prompt words"></label>
<span id="shown">{len(rows)} rows</span>
</div>
<table id="rows"><thead><tr><th>index</th><th>type</th><th>prompt</th><th>input(s)</th>
<th>chosen output</th><th>candidates</th><th>identity</th><th>model</th><th>status</th></tr>
</thead><tbody>
{body_rows}
</tbody></table>
<script>{_JS}</script>
</body></html>
"""


def _load_summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / SUMMARY_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_report(
    out_dir: Path,
    tasks_path: Path,
    images: Path | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (atomically) and the thumbnails it needs; return its path.

    Blocking (thumbnails are made in a few threads): call it via ``asyncio.to_thread`` from a
    running loop.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasklist = load_tasks(Path(tasks_path), images)
    state = replay(out_dir / JOURNAL_NAME)
    if summary is None:
        summary = _load_summary(out_dir)
    thumbs = _Thumbs(out_dir, tasklist.images_dir)
    rows = _build_rows(out_dir, tasklist, state, summary, thumbs)
    thumbs.make_all()
    page = _page(rows, _summary_html(rows, summary, state), out_dir)
    path = out_dir / REPORT_NAME
    write_atomic_sync(path, page.encode("utf-8"))
    log.info(
        "report.written",
        path=str(path),
        rows=len(rows),
        thumbs=len(thumbs.items),
        seconds=round(time.monotonic() - started, 2),
    )
    return path
