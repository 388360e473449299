"""report.html under --out: one self-contained page (inline CSS/JS, no network) with a summary
on top and a row per task, thumbnails instead of full images so 1000 rows load fast.

Everything is linked relatively (thumbs/, imgs/, candidates/), so the folder can be zipped and
moved; input images outside the folder are linked relatively too, their thumbnails live inside
(``runner.outputs.thumbs``).

In this file, in order: the report as data (a row per task: status, inputs, output,
candidates, the chosen file and its score; per-type statistics; the facts of the folder's
runs and costs: ``build_rows``, ``overview``), nothing of it HTML; the page from that data
(``page``: the template and its CSS and JS are package data, runner/outputs/templates,
inlined; every value put into the page goes through html.escape, the template holds no other
text); and ``write_report``, which reads the journal and writes the page.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import structlog

from runner.backends.judge.usage import describe, journal_usage
from runner.backends.judge.wins import standings
from runner.logs import scrub_text
from runner.outcomes import runs_view
from runner.outputs.candidates import result_candidates
from runner.outputs.thumbs import Thumb, Thumbs
from runner.store.files import write_atomic_sync
from runner.store.journal import JOURNAL_NAME, JournalState, RowState, replay
from runner.tasks import TASK_TYPES, BadRow, Task, TaskList, load_tasks

__all__ = ["REPORT_NAME", "SUMMARY_NAME", "load_summary", "write_report"]


STATUSES = ("done", "failed", "bad input", "not run")
# a candidate as shown: file, thumbnail, judge record, model
Candidate = tuple[str, Thumb, dict[str, Any] | None, str | None]


@dataclass
class Row:
    index: str
    task_type: str
    prompt: str
    status: str  # one of STATUSES
    reason: str | None = None
    inputs: list[tuple[str, Thumb | None, str]] = field(default_factory=list)  # label, thumb, name
    output: Thumb | None = None
    chosen_file: str | None = None
    chosen_score: dict[str, Any] | None = None
    candidates: list[Candidate] = field(default_factory=list)
    model: str | None = None
    emulated: bool = False
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Sources:
    """What every row is built from."""

    out_dir: Path
    tasklist: TaskList
    state: JournalState
    thumbs: Thumbs
    tasks: dict[str, Task]
    bad: dict[str, BadRow]
    last_run: dict[str, dict[str, Any]]  # the last run's summary row of each index


def scored(rec: dict[str, Any] | None) -> bool:
    """A judge record with a usable overall score."""
    return bool(rec) and rec.get("error") is None and isinstance(rec.get("overall"), int | float)


def build_rows(
    out_dir: Path,
    tasklist: TaskList,
    state: JournalState,
    summary: dict[str, Any],
    thumbs: Thumbs,
) -> list[Row]:
    """A row per task in task-list order; every picture shown is registered with ``thumbs``."""
    src = _Sources(
        out_dir=out_dir,
        tasklist=tasklist,
        state=state,
        thumbs=thumbs,
        tasks={t.index: t for t in tasklist.tasks},
        bad={b.index: b for b in tasklist.bad},
        last_run={str(r.get("index")): r for r in summary.get("rows") or [] if isinstance(r, dict)},
    )
    return [_build_row(src, index) for index in tasklist.order]


def _build_row(src: _Sources, index: str) -> Row:
    task = src.tasks.get(index)
    state_row = src.state.rows.get(index) or RowState(index=index)
    row = Row(
        index=index,
        task_type=src.tasklist.types.get(index, "?"),
        prompt=task.prompt if task else "",
        status="not run",
        model=state_row.model,
        emulated=state_row.emulated,
        result=state_row.result,
    )
    row.inputs = _inputs(src, index, task)  # shown for every row, failed ones included
    out_rel = f"imgs/{index}.jpg"
    has_output = (src.out_dir / out_rel).is_file()
    row.status, row.reason = _status(
        src.bad.get(index), state_row, src.last_run.get(index, {}), has_output
    )
    if has_output:
        row.output = src.thumbs.output(out_rel)
    judged = state_row.judged
    for c in result_candidates(src.out_dir, index, state_row):
        row.candidates.append(
            (c["file"], src.thumbs.output(c["file"]), judged.get(c["file"]), c.get("model"))
        )
    row.chosen_file = _chosen(state_row, row.candidates, out_rel if has_output else None)
    if row.chosen_file is not None:
        row.chosen_score = judged.get(row.chosen_file) or (
            judged.get(out_rel) if has_output else None
        )
    return row


def _inputs(src: _Sources, index: str, task: Task | None) -> list[tuple[str, Thumb | None, str]]:
    if task is not None:
        return [
            (label, src.thumbs.input(path), name)
            for label, path, name in (
                ("ori", task.ori_image, task.ori_name),
                ("target", task.target_image, task.target_name),
            )
            if path is not None
        ]
    bad = src.bad.get(index)
    if bad is None or not bad.ori_name:
        return []
    path = (src.tasklist.images_dir / bad.ori_name).resolve()
    # a bad row's name may point anywhere: only a file under the images folder is shown
    inside = path.is_relative_to(src.thumbs.images_dir)
    return [("ori", src.thumbs.input(path) if inside and path.is_file() else None, bad.ori_name)]


def _status(
    bad: BadRow | None, state_row: RowState, prior: dict[str, Any], has_output: bool
) -> tuple[str, str | None]:
    """(status, reason): the journal first, then what the last run's summary said."""
    if bad is not None:  # the row's own input: one status everywhere ("bad input")
        return "bad input", bad.reason
    if state_row.done and has_output:
        return "done", None
    if state_row.failed_reason:
        return "failed", state_row.failed_reason
    if prior.get("status") == "bad":
        return "bad input", prior.get("reason") or "bad input"
    if prior.get("status") in ("failed", "stopped"):
        return "failed", prior.get("reason") or prior.get("status")
    return ("done" if has_output else "not run"), None


