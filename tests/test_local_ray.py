"""Local generation as Ray actors (``--ray local``): a 2-CPU Ray cluster started by the run,
the tiny QwenImagePipeline in a CPU actor, the actor's process killed mid-run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("diffusers")

from runner import run_all
from runner.backends.local.tiny import build_tiny_qwen_image
from runner.settings import load_settings
from tests.local_helpers import digest, kill_when_busy


def test_without_ray_nothing_imports_it() -> None:
    import subprocess
    import sys

    code = (
        "import sys, runner, runner.job, runner.backends.local, runner.cli, runner.doctor;"
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ray_address_follows_the_flag_then_ray_address(monkeypatch) -> None:
    from runner.backends.raycluster import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) is None  # no --ray: no Ray
    assert ray_address("") == "auto"
    assert ray_address("local") == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_address("") == "10.0.0.5:6379"
    assert ray_address("head:6379") == "head:6379"


async def test_ray_actors_survive_a_kill(
    job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    pipe = build_tiny_qwen_image(tmp_path / "tiny-qwen-image")
    tasks = job([(str(i), "t2i", f"a lighthouse number {i}", "", "") for i in range(1, 4)])
    table = {"path": str(pipe), "steps": 2, "size": "32*32", "devices": ["cpu"]}
    settings = load_settings(
        models={"t2i": ["local:tiny"]},
        local={"tiny": table},
        poll_first_s=0.02,
        backoff_max_s=0.2,
        seed=7,
        ray="local",
    )
    killed: list[int] = []
    kill = kill_when_busy(monkeypatch, "local:tiny", killed)
    out = tmp_path / "out"
    summary = await asyncio.wait_for(
        run_all(tasks, out=out, settings=settings, progress=False), 300
    )
    await asyncio.wait_for(kill, 1)
    assert summary.exit_code == 0, [(r.index, r.reason) for r in summary.failed]
    assert killed and summary.retries >= 1  # the dead actor's job was retried on a new one
    for i in ("1", "2", "3"):
        digest(out / "imgs" / f"{i}.jpg")  # written by the driver, from the actors' bytes
