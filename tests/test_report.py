"""report.html: every row, failed rows with reason and inputs, small thumbnails, no network,
and a headless-Chromium render (skipped with a message where Chromium is absent)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, write_tasks
from PIL import Image

from runner.outputs.report import REPORT_NAME, write_report
from runner.outputs.thumbs import THUMB_SIDE
from runner.store.journal import Journal


def _jpeg(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).convert("RGB").save(dst, "JPEG", quality=90)
    return dst


def plant(tmp_path: Path, extra_rows: int = 0) -> tuple[Path, Path, Path]:
    """An output folder as a run leaves it: done, failed, bad, not-run rows of every type."""
    images = tmp_path / "images"
    for name in ("src.png", "face_a.png", "face_b.png"):
        make_image(images / name, (320, 240))
    rows = [
        ("1", "t2i", "a red fox <script>alert(1)</script> & snow", "", ""),
        ("2", "tie", "change the shirt to gray", "src.png", ""),
        ("3", "vttie", "把招牌文字改为“OPEN”", "src.png", ""),
        ("4", "deepfake", "", "face_a.png", "face_b.png"),
        ("5", "tie", "missing source", "nope.png", ""),
    ]
    rows += [(str(10 + i), "t2i", f"extra row {i}", "", "") for i in range(extra_rows)]
    tasks = write_tasks(tmp_path / "task.csv", rows)
    out = tmp_path / "out"
    big = make_image(tmp_path / "big.jpg", (1024, 1024), fmt="JPEG")
    _jpeg(big, out / "candidates" / "1" / "0.jpg")
    flat = tmp_path / "flat.png"
    Image.new("RGB", (1024, 1024), (120, 120, 120)).save(flat)
    _jpeg(flat, out / "candidates" / "1" / "1.jpg")
    _jpeg(big, out / "imgs" / "1.jpg")
    _jpeg(images / "face_a.png", out / "imgs" / "4.jpg")
    for i in range(extra_rows):
        _jpeg(big, out / "imgs" / f"{10 + i}.jpg")

    j = Journal(out)
    j.write_sync("run_start")
    j.write_sync(
        "done",
        index="1",
        file="imgs/1.jpg",
        model="wanx2.1-t2i-turbo",
        emulated=True,
        prompt_sent="a red fox & snow. High quality",
        actual_prompt="an extended fox prompt",
        candidates=[
            {"file": "candidates/1/0.jpg", "model": "wanx2.1-t2i-turbo"},
            {"file": "candidates/1/1.jpg", "model": "wanx2.1-t2i-plus"},
        ],
    )
    judged = {"judge_model": "qwen-vl-max", "reasoning": "fine", "identity": None}
    j.write_sync(
        "judged", index="1", file="candidates/1/0.jpg", sc=[8.0], pq=[9.0, 8.0], overall=8.0,
        error=None, emulated=True, **judged,
    )  # fmt: skip
    j.write_sync(
        "judged", index="1", file="candidates/1/1.jpg", sc=None, pq=None, overall=None,
        error="SC: unusable answer after 2 tries (not JSON)", **judged,
    )  # fmt: skip
    j.write_sync("chosen", index="1", file="candidates/1/0.jpg", overall=8.0)
    j.write_sync("failed", index="2", reason="every model refused the row (DataInspectionFailed)")
    j.write_sync(
        "done",
        index="4",
        file="imgs/4.jpg",
        model="faceswap:classic",
        identity_target=0.61,
        identity_ori=0.12,
    )
    j.write_sync(
        "judged", index="4", file="imgs/4.jpg", sc=None, pq=[7.0, 6.0], overall=6.05,
        error=None, **{**judged, "identity": 0.61},
    )  # fmt: skip
    for i in range(extra_rows):
        j.write_sync("done", index=str(10 + i), file=f"imgs/{10 + i}.jpg", model="m")
    j.close()
    summary = {
        "elapsed_s": 65.2,
        "emulated": True,
        "backend": "emulator",
        "retries": 3,
        "throttled": 7,
        "models": [
            {"model": "wanx2.1-t2i-turbo", "submits": 4, "throttled": 7, "p50_s": 0.5},
            {"model": "wan2.2-t2i-flash", "submits": 0, "throttled": 0},
        ],
        "faceswap": "classic",
        "rows": [{"index": "3", "task_type": "vttie", "status": "stopped", "reason": "stop"}],
    }
    (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return out, tasks, images


def _row(html: str, index: str) -> str:
    m = re.search(rf'<tr class="row" id="row-{index}"[^>]*>(.*?)</tr>', html, re.S)
    assert m, f"row {index} missing"
    return m.group(0)


def test_report_lists_every_row(tmp_path: Path) -> None:
    out, tasks, images = plant(tmp_path)
    path = write_report(out, tasks, images)
    assert path == out / REPORT_NAME
    html = path.read_text(encoding="utf-8")
    for index in ("1", "2", "3", "4", "5"):
        _row(html, index)
    assert html.count('<tr class="row"') == 5

    r1 = _row(html, "1")
    assert 'data-status="done"' in r1 and 'data-type="t2i"' in r1
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; snow" in r1  # escaped, not run
    assert "<script>alert" not in html
    assert 'src="thumbs/imgs/1.jpg"' in r1 and 'href="imgs/1.jpg"' in r1
    assert "thumbs/candidates/1/0.jpg" in r1 and "thumbs/candidates/1/1.jpg" in r1
    assert "unscored: SC: unusable answer" in r1
    assert "<b>8.00</b>" in r1 and "an extended fox prompt" in r1 and "emulator" in r1

    r2 = _row(html, "2")  # failed: reason and its input
    assert 'data-status="failed"' in r2 and "DataInspectionFailed" in r2
    assert 'src="thumbs/inputs/src.png.jpg"' in r2
    assert "change the shirt to gray" in r2

    r3 = _row(html, "3")  # the last run stopped it: failed with that reason, input shown
    assert 'data-status="failed"' in r3 and "stop" in r3 and "把招牌文字改为" in r3
    assert "thumbs/inputs/src.png.jpg" in r3

    r4 = _row(html, "4")
    assert "target 0.610" in r4 and "ori 0.120" in r4 and "faceswap:classic" in r4
    assert "thumbs/inputs/face_a.png.jpg" in r4 and "thumbs/inputs/face_b.png.jpg" in r4
    assert "id 0.610" in r4

    r5 = _row(html, "5")  # bad input row
    assert 'data-status="bad input"' in r5 and "not found" in r5  # one status everywhere

    # summary: counts, estimate with the unscored-as-zero note, run facts
    assert "Estimated overall score" in html and "unscored rows count as 0" in html
    est = (8.0 + 6.05) / 5
    assert f"{est:.2f}" in html
    for text in ("1m 05s", "EMULATOR", "wanx2.1-t2i-turbo: 4 submits", "qwen-vl-max"):
        assert text in html
    assert "wan2.2-t2i-flash" not in html  # not used
    assert re.search(r"<dt>429s \(all runs\)</dt><dd>7</dd>", html)
    assert re.search(r"<dt>Retries \(all runs\)</dt><dd>3</dd>", html)
    assert 'id="f-type"' in html and 'id="f-status"' in html


def test_thumbnails_small_and_reused(tmp_path: Path) -> None:
    out, tasks, images = plant(tmp_path)
    write_report(out, tasks, images)
    thumbs = sorted((out / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 7  # imgs 1, 4; candidates 1/0, 1/1; inputs src, face_a, face_b
    for t in thumbs:
        with Image.open(t) as img:
            assert max(img.size) <= THUMB_SIDE
        assert t.stat().st_size < 20_000
    html = (out / REPORT_NAME).read_text(encoding="utf-8")
    for t in thumbs:
        assert t.relative_to(out).as_posix() in html

    stamp = {t: t.stat().st_mtime_ns for t in thumbs}
    write_report(out, tasks, images)
    assert {t: t.stat().st_mtime_ns for t in thumbs} == stamp  # made once, reused
    # a newer source (rejudge swapped the chosen image) gets a fresh thumbnail
    Image.new("RGB", (300, 200), (0, 0, 255)).save(out / "imgs" / "1.jpg", "JPEG")
    os.utime(out / "imgs" / "1.jpg", ns=(stamp[thumbs[0]] + 10**9,) * 2)
    write_report(out, tasks, images)
    t1 = out / "thumbs" / "imgs" / "1.jpg"
    assert t1.stat().st_mtime_ns != stamp[t1]
    px = np.asarray(Image.open(t1).convert("RGB"))
    assert px[..., 2].mean() > 200 and px[..., 0].mean() < 50


def test_no_network_references(tmp_path: Path) -> None:
    out, tasks, images = plant(tmp_path)
    html = write_report(out, tasks, images).read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "@import" not in html and "<link" not in html.lower()
    assert "<style>" in html and "<script>" in html  # inline, self-contained
    assert not re.search(r"""(src|href)\s*=\s*["']?/""", html)  # relative links only


