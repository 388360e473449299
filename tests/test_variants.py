"""Prompt variants end to end: the settings' forms, the task file's Unicode kept, a run whose
judge prefers one variant (answering in a fenced object with prose, as chat models do), the
report's win rates, and ``--learned`` making only the winner the next time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_tasks

from runner import run_all
from runner.backends.judge.wins import MIN_DECIDED, learn, standings
from runner.emulator import images as emulator_images
from runner.emulator import state as emulator_state
from runner.errors import SettingsError
from runner.settings import load_settings
from runner.store.journal import replay
from runner.tasks import load_tasks

# style prompts whose words must reach the service as written (the old suffix turned every
# one of them "photorealistic")
PROMPTS = [
    "水墨画风格",
    "flat vector logo",
    "Van Gogh oil painting of a harbour at night",
    "一家人 👨\u200d👩\u200d👧 在公园野餐",
    "a co\u00adop\u00aderative poster",
    "\u200fשלום\u200e sign on a café",
    "水墨画风格的山水，远山近水，留白",
    "flat vector logo of a fox, two colours",
]
FRAME_MARKS = ("High quality", "高清画质")  # the start of the framed t2i suffix (en, zh)


def _settings_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_number_is_that_many_plain_candidates(tmp_path: Path, clean_env: None) -> None:
    s = load_settings(_settings_file(tmp_path, "[candidates]\nt2i = 3\ntie = 1\n"))
    assert s.variants("t2i") == ["plain"] * 3 and s.variants("tie") == ["plain"]
    assert s.candidate_counts()["t2i"] == 3
    s = load_settings(_settings_file(tmp_path, '[candidates]\nt2i = ["framed+extend", "plain"]\n'))
    assert s.variants("t2i") == ["framed+extend", "plain"] and s.variants("vttie") == ["plain"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[candidates]\nt2i = ["plain", "fancy"]\n', "[candidates] t2i: unknown prompt variant"),
        ('[candidates]\ntie = ["framed+negative"]\n', "+negative is for t2i rows only"),
        ("[candidates]\nt2i = 9\n", "[candidates] t2i must be 1 to 8"),
        ("prompt_templates = false\n", "prompt_templates is gone"),
    ],
)
def test_bad_candidates_refused_in_one_line(
    tmp_path: Path, clean_env: None, text: str, words: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(_settings_file(tmp_path, text))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_task_files_prompt_is_kept_as_written(tmp_path: Path) -> None:
    rows = [(str(i), "t2i", p, "", "") for i, p in enumerate(PROMPTS, 1)]
    rows.append(("99", "t2i", "a\x00 cat\x07 on a mat\u0085", "", ""))
    tasks = load_tasks(write_tasks(tmp_path / "t.csv", rows))
    got = {t.index: t.prompt for t in tasks.tasks}
    for i, p in enumerate(PROMPTS, 1):
        assert got[str(i)] == p
    assert got["99"] == "a cat on a mat"  # control characters (C0, C1) are no text


def _flat_unless_framed(seen: list[str]) -> Any:
    """The emulator's t2i picture for a framed prompt, a blank one for any other: a judge
    that looks at the pictures prefers the framed variant every time."""
    real = emulator_state.render_t2i

    def render(width: int, height: int, prompt: str, seed: int) -> bytes:
        seen.append(prompt)
        if any(mark in prompt for mark in FRAME_MARKS):
            return real(width, height, prompt, seed)
        return emulator_images.encode_png(np.full((height, width, 3), 128, np.uint8))

    return render


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    seen: list[str] = []
    monkeypatch.setattr(emulator_state, "render_t2i", _flat_unless_framed(seen))
    return seen


async def test_the_judge_keeps_the_variant_it_prefers_and_learned_makes_only_it(
    tmp_path: Path, emulated: list[str]
) -> None:
    base = load_settings(poll_first_s=0.02, backoff_max_s=0.2)
    settings = base.model_copy(
        update={
            "emulator": base.emulator.model_copy(
                update={"time_scale": 0.01, "judge_answers": "fenced"}
            ),
            "candidates": {**base.candidates, "t2i": ["plain", "framed"]},
        }
    )
    rows = [(str(i), "t2i", p, "", "") for i, p in enumerate(PROMPTS, 1)]
    assert len(rows) >= MIN_DECIDED
    out = tmp_path / "out"
    summary = await run_all(
        write_tasks(tmp_path / "t.csv", rows), out=out, settings=settings, progress=False
    )
    assert summary.exit_code == 0
    # every candidate scored from the fenced answers: 2 per row, SC and PQ each
    assert summary.judge is not None and summary.judge["calls"] == 4 * len(rows)
    state = replay(out / "journal.jsonl")
    for index, prompt in ((str(i), p) for i, p in enumerate(PROMPTS, 1)):
        result = state.rows[index].result
        cands = result["candidates"]
        assert [c["variant"] for c in cands] == ["plain", "framed"]
        assert all(c["overall"] is not None and c["error"] is None for c in cands)
        assert result["chosen"] == 1 and result["variant"] == "framed"  # every time
        assert cands[0]["prompt_sent"] == prompt  # the user's words, verbatim
        assert cands[1]["prompt_sent"].startswith(prompt)
        assert (out / "imgs" / f"{index}.jpg").read_bytes() == (
            out / "candidates" / index / "1.jpg"
        ).read_bytes()
    assert sorted(p for p in emulated if p in PROMPTS) == sorted(PROMPTS)  # sent as written

    table = standings(state)["t2i"]["variant"]
    assert table["framed"].wins == table["framed"].decided == len(rows)
    assert table["plain"].wins == 0 and table["plain"].win_rate == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "What wins: t2i, by variant" in page and "100 %" in page
    assert "Judge calls (all runs)" in page and f"{4 * len(rows)} calls" in page

    # the next run in the folder, --learned: only the clear winner is made, one request a row
    learned, notes = learn(settings.model_copy(update={"learned": True}), state)
    assert learned.variants("t2i") == ["framed"] and "framed" in notes[0]
    more = [*rows, ("100", "t2i", "a red kite over the dunes", "", "")]
    emulated.clear()
    again = await run_all(
        write_tasks(tmp_path / "t2.csv", more),
        out=out,
        settings=settings.model_copy(update={"learned": True}),
        progress=False,
    )
    assert again.exit_code == 0
    assert len(emulated) == 1 and emulated[0].startswith("a red kite over the dunes. High")
    new = replay(out / "journal.jsonl").rows["100"].result
    assert new["variant"] == "framed" and "candidates" not in new
    run_end = [
        json.loads(line)
        for line in (out / "journal.jsonl").read_text(encoding="utf-8").splitlines()
        if '"run_end"' in line
    ]
    assert run_end[-1]["judge"]["calls"] == 2  # one candidate, judged (SC and PQ)


def test_dry_run_counts_the_judges_calls_and_cost(tmp_path: Path, clean_env: None) -> None:
    import io

    from rich.console import Console

    from runner.cli import dry_run

    settings = load_settings(
        _settings_file(
            tmp_path,
            '[candidates]\nt2i = ["plain", "framed"]\n'
            "[judge]\ninput_price = 1.6\noutput_price = 4.0\n",
        )
    )
    rows = [("1", "t2i", "a cat", "", ""), ("2", "t2i", "a dog", "", "")]
    buf = io.StringIO()
    dry_run(Console(file=buf, width=200), settings, write_tasks(tmp_path / "t.csv", rows), None)
    text = buf.getvalue()
    assert "judge qwen-vl-max: about 8 calls" in text  # 2 rows x 2 candidates x (SC, PQ)
    assert "est. cost at most" in text and "texts and parser:" in text


def test_the_budget_counts_the_judges_spend() -> None:
    from runner.cost import Budget, price_book

    budget = Budget(price_book(load_settings()), 10.0)
    budget.count_judge(0.25)
    budget.count_judge(None)  # no price: a call, no money
    assert budget.judge_calls == 2 and budget.judge_spent == 0.25