def _chosen(state_row: RowState, candidates: list[Candidate], output: str | None) -> str | None:
    """The file shown as chosen: rejudge's pick, the scheduler's, the best scored candidate,
    else the output itself."""
    chosen = state_row.chosen or _scheduler_pick(state_row.result)
    if chosen is None and candidates:
        best = max(
            (c for c in candidates if scored(c[2])),
            key=lambda c: float(c[2]["overall"]) if c[2] else -1.0,
            default=None,
        )
        chosen = best[0] if best else None
    return output if chosen is None else chosen


def _scheduler_pick(result: dict[str, Any]) -> str | None:
    """The scheduler journals its pick as a position in "candidates" (a file name of old)."""
    picked = result.get("chosen")
    listed = result.get("candidates")
    if isinstance(picked, str):
        return picked
    if (
        isinstance(picked, int)
        and isinstance(listed, list)
        and 0 <= picked < len(listed)
        and isinstance(listed[picked], dict)
    ):
        return listed[picked].get("file")
    return None


# --------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "–"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def money(amount: Any, currency: str) -> str:
    if not isinstance(amount, int | float):
        return "price unknown"
    return f"{amount:,.2f} {currency}".strip()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------- statistics


def present_types(rows: list[Row]) -> list[str]:
    """The task types of the rows: the known ones in their order, then any other by name."""
    order = [t for t in TASK_TYPES if any(r.task_type == t for r in rows)]
    return order + sorted({r.task_type for r in rows} - set(order))


def _row_overall(r: Row) -> float:
    """The row's part of the estimate: its chosen score when done and scored, else 0."""
    if r.status == "done" and r.chosen_score and scored(r.chosen_score):
        return float(r.chosen_score["overall"])
    return 0.0


