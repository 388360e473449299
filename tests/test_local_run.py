"""Local generation through the whole runner: real diffusers pipelines with tiny random
weights, saved with save_pretrained, loaded by a spawned worker on the CPU.

Text-to-image: QwenImagePipeline, its tokenizer made offline (a byte-level BPE with Qwen's
special tokens). Edits: a tiny InstructPix2Pix pipeline, since QwenImageEditPipeline's
processor cannot be built offline here (runner.backends.local.tiny says why). Nothing is downloaded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from runner import run_all
from runner.backends.local.tiny import build_tiny_instruct_pix2pix, build_tiny_qwen_image
from runner.settings import load_settings
from runner.store.journal import replay
from tests.local_helpers import digest as _digest
from tests.local_helpers import kill_when_busy as _kill_when_busy
from tests.local_helpers import pixels_apart


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen_image(tmp_path_factory.mktemp("pipes") / "tiny-qwen-image")


@pytest.fixture
def local_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_qwen: Path):
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)

    def make(path: Path | str = tiny_qwen, **over):
        table = {"path": str(path), "steps": 2, "size": "32*32", "devices": ["cpu"], **over}
        return load_settings(
            models={"t2i": ["local:tiny"]},
            local={"tiny": table},
            poll_first_s=0.02,
            backoff_max_s=0.2,
            seed=7,
        )

    return make


async def test_rows_seeds_candidates_and_a_killed_worker(
    job, tmp_path: Path, local_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = job(
        [
            ("1", "t2i", "a red fox in the snow", "", ""),
            ("2", "t2i", "a red fox in the snow", "", ""),  # same prompt, same seeds
            ("3", "t2i", "一只在雪地里的红狐狸", "", ""),
        ]
    )
    # batch 2: two jobs at a time on the one CPU worker, made in one pipeline call
    settings = local_settings(batch=2).model_copy(update={"candidates": {"t2i": 2}})
    out = tmp_path / "out"
    killed: list[int] = []
    kill = _kill_when_busy(monkeypatch, "local:tiny", killed)
    summary = await asyncio.wait_for(
        run_all(tasks, out=out, settings=settings, progress=False), 240
    )
    await asyncio.wait_for(kill, 1)
    assert summary.exit_code == 0, [(r.index, r.reason) for r in summary.failed]
    # the worker killed while it held a job: restarted, the job retried as a new attempt
    assert killed and summary.retries >= 1
    assert all(r.model == "local:tiny" for r in summary.rows)
    for i in ("1", "2", "3"):
        _digest(out / "imgs" / f"{i}.jpg")
    cands = {i: sorted((out / "candidates" / i).glob("*.jpg")) for i in ("1", "2")}
    assert len(cands["1"]) == 2 and len(cands["2"]) == 2
    one = [_digest(p) for p in cands["1"]]
    for p in cands["2"]:
        _digest(p)  # a real 32x32 RGB JPEG
    assert one[0] != one[1]  # candidates of a row get different seeds
    # the same seed gives the same image (up to float rounding: the retry after the kill
    # may batch a job with another one); different seeds give unrelated noise
    assert all(pixels_apart(a, b) < 1.0 for a, b in zip(cands["1"], cands["2"], strict=True))
    assert pixels_apart(cands["1"][0], cands["1"][1]) > 10.0
    state = replay(out / "journal.jsonl")
    assert all(state.rows[i].done for i in ("1", "2", "3"))
    # real images, not emulator placeholders, though no API key is set: submit packs them
    assert not any(state.rows[i].emulated for i in ("1", "2", "3"))
    # a done local row is not made again (no worker even starts)
    again = await run_all(tasks, out=out, settings=settings, progress=False)
    assert sum(r.status == "skipped" for r in again.rows) == 3


async def test_missing_path_is_one_line(job, tmp_path: Path, local_settings) -> None:
    tasks = job([("1", "t2i", "a red fox", "", "")])
    settings = local_settings(path=str(tmp_path / "models" / "Qwen-Image"))
    summary = await run_all(tasks, out=tmp_path / "out", settings=settings, progress=False)
    assert summary.exit_code == 1
    (row,) = summary.failed
    assert "Qwen-Image does not exist" in row.reason
    assert "model_index.json" in row.reason and '[local."tiny"]' in row.reason
    assert "\n" not in row.reason and "Traceback" not in row.reason


async def test_not_a_pipeline_folder(job, tmp_path: Path, local_settings) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"not a pipeline")
    tasks = job([("1", "t2i", "a red fox", "", "")])
    summary = await run_all(
        tasks, out=tmp_path / "out", settings=local_settings(path=folder), progress=False
    )
    (row,) = summary.failed
    assert "not a diffusers pipeline (no model_index.json)" in row.reason


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' scheduler vs numpy 2
async def test_edit_rows_keep_the_source_size(
    job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    pipe = build_tiny_instruct_pix2pix(tmp_path / "tiny-pix2pix")
    tasks = job(
        [
            ("1", "tie", "make the sky purple", "a.png", ""),
            ("2", "vttie", "change the word OPEN to SHUT", "b.png", ""),
        ],
        img_size=(60, 40),
    )
    table = {"path": str(pipe), "steps": 2, "size": "32*32", "devices": ["cpu"]}
    settings = load_settings(
        models={"tie": ["local:edit"], "vttie": ["local:edit"]},
        local={"edit": table},
        poll_first_s=0.02,
        backoff_max_s=0.2,
        seed=7,
    )
    out = tmp_path / "out"
    summary = await run_all(tasks, out=out, settings=settings, progress=False)
    assert summary.exit_code == 0, [(r.index, r.reason) for r in summary.failed]
    for i in ("1", "2"):
        with Image.open(out / "imgs" / f"{i}.jpg") as img:
            assert img.format == "JPEG" and img.size == (60, 40)  # the source's size, back
