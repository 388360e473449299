"""Task file validation: whole-file errors are one line; bad rows are named, good rows go on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import HEADER, make_image, write_tasks

from runner.errors import TaskFileError
from runner.tasks import load_tasks


def test_good_file_in_order(job) -> None:
    path = job(
        [
            ("1", "t2i", "a cat", "", ""),
            ("2", "tie", "make it red", "a.png", ""),
            ("3", "vttie", "change OPEN to SHUT", "b.png", ""),
            ("4", "deepfake", "", "c.png", "d.png"),
        ]
    )
    tl = load_tasks(path)
    assert tl.order == ["1", "2", "3", "4"]
    assert [t.task_type for t in tl.tasks] == ["t2i", "tie", "vttie", "deepfake"]
    assert tl.tasks[3].target_image == (path.parent / "imgs" / "d.png").resolve()
    assert tl.bad == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such task file"),
        (b"", "empty file"),
        (b"index,task_type,prompt,ori_image\n1,t2i,x,\n", "missing column(s) target_image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "not a CSV"),
        (b"index,task_type,prompt,ori_image,target_image\n", "no task rows"),
        (
            "index,task_type,prompt,ori_image,target_image\n1,t2i,一只猫在窗台上睡觉,,\n".encode(
                "gbk"
            ),
            "not UTF-8",
        ),
        (b"hello world\nfoo\n", "not a CSV task file"),
        (
            b"index,task_type,prompt,ori_image,target_image\n1,t2i,a,,\n1,t2i,b,,\n",
            "duplicate index 1",
        ),
        (b"index,task_type,prompt,ori_image,target_image\nx7,t2i,a,,\n", "not a whole number"),
    ],
)
def test_bad_files_get_one_line(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "task.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    text = str(info.value)
    assert message in text
    assert "\n" not in text and str(path) in text


def test_bad_rows_named_and_good_rows_kept(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    make_image(imgs / "ok.png")
    outside = make_image(tmp_path / "secret.png")
    (imgs / "link.png").symlink_to(outside)
    (imgs / "dir.png").mkdir()
    rows = [
        ("1", "t2i", "", "", ""),
        ("2", "paint", "x", "", ""),
        ("3", "tie", "edit", "missing.png", ""),
        ("4", "tie", "edit", "../secret.png", ""),
        ("5", "tie", "edit", str(outside), ""),
        ("6", "tie", "edit", "link.png", ""),
        ("7", "deepfake", "", "ok.png", ""),
        ("8", "tie", "edit", "dir.png", ""),
        ("9", "tie", "edit", "ok.png", ""),
        ("10", "T2I", "upper case type is fine", "", ""),
    ]
    tl = load_tasks(write_tasks(tmp_path / "task.csv", rows))
    reasons = {b.index: b.reason for b in tl.bad}
    assert "empty prompt" in reasons["1"]
    assert "unknown task_type 'paint'" in reasons["2"]
    assert "not found" in reasons["3"]
    assert "outside" in reasons["4"]
    assert "absolute path" in reasons["5"]
    assert "outside" in reasons["6"]  # a symlink leading out of --images
    assert "no target_image" in reasons["7"]
    assert "not a file" in reasons["8"]
    assert [t.index for t in tl.tasks] == ["9", "10"]
    assert tl.order == [str(i) for i in range(1, 11)]


def test_formats_bom_crlf_extra_columns_and_images_default(tmp_path: Path) -> None:
    make_image(tmp_path / "pics" / "a.png")
    rows = [("7", "tie", "edit", "a.png", "", "extra")]
    path = write_tasks(tmp_path / "t.csv", rows, header=[*HEADER, "note"], bom=False)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    tl = load_tasks(path, tmp_path / "pics")
    assert [t.index for t in tl.tasks] == ["7"]
    # default images folder: next to the task file, imgs/
    tl2 = load_tasks(path)
    assert "not found" in tl2.bad[0].reason


def test_no_header_is_refused(tmp_path: Path) -> None:
    path = write_tasks(tmp_path / "t.csv", [("1", "t2i", "cat", "", "")], header=None)
    with pytest.raises(TaskFileError, match="missing column"):
        load_tasks(path)


def test_control_characters_and_long_prompts_kept_clean(tmp_path: Path) -> None:
    rows = [("1", "t2i", "a\x00 cat\x07 🐱 " + "x" * 5000, "", "")]
    tl = load_tasks(write_tasks(tmp_path / "t.csv", rows))
    prompt = tl.tasks[0].prompt
    assert "\x00" not in prompt and "\x07" not in prompt and "🐱" in prompt
    assert len(prompt) > 5000  # shortening is the scheduler's job, with a warning


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_unreadable_image(tmp_path: Path) -> None:
    img = make_image(tmp_path / "imgs" / "a.png")
    img.chmod(0)
    tl = load_tasks(write_tasks(tmp_path / "t.csv", [("1", "tie", "e", "a.png", "")]))
    assert "not readable" in tl.bad[0].reason