def _type_stat(ttype: str, mine: list[Row]) -> dict[str, Any]:
    counts = Counter(r.status for r in mine)
    scores = [r.chosen_score for r in mine if r.status == "done" and scored(r.chosen_score)]
    stat: dict[str, Any] = {"type": ttype, "rows": len(mine)}
    stat.update({status: counts[status] for status in STATUSES})
    stat.update(
        scored=len(scores),
        sc=_mean([min(s["sc"]) for s in scores if s and s.get("sc")]),
        pq=_mean([min(s["pq"]) for s in scores if s and s.get("pq")]),
        identity=_mean(
            [float(s["identity"]) for s in scores if s and s.get("identity") is not None]
        ),
        overall=_mean([float(s["overall"]) for s in scores if s]),
        estimate=_mean([_row_overall(r) for r in mine]),
    )
    return stat


def type_stats(rows: list[Row]) -> tuple[list[dict[str, Any]], float | None, int]:
    """Per-type table rows, the estimated overall score (unscored rows count 0), scored rows."""
    types = present_types(rows)
    table = [_type_stat(ttype, [r for r in rows if r.task_type == ttype]) for ttype in types]
    # summed in the table's order, as the per-type figures are
    by_type = [r for ttype in types for r in rows if r.task_type == ttype]
    return table, _mean([_row_overall(r) for r in by_type]), sum(t["scored"] for t in table)


# --------------------------------------------------------------------------- runs and costs


@dataclass
class Overview:
    """The page's summary: facts as (name, value) pairs and the tables under them."""

    facts: list[tuple[str, str]]
    emulated: bool | None  # the service was the emulator (None: not known)
    types: list[dict[str, Any]]
    billed: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    # per task type, "variant" and "model": each one's decided rows, wins, win rate, mean score
    wins: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)


def billed(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's per-model billing entries that billed any image."""
    return [b for b in summary.get("billed") or [] if isinstance(b, dict) and b.get("images")]


def _total(runs: list[dict[str, Any]], key: str, fallback: Any) -> Any:
    """A figure summed over the folder's closed runs (the last summary's when none closed)."""
    values = [r[key] for r in runs if r.get("ended") and isinstance(r.get(key), int | float)]
    return sum(values) if values else fallback


def _cost_fact(summary: dict[str, Any]) -> str:
    entries = billed(summary)
    if not entries:
        return "–"
    currency = next((str(b.get("currency")) for b in entries if b.get("currency")), "")
    known = [b["cost"] for b in entries if isinstance(b.get("cost"), int | float)]
    images = sum(int(b["images"]) for b in entries)
    text = f"{images} images billed, " + (money(sum(known), currency) if known else "price unknown")
    missing = [str(b["model"]) for b in entries if not isinstance(b.get("cost"), int | float)]
    if missing and known:
        text += f" (+ {', '.join(missing)}: no price in settings)"
    if summary.get("emulated"):
        text += "; at list prices: the emulator bills nothing"
    return text


def run_started(run: dict[str, Any]) -> str:
    t = run.get("t")
    if not isinstance(t, int | float):
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(t)))


def run_note(run: dict[str, Any]) -> str:
    if not run.get("ended"):
        return "ended without closing (killed?)"
    if run.get("interrupted"):
        return f"interrupted ({run['interrupted']})"
    return f"stopped: {run['stopped']}" if run.get("stopped") else ""


def _service(rows: list[Row], summary: dict[str, Any]) -> tuple[str, bool | None]:
    """What served the images, and whether it was the emulator (None: not known)."""
    emulated = summary.get("emulated")
    if emulated is None:
        emulated = any(r.emulated for r in rows) if any(r.status == "done" for r in rows) else None
    backend = summary.get("backend")
    if emulated is True:
        return "EMULATOR (local stand-in, not DashScope: images are placeholders)", emulated
    if emulated is False:
        return (f"DashScope ({backend})" if backend else "DashScope"), emulated
    return "unknown (no summary.json)", emulated


