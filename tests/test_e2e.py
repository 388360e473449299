"""The whole job against the emulator: in-process, through the CLI, and killed mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from runner import run_all
from runner.settings import load_settings
from runner.store.journal import replay

ROOT = Path(__file__).resolve().parents[1]


def _mixed_rows(n_t2i: int, n_tie: int, n_vttie: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    i = 1
    for _ in range(n_t2i):
        rows.append((str(i), "t2i", f"a red fox number {i} in the snow", "", ""))
        i += 1
    for _ in range(n_tie):
        rows.append((str(i), "tie", "make the sky purple", f"src{i}.png", ""))
        i += 1
    for _ in range(n_vttie):
        rows.append((str(i), "vttie", "change the word OPEN to SHUT", f"src{i}.png", ""))
        i += 1
    return rows


def _valid_jpeg(path: Path) -> bool:
    with Image.open(path) as img:
        img.load()
        return img.format == "JPEG" and img.mode == "RGB"


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    return load_settings(poll_first_s=0.02, backoff_max_s=0.2)


async def test_emulated_run_then_rerun(job, tmp_path: Path, fast, monkeypatch) -> None:
    tasks = job(_mixed_rows(6, 3, 3) + [("99", "tie", "edit", "gone.png", "")], img_size=(400, 300))
    (tmp_path / "imgs" / "gone.png").unlink()
    settings = fast.model_copy(
        update={"emulator": fast.emulator.model_copy(update={"time_scale": 0.01})}
    )
    out = tmp_path / "out"
    summary = await run_all(tasks, out=out, settings=settings)
    assert summary.emulated and summary.backend.startswith("emulator:")
    assert summary.exit_code == 1  # the row with the missing image
    assert [r.index for r in summary.failed] == ["99"]
    files = sorted(p.name for p in (out / "imgs").iterdir())
    assert files == sorted(f"{i}.jpg" for i in range(1, 13))
    assert all(_valid_jpeg(out / "imgs" / f) for f in files)
    failed_csv = (out / "failed.csv").read_text(encoding="utf-8-sig")
    assert "99,tie,bad input," in failed_csv and "not found" in failed_csv
    assert json.loads((out / "summary.json").read_text())["by_type"]["t2i"]["done"] == 6
    state = replay(out / "journal.jsonl")
    assert all(state.rows[str(i)].done and state.rows[str(i)].emulated for i in range(1, 13))
    # a rerun does nothing again
    again = await run_all(tasks, out=out, settings=settings)
    assert sum(r.status == "skipped" for r in again.rows) == 12 and again.submits == 0


def _runner_cmd(tasks: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "runner", "--tasks", str(tasks), "--out", str(out), "-q"]


def test_cli_bad_task_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("index,task_type\n1,t2i\n")
    res = subprocess.run(
        _runner_cmd(bad, tmp_path / "o"), capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "missing column" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    res = subprocess.run(
        _runner_cmd(tmp_path / "none.csv", tmp_path / "o"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "no such task file" in res.stderr


async def test_submit_zip(job, tmp_path: Path, fast) -> None:
    import zipfile

    from runner.outputs.submit import SubmitRefused, pack

    rows = _mixed_rows(2, 1, 0) + [
        ("10", "tie", "edit", "gone.png", ""),
        ("11", "deepfake", "", "f1.png", "f2.png"),
    ]
    tasks = job(rows, img_size=(400, 300))
    (tmp_path / "imgs" / "gone.png").unlink()
    settings = fast.model_copy(
        update={"emulator": fast.emulator.model_copy(update={"time_scale": 0.01})}
    )
    out = tmp_path / "out"
    await run_all(tasks, out=out, settings=settings)
    with pytest.raises(SubmitRefused, match="emulator placeholders"):
        pack(out, "team")
    report = pack(out, "team", allow_emulated=True)  # the run's own task list, remembered
    assert report.tasks == tasks.resolve()
    assert report.zip_path.name == "team_图片生成_result.zip"
    assert set(report.fallbacks) >= {"10"}
    with zipfile.ZipFile(report.zip_path) as zf:
        names = zf.namelist()
        csv_text = zf.read("result.csv")
        assert csv_text.startswith(b"\xef\xbb\xbf")
        lines = csv_text.decode("utf-8-sig").splitlines()
        assert lines[0] == "index,gen_image"
        assert lines[1:] == [f"{i},{i}.jpg" for i in ["1", "2", "3", "10", "11"]]
        assert sorted(names) == sorted(
            ["result.csv", *(f"imgs/{i}.jpg" for i in ["1", "2", "3", "10", "11"])]
        )
        for n in names:
            if n.endswith(".jpg"):
                assert zf.read(n)[:3] == b"\xff\xd8\xff"
    assert "grey placeholder" in report.fallbacks["10"]  # its source is gone too
    with pytest.raises(SubmitRefused, match="no result"):
        pack(out, "team", tasks=tasks, allow_emulated=True, strict=True)
