"""Bad input, end to end: the corpus of tests/data/bad_input through the real CLI.

Whole-file problems exit 2 with one line and no traceback. A bad row gets a line naming its
index and the problem (console and failed.csv) while the good rows are still done. Files the
corpus cannot hold (a 10000x10000 image, a symlink out of --images) are made at test time.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from runner import run_all
from runner.cli import main as cli_main
from runner.settings import load_settings

CORPUS = Path(__file__).resolve().parent / "data" / "bad_input"

FAST_ENV = {
    "RUNNER_EMULATOR__TIME_SCALE": "0.005",
    "RUNNER_POLL_FIRST_S": "0.02",
    "RUNNER_BACKOFF_MAX_S": "0.1",
    "RUNNER_JUDGE__ENABLED": "false",
    "RUNNER_SIZE": "512*512",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RUNNER_") or name.startswith("DASHSCOPE_"):
            monkeypatch.delenv(name, raising=False)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "DASHSCOPE_"))}
    return {**env, **FAST_ENV}


def _copy_corpus(dest: Path) -> Path:
    shutil.copytree(CORPUS, dest, ignore=shutil.ignore_patterns("*.py", "*.md"))
    return dest


def _valid_jpeg(path: Path) -> bool:
    with Image.open(path) as img:
        img.load()
        return img.format == "JPEG" and img.mode == "RGB"


def _failed_csv(out: Path) -> dict[str, tuple[str, str, str]]:
    text = (out / "failed.csv").read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["index", "task_type", "status", "reason", "request_id"]
    return {r[0]: (r[1], r[2], r[3]) for r in rows[1:]}


# --------------------------------------------------------------------------- rows.csv

# index -> (status, words the line must hold)
ROW_PROBLEMS: dict[str, tuple[str, str]] = {
    "3": ("bad", "unknown task_type 'txt2img'"),
    "4": ("bad", "empty prompt"),
    "7": ("bad", "points outside --images"),
    "8": ("bad", "is an absolute path"),
    "9": ("bad", "points outside --images"),
    "10": ("bad", "'missing.png' not found"),
    # a source that is not a usable image: the row's own input too (issue 25)
    "11": ("bad", "not an image file"),
    "12": ("bad", "too small to edit"),
    "16": ("bad", "unreadable image"),
    "18": ("bad", "target_image 'missing_target.png' not found"),
    "22": ("bad", "no ori_image"),
    "23": ("bad", "unreadable image (truncated"),
    "25": ("bad", "has a control character ('\\x00')"),
    "26": ("bad", "prompt spans lines 27-28"),
    "27": ("bad", "far beyond any model's limit"),
    "28": ("bad", "has 6 fields, the header 5"),
}
GOOD_ROWS = ["1", "2", "5", "6", "13", "14", "15", "17", "19", "20", "21", "24"]


@pytest.mark.slow
def test_row_problems_are_named_and_good_rows_done(tmp_path: Path) -> None:
    data = _copy_corpus(tmp_path / "job")
    imgs = data / "imgs"
    # outside --images: a real picture next to the folder, reached by ../ and by a symlink
    Image.new("RGB", (600, 600), (1, 2, 3)).save(data / "outside.png")
    (imgs / "link_out.png").symlink_to(data / "outside.png")
    Image.linear_gradient("L").resize((10000, 10000)).save(imgs / "huge.jpg", quality=70)
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "runner", "--tasks", str(data / "rows.csv"), "--out", str(out)],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    console = res.stdout + res.stderr
    assert res.returncode == 1, console  # some rows failed, the run itself went through
    assert "Traceback" not in console
    failed = _failed_csv(out)
    assert set(failed) == set(ROW_PROBLEMS), console
    for index, (status, words) in ROW_PROBLEMS.items():
        _, got_status, reason = failed[index]
        # "bad" or "bad input": the label is the report's; the class is what counts here
        assert got_status.split()[0] == status and words in reason, (index, failed[index])
        # the console line names the row and the problem
        lines = [x for x in console.splitlines() if x.startswith(f"row {index} (")]
        assert lines and words in lines[0], (index, lines)
    # the good rows are done
    produced = sorted(p.name for p in (out / "imgs").iterdir())
    assert produced == sorted(f"{i}.jpg" for i in GOOD_ROWS)
    assert all(_valid_jpeg(out / "imgs" / name) for name in produced)
    # what was sent for them: the long prompt shortened, control characters gone, emoji kept
    done = {}
    for line in (out / "journal.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["ev"] == "done":
            done[rec["index"]] = rec
    assert len(done["5"]["prompt_sent"]) <= 800
    sent6 = done["6"]["prompt_sent"]
    assert "🦊" in sent6 and "🌸" in sent6
    assert not [ch for ch in sent6 if unicodedata.category(ch) == "Cc" and ch not in "\n\t"]
    # the big source was scaled into the API's bounds, the edited result is a real picture
    with Image.open(out / "imgs" / "17.jpg") as img:
        assert max(img.size) <= 4096 and min(img.size) >= 512
    # nothing outside --images was read: the outside picture's colour is in no output
    for name in produced:
        with Image.open(out / "imgs" / name) as img:
            assert img.convert("RGB").getcolors(4) != [(img.width * img.height, (1, 2, 3))]


async def test_big_source_fits_every_edit_model(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.linear_gradient("L").resize((4000, 3000)).save(imgs / "big.jpg", quality=70)
    task = tmp_path / "task.csv"
    task.write_text(
        "index,task_type,prompt,ori_image,target_image\n1,vttie,change OPEN to SHUT,big.jpg,\n"
    )
    settings = load_settings(
        poll_first_s=0.02,
        backoff_max_s=0.1,
        judge={"enabled": False},
        emulator={"time_scale": 0.005},
        models={"vttie": ["qwen-image-edit"]},
    )
    summary = await run_all(task, out=tmp_path / "out", settings=settings)
    assert summary.exit_code == 0, summary.failed


# --------------------------------------------------------------------------- whole files

WHOLE_FILE = [
    ("missing_column.csv", "missing column(s) target_image"),
    ("gbk.csv", "not UTF-8"),
    ("utf16.csv", "UTF-16 text"),
    ("duplicate_index.csv", "duplicate index 1 (lines 2 and 4)"),
    ("nonnumeric_index.csv", "line 3: index 'seven' is not a whole number"),
    ("path_index.csv", "is not a whole number"),
    ("empty.csv", "empty file"),
    ("header_only.csv", "no task rows"),
    ("binary.csv", "not a CSV"),
    ("stray_quote.csv", "line 11 (to line 21): not valid CSV"),
    ("unclosed_quote.csv", "line 3: a quote opened in this row is never closed"),
]
WHOLE_FILE_BUGS = [
    pytest.param(
        "no_header.csv",
        "no header line",
    ),
    pytest.param(
        "superscript_index.csv",
        "is not a whole number",
    ),
    pytest.param(
        "huge_index.csv",
        "is not a whole number",
    ),
    pytest.param(
        "long_index.csv",
        "is not a whole number",
    ),
]


@pytest.mark.parametrize(("name", "words"), [*WHOLE_FILE, *WHOLE_FILE_BUGS])
def test_whole_file_problems_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    words: str,
) -> None:
    for var, value in FAST_ENV.items():
        monkeypatch.setenv(var, value)
    code = cli_main(["--tasks", str(CORPUS / name), "--out", str(tmp_path / "out"), "-q"])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, captured.out + captured.err
    assert err.count("\n") == 0, err  # one line
    assert err.startswith("error: ") and words in err, err
    assert str(CORPUS / name) in err  # names the file
    assert not (tmp_path / "out" / "imgs").exists()  # nothing was started


def test_whole_file_problem_through_a_real_process(tmp_path: Path) -> None:
    """The same, as a user sees it: stderr holds one line and no traceback."""
    res = subprocess.run(
        [sys.executable, "-m", "runner", "--tasks", str(CORPUS / "gbk.csv"), "--out", "o"],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "iconv -f GBK -t UTF-8" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "name", ["bom.csv", "no_bom.csv", "crlf.csv", "extra_columns.csv", "reordered_columns.csv"]
)
async def test_accepted_formats_are_done(tmp_path: Path, name: str) -> None:
    data = _copy_corpus(tmp_path / "job")
    settings = load_settings(
        poll_first_s=0.02,
        backoff_max_s=0.1,
        judge={"enabled": False},
        size="512*512",
        emulator={"time_scale": 0.005},
    )
    out = tmp_path / "out"
    summary = await run_all(data / name, out=out, settings=settings)
    assert summary.exit_code == 0, summary.failed
    assert [(r.index, r.task_type, r.status) for r in summary.rows] == [
        ("1", "t2i", "done"),
        ("2", "tie", "done"),
    ]
    assert all(_valid_jpeg(out / "imgs" / f"{i}.jpg") for i in ("1", "2"))
    # an api_key column in the task list is never a key: the run stays on the emulator
    assert summary.emulated
