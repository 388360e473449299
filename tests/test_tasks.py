"""Task file validation: whole-file errors are one line; bad rows are named, good rows go on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import HEADER, make_image, write_tasks

from runner.errors import TaskFileError
from runner.tasks import Task, iter_rows, load_tasks


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


# --------------------------------------------------------------------------- parse vs lines

_CN = "一棵令人惊叹的树从太空中的小行星上生长出来细节复杂自然光线照射呈现出超现实效果宁静天空云朵"


def _real_shaped(tmp_path: Path, n: int = 1000) -> tuple[Path, list[str]]:
    """A task file shaped like the competition's: a quarter of each type, Chinese prompts,
    vttie prompts quoting the text to draw (a doubled quote inside quotes), 32-hex names.
    Returns the path and its lines (header first)."""
    names = [f"{i:032x}.jpg" for i in range(8)]
    for name in names:
        (tmp_path / "imgs").mkdir(exist_ok=True)
        (tmp_path / "imgs" / name).write_bytes(b"\xff\xd8\xff")  # existence is all load checks
    lines = [",".join(HEADER)]
    for i in range(1, n + 1):
        kind = ("t2i", "tie", "vttie", "deepfake")[(i - 1) * 4 // n]
        prompt = _CN[i % 20 : i % 20 + 12 + i % 17]
        ori = names[i % 8] if kind != "t2i" else ""
        target = names[(i + 3) % 8] if kind == "deepfake" else ""
        if kind == "deepfake":
            prompt = ""
        elif kind == "vttie" and i % 3 == 0:
            prompt = f'"在墙上写上""{prompt[:2]}""两个字，保持原有风格"'  # a quoted, doubled quote
        elif i % 7 == 0:
            prompt = f'"{prompt}，细节丰富, 4K"'  # commas inside quotes
        lines.append(f"{i},{kind},{prompt},{ori},{target}")
    path = tmp_path / "task.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    return path, lines


def test_real_shaped_file_gives_one_row_per_line(tmp_path: Path) -> None:
    path, lines = _real_shaped(tmp_path)
    tl = load_tasks(path)
    assert tl.order == [str(i) for i in range(1, 1001)] and tl.bad == []
    assert len(tl.order) == len(lines) - 1
    assert tl.tasks[503].prompt.startswith('在墙上写上"')  # row 504: a doubled quote, undone
    assert tl.types["1000"] == "deepfake"


def _insert_quote(lines: list[str], row: int) -> list[str]:
    idx, kind, rest = lines[row].split(",", 2)
    lines = list(lines)
    lines[row] = f'{idx},{kind},"{rest}'
    return lines


@pytest.mark.parametrize(
    "ending",
    [
        "closes at a later quoted prompt",  # the real file: a vttie row's quote closes it
        "never closes",
        "closes at a line end",
    ],
)
def test_a_stray_quote_before_row_10_is_refused_with_its_line(
    tmp_path: Path, ending: str
) -> None:
    path, lines = _real_shaped(tmp_path)
    bad = _insert_quote(lines, 10)
    if ending == "never closes":
        bad = [ln.replace('"', "") if i > 10 else ln for i, ln in enumerate(bad)]
    elif ending == "closes at a line end":
        bad = [ln.replace('"', "") if i > 10 else ln for i, ln in enumerate(bad)]
        bad[40] = bad[40][:-2] + '",,'  # a t2i row: its prompt now ends the runaway field
    path.write_bytes(("\n".join(bad) + "\n").encode())
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    assert "line 11" in text and "quote" in text, text  # row 10 sits on line 11


def test_a_field_spanning_lines_is_a_bad_row_and_no_row_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        ",".join(HEADER) + '\n1,t2i,a cat,,\n2,t2i,"a dog\nsitting on a mat",,\n3,t2i,a cow,,\n'
        '4,t2i,"the last one\n',
        encoding="utf-8",
    )
    with pytest.raises(TaskFileError, match=r"line 6: a quote opened in this row is never"):
        load_tasks(path)
    path.write_text(path.read_text().rsplit("4,", 1)[0], encoding="utf-8")
    tl = load_tasks(path)
    assert tl.order == ["1", "2", "3"] and [t.index for t in tl.tasks] == ["1", "3"]
    (bad,) = tl.bad
    assert bad.index == "2" and "prompt spans lines 3-4" in bad.reason


def test_a_prompt_far_beyond_any_limit_is_a_bad_row(tmp_path: Path) -> None:
    rows = [("1", "t2i", "猫" * 9000, "", ""), ("2", "t2i", "x" * 5000, "", "")]
    tl = load_tasks(write_tasks(tmp_path / "t.csv", rows))
    assert [t.index for t in tl.tasks] == ["2"]  # long, but someone's real prompt: shortened
    assert "9000 characters" in tl.bad[0].reason and "stray quote" in tl.bad[0].reason


def test_hostile_image_names_mark_only_their_row_bad(tmp_path: Path) -> None:
    make_image(tmp_path / "imgs" / "ok.png")
    rows = [
        ("1", "tie", "edit", "ok\x00.png", ""),
        ("2", "tie", "edit", "ok.png\x00../../etc/passwd", ""),
        ("3", "tie", "edit", "a" * 300 + ".png", ""),
        ("4", "deepfake", "", "ok.png", "ok.png\x1b[31m"),
        ("5", "tie", "edit", "ok.png", ""),
    ]
    tl = load_tasks(write_tasks(tmp_path / "t.csv", rows))
    reasons = {b.index: b.reason for b in tl.bad}
    assert "control character ('\\x00')" in reasons["1"]
    assert "control character" in reasons["2"]
    assert "cannot be looked up" in reasons["3"] and "\n" not in reasons["3"]
    assert reasons["4"].startswith("target_image") and "control character" in reasons["4"]
    assert [t.index for t in tl.tasks] == ["5"]


def test_rows_stream_before_the_file_is_read_whole(tmp_path: Path) -> None:
    path, lines = _real_shaped(tmp_path)
    lines[900] = lines[1].replace("1,", "7,", 1)  # a duplicate index near the end
    path.write_bytes(("\n".join(lines) + "\n").encode())
    rows = iter_rows(path)
    first = next(rows)
    assert first.index == "1"
    with pytest.raises(TaskFileError, match=r"duplicate index 7 \(lines 8 and 901\)"):
        list(rows)


def test_tasks_share_what_rows_repeat(tmp_path: Path) -> None:
    """Per-row state stays small: a name or picture used by many rows is held once."""
    path, _ = _real_shaped(tmp_path)
    tl = load_tasks(path)
    by_name: dict[str, set[int]] = {}
    for t in tl.tasks:
        if t.ori_image is not None:
            by_name.setdefault(t.ori_name, set()).add(id(t.ori_image))
    assert by_name and all(len(ids) == 1 for ids in by_name.values())
    assert len({id(t.model_fields_set) for t in tl.tasks}) == 1
    assert tl.tasks[0].model_fields_set == set(Task.model_fields)


def test_an_unquoted_comma_that_shifts_the_columns_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        ",".join(HEADER) + "\n1,t2i,a sign saying hi, and a dog,,\n2,t2i,a cat,,,\n"
        '3,t2i,"a sign saying hi, and a dog",,\n',
        encoding="utf-8",
    )
    tl = load_tasks(path)
    assert [t.index for t in tl.tasks] == ["3"]
    assert tl.tasks[0].prompt == "a sign saying hi, and a dog"
    # row 1's extra field is empty: the shift is only visible in the count
    assert [b.index for b in tl.bad] == ["1", "2"] and tl.bad[0].task_type == "t2i"
    assert "has 6 fields, the header 5" in tl.bad[0].reason and "quoted" in tl.bad[0].reason


def test_an_endless_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(HEADER) + "\n1,t2i,a cat,,\n")
        f.write("2,t2i," + "猫" * 3_000_000)  # 9 MB, no line end
    with pytest.raises(TaskFileError, match=r"line 3 is longer than 1,000,000 characters"):
        load_tasks(path)
    # a runaway quote over many normal lines meets the field limit, named from its start
    rows = "\n".join(f"{i},t2i,一只猫 {i} " + "x" * 200 + ",," for i in range(2, 5000))
    path.write_text(",".join(HEADER) + '\n1,t2i,"a cat,,\n' + rows + "\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match=r"line 2 \(to line \d+\): a field runs past 1,000"):
        load_tasks(path)
