"""Ray actors fit the cluster (issue 25): on 2 CPUs a run with deepfake rows and a local
model's rows finishes. Before, the two face-swap actors (one CPU each) held both CPUs for the
whole run and the diffusion actor was never placed: the run waited without a word."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("ray")
pytest.importorskip("diffusers")

from runner import run_all
from runner.backends.local.tiny import build_tiny_qwen_image
from runner.settings import load_settings
from tests.sample_faces import GROUP, crop


@pytest.fixture
def two_cpu_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


async def test_deepfake_and_local_rows_finish_on_two_cpus(
    job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_cpu_cluster
) -> None:
    if not GROUP.is_file():
        pytest.skip("insightface's sample photo is not installed")
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(crop(2)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(crop(3)).save(tmp_path / "imgs" / "b.png")
    pipe = build_tiny_qwen_image(tmp_path / "tiny-qwen-image")
    rows = [("1", "deepfake", "", "a.png", "b.png"), ("2", "deepfake", "", "b.png", "a.png")]
    rows += [(str(i), "t2i", f"a lighthouse number {i}", "", "") for i in range(3, 6)]
    tasks = job(rows)
    settings = load_settings(
        models={"t2i": ["local:tiny"]},
        local={"tiny": {"path": str(pipe), "steps": 2, "size": "32*32", "devices": ["cpu"]}},
        faceswap={"backend": "classic", "workers": 2},  # two asked for: one fits beside tiny
        poll_first_s=0.02,
        backoff_max_s=0.2,
        ray="auto",  # the cluster this process joined (2 CPUs)
    )
    summary = await asyncio.wait_for(
        run_all(tasks, out=tmp_path / "out", settings=settings, progress=False), 400
    )
    assert summary.exit_code == 0, [(r.index, r.reason) for r in summary.failed]
    assert sorted(r.index for r in summary.rows if r.status == "done") == ["1", "2", "3", "4", "5"]
    assert "1 worker" in (summary.faceswap or "")  # fitted: 2 CPUs less the local actor's