def test_report_without_journal_or_summary(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_image(images / "a.png", (64, 64))
    tasks = write_tasks(tmp_path / "task.csv", [("1", "tie", "x", "a.png", "")])
    html = write_report(tmp_path / "fresh", tasks, images).read_text(encoding="utf-8")
    r = _row(html, "1")
    assert 'data-status="not run"' in r and "thumbs/inputs/a.png.jpg" in r
    assert "0.00 (0 of 1 rows scored" in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip(
            "headless Chromium not found (Debian package 'chromium'; .ci/run installs it): "
            "report.html was not rendered"
        )
    out, tasks, images = plant(tmp_path, extra_rows=20)
    page = write_report(out, tasks, images)
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
        "--virtual-time-budget=3000",
    ]
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=90, check=False
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    indexes = ["1", "2", "3", "4", "5", *(str(10 + i) for i in range(20))]
    for index in indexes:
        assert f'id="row-{index}"' in html, f"row {index} not rendered"
    # the inline script ran (it writes the count), so the page is live, not just parsed
    assert f"{len(indexes)} of {len(indexes)} rows shown" in html

    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [*flags, f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert px.std() > 10, "the rendered page looks blank"
    assert (px < 128).mean() > 0.005  # some dark text/images on the page


def test_scheduler_pick_by_position(tmp_path: Path) -> None:
    """The scheduler's "done" record names its pick as a position in "candidates"."""
    tasks = write_tasks(tmp_path / "task.csv", [("7", "t2i", "a scene", "", "")])
    out = tmp_path / "out"
    src = make_image(tmp_path / "p.jpg", (200, 200), fmt="JPEG")
    for k in range(2):
        _jpeg(src, out / "candidates" / "7" / f"{k}.jpg")
    _jpeg(src, out / "imgs" / "7.jpg")
    j = Journal(out)
    common = {"judge_model": "qwen-vl-max", "reasoning": "", "error": None, "identity": None}
    j.write_sync("judged", index="7", file="candidates/7/0.jpg", sc=[3.0], pq=[3.0, 3.0],
                 overall=3.0, **common)  # fmt: skip
    j.write_sync("judged", index="7", file="candidates/7/1.jpg", sc=[9.0], pq=[4.0, 6.0],
                 overall=6.0, **common)  # fmt: skip
    cands = [{"file": f"candidates/7/{k}.jpg", "model": "m", "overall": None} for k in range(2)]
    j.write_sync("done", index="7", file="imgs/7.jpg", model="m", candidates=cands, chosen=1)
    j.close()
    html = write_report(out, tasks, tmp_path / "imgs").read_text(encoding="utf-8")
    r = _row(html, "7")
    assert "1.jpg ✓" in r and "0.jpg ✓" not in r
    chosen_cell = r.split("<td class='pics'>")[2]  # inputs, then the chosen output
    assert "<b>6.00</b>" in chosen_cell
    assert "6.00 (1 of 1 rows scored" in html
