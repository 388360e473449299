"""The judge's eye on face swaps: with the judge on, every variant a swap made is a candidate,
scored as the competition scores a face swap (sqrt(10 x identity x PQ)); the best is the
row's picture and the journal says the judge chose. Offline, the swapper's own pick stands
and the journal says so."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import fault_emulator, make_image, write_tasks
from PIL import Image, ImageFilter

from runner.backends.dashscope import ClientConfig, DashScopeClient
from runner.backends.faceswap.result import SwapResult, SwapVariant
from runner.backends.judge.scorer import Judge
from runner.scheduling.finishing import Finisher
from runner.settings import load_settings
from runner.store.journal import JOURNAL_NAME, Journal
from runner.tasks import Task

pytestmark = pytest.mark.usefixtures("clean_env")


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


class Swapper:
    """A pool that hands back two variants: the offline pick a blurred picture, the other
    the sharp one (the same identity score, so only the judge's PQ tells them apart)."""

    def __init__(self, sharp: bytes, blurred: bytes) -> None:
        self.variants = [
            SwapVariant(
                name="features",
                jpeg=blurred,
                identity_target=0.8,
                identity_ori=0.3,
                realism=1.0,
                offline_score=2.0,
                chosen=True,
            ),
            SwapVariant(
                name="natural",
                jpeg=sharp,
                identity_target=0.8,
                identity_ori=0.3,
                realism=0.7,
                offline_score=1.0,
            ),
        ]

    async def swap(self, index: str, ori: Path, target: Path) -> SwapResult:
        return SwapResult(
            jpeg=self.variants[0].jpeg,
            backend="classic",
            identity_target=0.8,
            identity_ori=0.3,
            embedding="dlib",
            detail={"variant": "features"},
            variants=self.variants,
        )


def _done(out: Path) -> dict[str, Any]:
    lines = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
    return next(r for r in map(json.loads, lines) if r["ev"] == "done")


@pytest.mark.parametrize("judged", [True, False])
async def test_the_judge_picks_among_a_swaps_variants(tmp_path: Path, judged: bool) -> None:
    src = make_image(tmp_path / "ori.png", (320, 320))
    with Image.open(src) as img:
        sharp = _jpeg(img.convert("RGB"))
        blurred = _jpeg(img.convert("RGB").filter(ImageFilter.GaussianBlur(6)))
    task = Task(
        index="7",
        task_type="deepfake",
        prompt="",
        ori_image=src,
        target_image=src,
        ori_name="ori.png",
        target_name="ori.png",
    )
    out = tmp_path / "out"
    (out / "imgs").mkdir(parents=True)
    settings = load_settings(judge={"enabled": judged, "requests_per_minute": 6000})
    journal = Journal(out)
    async with fault_emulator() as emu:
        config = ClientConfig(base_url=emu.base_url, api_key="sk-judged0123456789")
        async with DashScopeClient(config) as client:
            judge = Judge(client, settings.judge, emulated=True)
            finisher = Finisher(
                settings,
                out,
                journal,
                judge,
                True,
                Swapper(sharp, blurred),  # type: ignore[arg-type]
            )
            result = await finisher.swap_row(task, "fp")
    journal.close()
    from runner.outputs.report import write_report

    tasks = write_tasks(tmp_path / "task.csv", [("7", "deepfake", "", "ori.png", "ori.png")])
    html = write_report(out, tasks, tmp_path, None).read_text(encoding="utf-8")
    assert ("chosen by the judge" if judged else "chosen by local realism") in html
    done = _done(out)
    written = (out / "imgs" / "7.jpg").read_bytes()
    if judged:
        assert written == sharp  # the sharper picture, though the swapper chose the other
        assert done["detail"]["chosen_by"] == "judge" and done["detail"]["variant"] == "natural"
        assert [c["variant"] for c in done["candidates"]] == ["features", "natural"]
        overall = [c["overall"] for c in done["candidates"]]
        assert overall[1] > overall[0] and result.score == overall[1]
        for c in done["candidates"]:  # the competition's formula: identity x the judge's PQ
            assert c["overall"] == pytest.approx(np.sqrt(10 * 0.8 * min(c["pq"])), abs=1e-3)
    else:
        assert written == blurred and "candidates" not in done
        assert done["detail"]["chosen_by"] == "offline"