def _models_used(rows: list[Row], summary: dict[str, Any]) -> str:
    used: list[str] = []
    for m in summary.get("models") or []:
        if isinstance(m, dict) and m.get("submits"):
            used.append(
                f"{m.get('model')}: {m.get('submits')} submits, {m.get('throttled', 0)} × 429"
                + (f", p50 {m['p50_s']} s" if m.get("p50_s") else "")
            )
    if not used:  # no summary: what the journal says made each row
        seen_models = Counter(r.model for r in rows if r.model)
        used = [f"{name}: {n} rows" for name, n in sorted(seen_models.items())]
    return "; ".join(used) or "–"


def _judges(state: JournalState) -> str:
    records = [rec for st in state.rows.values() for rec in st.judged.values()]
    judges = sorted({str(rec.get("judge_model")) for rec in records if rec.get("judge_model")})
    if not judges:
        return "–"
    emulated = any(rec.get("emulated") for rec in records)
    return ", ".join(judges) + (" (emulated)" if emulated else "")


def _judge_spend(state: JournalState, runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The judge's calls, tokens and estimated cost over the folder, as its "judged" records
    say (a killed run's included); its 429s from the closed runs."""
    usages = [r["judge"] for r in runs if r.get("ended") and isinstance(r.get("judge"), dict)]
    total = journal_usage(state, "")
    if not total.calls:
        return "–"
    total.throttled = sum(int(u.get("throttled") or 0) for u in usages)
    currency = next((str(b.get("currency")) for b in billed(summary) if b.get("currency")), "")
    refs = sorted({str(u.get("reference")) for u in usages if u.get("reference")})
    return describe(total.model_dump(), currency) + (
        f"; texts and parser: {refs[-1]}" if refs else ""
    )


def _wins(rows: list[Row], state: JournalState) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per task type (in the rows' order), variants and models as the judge ranked them."""
    table = standings(state, {r.index: r.task_type for r in rows})
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for ttype in present_types(rows):
        kinds = table.get(ttype)
        if not kinds:
            continue
        out[ttype] = {
            kind: [
                s.view()
                for s in sorted(
                    kinds[kind].values(), key=lambda s: (-(s.win_rate or 0.0), -(s.mean or 0.0))
                )
            ]
            for kind in ("variant", "model")
        }
    return out


def overview(rows: list[Row], summary: dict[str, Any], state: JournalState) -> Overview:
    table, estimate, scored_rows = type_stats(rows)
    runs = runs_view(state.runs_info)
    counts = Counter(r.status for r in rows)
    service, emulated = _service(rows, summary)
    facts = [
        ("Rows", f"{len(rows)}"),
        ("Done", f"{counts['done']}"),
        ("Failed", f"{counts['failed']}"),
        ("Bad input", f"{counts['bad input']}"),
        ("Not run", f"{counts['not run']}"),
        (
            "Estimated overall score",
            f"{fmt(estimate)} ({scored_rows} of {len(rows)} rows scored; "
            "mean of per-row VIEScore overall, unscored rows count as 0)",
        ),
        ("Runs", f"{len(runs)} in this folder (listed below)" if runs else "–"),
        ("Run time (all runs)", duration(_total(runs, "elapsed_s", summary.get("elapsed_s")))),
        ("Retries (all runs)", fmt(_total(runs, "retries", summary.get("retries")))),
        ("429s (all runs)", fmt(_total(runs, "throttled", summary.get("throttled")))),
        ("Estimated cost", _cost_fact(summary)),
        ("Service", service),
        ("Models used", _models_used(rows, summary)),
        ("Judge", _judges(state)),
        ("Judge calls (all runs)", _judge_spend(state, runs, summary)),
    ]
    if summary.get("faceswap"):
        facts.append(("Face swap", str(summary["faceswap"])))
    if summary.get("stopped_reason"):
        facts.append(("Stopped", str(summary["stopped_reason"])))
    if state.damaged_lines:
        facts.append(("Journal", f"{state.damaged_lines} damaged line(s) skipped"))
    return Overview(facts, emulated, table, billed(summary), runs, _wins(rows, state))


def _e(text: str) -> str:
    """Text for the page: without a key anyone typed into it (as the journal has it), escaped."""
    return html.escape(scrub_text(text))


def _lang(text: str) -> str:
    """``lang="zh"`` for text with CJK characters: the browser then takes a Chinese font
    from the page's stack (or the system's), not boxes or Japanese glyph forms."""
    cjk = any("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in text)
    return ' lang="zh"' if cjk else ""


@cache
def _template(name: str) -> str:
    """A file of runner/outputs/templates, read once per process."""
    return resources.files("runner.outputs").joinpath("templates", name).read_text("utf-8")


def _img(t: Thumb | None, alt: str, cls: str = "") -> str:
    if t is None:
        return f'<span class="missing">{_e(alt)}: missing</span>'
    if t.size is None:
        return f'<a href="{_e(t.href)}" class="missing">{_e(alt)}: unreadable</a>'
    w, h = t.size
    c = f' class="{cls}"' if cls else ""
    return (
        f'<a href="{_e(t.href)}"><img{c} src="{_e(t.thumb)}" width="{w}" height="{h}" '
        f'loading="lazy" decoding="async" alt="{_e(alt)}"></a>'
    )


def _score_list(values: Any) -> str:
    return "[" + ", ".join(fmt(float(x), 0) for x in values) + "]" if values else "–"


def _score_html(rec: dict[str, Any] | None) -> str:
    if not rec:
        return '<span class="dim">not judged</span>'
    if not scored(rec):
        return f'<span class="err">unscored: {_e(str(rec.get("error") or "no score"))}</span>'
    bits = [f"<b>{fmt(float(rec['overall']))}</b>"]
    if rec.get("sc"):
        bits.append(f"SC {_score_list(rec['sc'])}")
    if rec.get("identity") is not None:
        bits.append(f"id {fmt(float(rec['identity']), 3)}")
    if rec.get("pq"):
        bits.append(f"PQ {_score_list(rec['pq'])}")
    title = _e(str(rec.get("reasoning") or ""))
    return f'<span class="score" title="{title}">{" · ".join(bits)}</span>'


def _prompt_cell(r: Row) -> str:
    """The prompt, with what was sent, the negative prompt and the service's rewrite folded."""
    prompt = [f'<div class="prompt"{_lang(r.prompt)}>{_e(r.prompt)}</div>' if r.prompt else ""]
    sent = r.result.get("prompt_sent")
    if isinstance(sent, str) and sent and sent != r.prompt:
        prompt.append(f"<details><summary>sent</summary>{_e(sent)}</details>")
    if r.result.get("negative_prompt"):
        prompt.append(
            f"<details><summary>negative</summary>{_e(str(r.result['negative_prompt']))}</details>"
        )
    variant = r.result.get("variant")
    if isinstance(variant, str) and variant != "plain":
        prompt.append(f'<div class="dim">variant {_e(variant)}</div>')
    changes = r.result.get("prompt_changes")
    if isinstance(changes, list) and changes:
        prompt.append(
            f"<details><summary>changed</summary>{_e('; '.join(map(str, changes)))}</details>"
        )
    actual = r.result.get("actual_prompt")
    if isinstance(actual, list):
        actual = " / ".join(str(a) for a in actual)
    if isinstance(actual, str) and actual:
        prompt.append(f"<details><summary>actual</summary>{_e(actual)}</details>")
    return f"<td>{''.join(prompt)}</td>"


def _variants(r: Row) -> dict[str, str]:
    """file -> the prompt variant it was made from, as the "done" record lists them."""
    listed = r.result.get("candidates")
    return {
        str(c["file"]): str(c["variant"])
        for c in (listed if isinstance(listed, list) else [])
        if isinstance(c, dict) and c.get("file") and c.get("variant")
    }


def _candidates_cell(r: Row) -> str:
    others = []
    variants = _variants(r)
    for file, thumb, rec, model in r.candidates:
        mark = " chosen" if file == r.chosen_file else ""
        label = file.rsplit("/", 1)[-1]
        made = " · ".join(_e(str(x)) for x in (variants.get(file), model) if x)
        others.append(
            f'<figure class="cand{mark}">{_img(thumb, label)}'
            f"<figcaption>{_e(label)}{' ✓' if mark else ''}"
            f"{' · ' + made if made else ''}<br>{_score_html(rec)}</figcaption></figure>"
        )
    return f"<td class='pics cands'>{''.join(others) or '<span class=dim>–</span>'}</td>"


def _row_html(r: Row) -> str:
    cells: list[str] = [f"<td class='idx'>{_e(r.index)}</td>", f"<td>{_e(r.task_type)}</td>"]
    cells.append(_prompt_cell(r))
    inputs = "".join(
        f"<figure>{_img(t, label)}<figcaption>{_e(label)}: {_e(name)}</figcaption></figure>"
        for label, t, name in r.inputs
    )
    cells.append(f"<td class='pics'>{inputs or '<span class=dim>–</span>'}</td>")
    cells.append(
        f"<td class='pics'>{_img(r.output, 'output', 'out') if r.output else '–'}"
        f"<div>{_score_html(r.chosen_score) if r.output else ''}</div></td>"
    )
    cells.append(_candidates_cell(r))
    ident = []
    for key, label in (("identity_target", "target"), ("identity_ori", "ori")):
        v = r.result.get(key)
        if isinstance(v, int | float):
            ident.append(f"{label} {v:.3f}")
    detail = r.result.get("detail")
    chooser = detail.get("chosen_by") if isinstance(detail, dict) else None
    chose = {"judge": "chosen by the judge", "offline": "chosen by local realism"}.get(
        str(chooser), ""
    )
    cells.append(
        f"<td>{_e(' / '.join(ident)) or '–'}"
        + (f"<div class='dim'>{_e(chose)}</div>" if chose else "")
        + "</td>"
    )
    model = _e(r.model or "–") + (' <span class="badge">emulator</span>' if r.emulated else "")
    cells.append(f"<td>{model}</td>")
    status = f'<span class="st st-{r.status.replace(" ", "-")}">{_e(r.status)}</span>'
    if r.reason:
        status += f'<div class="reason">{_e(r.reason)}</div>'
    cells.append(f"<td>{status}</td>")
    return (
        f'<tr class="row" id="row-{_e(r.index)}" data-type="{_e(r.task_type)}" '
        f'data-status="{_e(r.status)}">{"".join(cells)}</tr>'
    )


# --------------------------------------------------------------------------- summary


def _table(heads: tuple[str, ...], rows: list[list[str]], caption: str = "") -> str:
    """A summary table: headings and caption are text, the cells HTML already."""
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells in rows)
    return f'<table class="types">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_TYPE_HEADS = (
    "type", "rows", "done", "failed", "bad input", "not run", "scored", "mean SC", "mean PQ",
    "mean identity", "mean overall (scored)", "estimate (unscored = 0)",
)  # fmt: skip
_BILLED_HEADS = ("model", "images", "price / image", "est. cost")
_RUN_HEADS = (
    "#", "started (UTC)", "time", "submits", "429s", "retries", "done", "not done", "service",
    "note",
)  # fmt: skip
_RUN_FIGURES = ("submits", "throttled", "retries", "done", "failed")


def _types_html(types: list[dict[str, Any]]) -> str:
    cells = [
        [
            _e(t["type"]),
            *(str(t[k]) for k in ("rows", *STATUSES, "scored")),
            *(fmt(t[k]) for k in ("sc", "pq")),
            fmt(t["identity"], 3),
            *(fmt(t[k]) for k in ("overall", "estimate")),
        ]
        for t in types
    ]
    return _table(_TYPE_HEADS, cells)


def _billed_html(billed: list[dict[str, Any]]) -> str:
    if not billed:
        return ""
    cells = []
    for b in billed:
        price = b.get("price")
        cells.append(
            [
                _e(str(b.get("model"))),
                fmt(b.get("images")),
                fmt(price, 4) if isinstance(price, int | float) else "–",
                _e(money(b.get("cost"), str(b.get("currency") or ""))),
            ]
        )
    return _table(_BILLED_HEADS, cells, "Images billed per model (all runs, list prices)")


def _runs_html(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return ""
    cells = []
    for i, r in enumerate(runs, 1):
        ended = bool(r.get("ended"))  # an unclosed run's figures were never written
        cells.append(
            [str(i), _e(run_started(r)), duration(r.get("elapsed_s")) if ended else "–"]
            + [fmt(r.get(k)) if ended else "–" for k in _RUN_FIGURES]
            + ["emulator" if r.get("emulated") else "DashScope", _e(run_note(r))]
        )
    return _table(_RUN_HEADS, cells, "Runs in this folder")


_WIN_HEADS = ("rows judged against another", "wins", "win rate", "mean score", "scored")


def _wins_html(wins: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """Per task type, the variants' and the models' standings (runner.backends.judge.wins)."""
    parts = []
    for ttype, kinds in wins.items():
        for kind, standing in kinds.items():
            if not standing:
                continue
            cells = [
                [
                    _e(str(s["name"])),
                    str(s["decided"]),
                    str(s["wins"]),
                    "–" if s["win_rate"] is None else f"{100 * s['win_rate']:.0f} %",
                    fmt(s["mean"]),
                    str(s["scored"]),
                ]
                for s in standing
            ]
            parts.append(_table((kind, *_WIN_HEADS), cells, f"What wins: {ttype}, by {kind}"))
    return "".join(parts)


def _summary_html(view: Overview) -> str:
    parts = ['<section id="summary"><dl class="facts">']
    for name, value in view.facts:
        cls = ' class="warn"' if name == "Service" and view.emulated else ""
        parts.append(f"<div{cls}><dt>{_e(name)}</dt><dd>{_e(value)}</dd></div>")
    parts.append("</dl>")
    parts.append(_types_html(view.types))
    parts.append(_wins_html(view.wins))
    parts.append(_billed_html(view.billed))
    parts.append(_runs_html(view.runs))
    parts.append("</section>")
    return "".join(parts)


# --------------------------------------------------------------------------- the page


def _options(values: list[str]) -> str:
    return "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)


def page(rows: list[Row], view: Overview, out_dir: Path) -> str:
    """The whole report.html."""
    statuses = [s for s in STATUSES if any(r.status == s for r in rows)]
    return Template(_template("report.html")).substitute(
        title=_e(out_dir.name),
        css=_template("report.css"),
        js=_template("report.js"),
        out_dir=_e(str(out_dir)),
        generated=_e(time.strftime("%Y-%m-%d %H:%M:%S")),
        summary=_summary_html(view),
        type_options=_options(present_types(rows)),
        status_options=_options(statuses),
        row_count=len(rows),
        rows="\n".join(_row_html(r) for r in rows),
    )


log = structlog.get_logger(__name__)


REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"  # written by runner.job at the end of a run


def load_summary(out_dir: Path) -> dict[str, Any]:
    """The last run's summary.json; {} when missing or unreadable."""
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
        summary = load_summary(out_dir)
    thumbs = Thumbs(out_dir, tasklist.images_dir)
    rows = build_rows(out_dir, tasklist, state, summary, thumbs)
    thumbs.make_all()
    html = page(rows, overview(rows, summary, state), out_dir)
    path = out_dir / REPORT_NAME
    write_atomic_sync(path, html.encode("utf-8"))
    log.info(
        "report.written",
        path=str(path),
        rows=len(rows),
        thumbs=len(thumbs.items),
        seconds=round(time.monotonic() - started, 2),
    )
    return path
