"""report.html from the report's data: the page template and its CSS and JS are package data
(runner/outputs/templates), inlined so the page stays one self-contained file.

Every value put into the page goes through html.escape; the template holds no other text.
"""

from __future__ import annotations

import html
import time
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from runner.logs import scrub_text
from runner.outputs.report_data import (
    STATUSES,
    Overview,
    Row,
    duration,
    fmt,
    money,
    present_types,
    run_note,
    run_started,
    scored,
)
from runner.outputs.thumbs import Thumb

__all__ = ["page"]


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
