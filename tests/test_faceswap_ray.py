"""Face swap as Ray actors (``--ray local``): a 2-CPU Ray cluster started by the run, two
classic-backend actors, deepfake rows through the whole runner, one actor killed mid-run."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from runner.settings import load_settings

ray = pytest.importorskip("ray")
insightface = pytest.importorskip("insightface")
pytest.importorskip("dlib")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
DATA = Path(insightface.__file__).parent / "data" / "images"


def test_ray_option_picks_the_ray_pool_without_importing_ray(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path;"
        "from runner.job import _faceswap; from runner.settings import load_settings;"
        "from runner.tasks import load_tasks;"
        f"t = load_tasks(Path({str(tmp_path / 'task.csv')!r}), None);"
        "s = load_settings(faceswap={'backend': 'classic', 'workers': 2}, ray='local');"
        "p, _ = _faceswap(s, t); print(type(p).__name__, p.workers, 'ray' in sys.modules);"
        "p, _ = _faceswap(load_settings(), t); print(type(p).__name__)"
    )
    (tmp_path / "imgs").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / name)
    (tmp_path / "task.csv").write_text(
        "index,task_type,prompt,ori_image,target_image\n1,deepfake,,a.jpg,b.jpg\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.split() == ["RayFaceSwapPool", "2", "False", "FaceSwapPool"]


async def test_ray_faceswap_rows_done_and_a_killed_actor_survived(
    job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner import run_all
    from runner.backends.faceswap.ray_pool import RayFaceSwapPool

    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(DATA / "t1.jpg", imgs / "group.jpg")
    shutil.copy(DATA / "Tom_Hanks_54745.png", imgs / "hanks.png")
    rows = [str(i) for i in range(1, 5)]
    tasks = job([(i, "deepfake", "", "group.jpg", "hanks.png") for i in rows])
    settings = load_settings(
        faceswap={"backend": "classic", "workers": 2, "models_dir": str(tmp_path / "models")},
        poll_first_s=0.02,
        backoff_max_s=0.2,
        ray="local",
    )

    pools: list[RayFaceSwapPool] = []
    real_init = RayFaceSwapPool.__init__

    def spy(self: RayFaceSwapPool, *args, **kw) -> None:
        real_init(self, *args, **kw)
        pools.append(self)

    monkeypatch.setattr(RayFaceSwapPool, "__init__", spy)
    killed: list[int] = []

    async def killer() -> None:
        while True:
            await asyncio.sleep(0.05)
            for slot in pools[0].slots if pools else []:
                if slot.busy and slot.actor is not None:
                    killed.append(slot.number)
                    ray.kill(slot.actor)
                    return

    kill = asyncio.create_task(killer())
    out = tmp_path / "out"
    try:
        summary = await asyncio.wait_for(
            run_all(tasks, out=out, settings=settings, progress=False), 120
        )
        await asyncio.wait_for(kill, 1)
    finally:
        kill.cancel()
    assert summary.exit_code == 0, [(r.index, r.reason) for r in summary.failed]
    assert summary.faceswap and "Ray actors, cluster local" in summary.faceswap
    assert killed and pools[0].crashes >= 1  # the dead actor's row was retried on a new one
    assert not ray.is_initialized()  # the run started the cluster, and shut it down
    pids = set()
    for i in rows:
        with Image.open(out / "imgs" / f"{i}.jpg") as img:  # written by the driver
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB"
    done = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    done = [e for e in done if e.get("ev") == "done"]
    assert sorted(e["index"] for e in done) == rows
    for e in done:
        assert e["model"] == "faceswap:classic"
        assert e["identity_target"] > e["identity_ori"]
        pids.add(e["detail"]["worker_pid"])
    assert any(e["detail"].get("retried_after_crash") for e in done)
    assert len(pids) >= 2  # rows ran in more than one actor
