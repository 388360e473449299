"""The process pool: spawn workers, the event loop stays free, a crashed worker is replaced
and its row retried once, missing weights are named and the offline backend is used."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.backends.faceswap import FaceSwapError, FaceSwapPool, SwapResult, processors, worker
from runner.errors import SettingsError
from runner.settings import FaceSwapSettings

try:  # tests/ on sys.path (pytest's default rootdir-less import) or tests as a package
    from faceswap_models import face_card, make_models_dir
except ImportError:  # pragma: no cover
    from tests.faceswap_models import face_card, make_models_dir

insightface = pytest.importorskip("insightface")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
DATA = Path(insightface.__file__).parent / "data" / "images"
MARKER_ENV = "RUNNER_TEST_FACESWAP_CRASH_MARKER"


def crash_or_run(job: worker.SwapJob) -> SwapResult:
    """Runs in the worker: dies (like a segfault would) for the rows the test names."""
    if job.index.startswith("crash-always"):
        os._exit(3)
    if job.index.startswith("crash-once"):
        marker = Path(os.environ[MARKER_ENV])
        if not marker.exists():
            marker.write_text("crashed once")
            os._exit(3)
    return worker.run_job(job)


class CrashingPool(FaceSwapPool):
    job_function = staticmethod(crash_or_run)


def test_missing_inswapper_weights_named_and_classic_used(tmp_path: Path) -> None:
    pool = FaceSwapPool(FaceSwapSettings(backend="inswapper", models_dir=tmp_path))
    assert pool.backend == "classic"
    line = pool.describe()
    for name in ("inswapper_128.onnx", "det_10g.onnx", "w600k_r50.onnx"):
        assert name in line
    assert str(tmp_path / "buffalo_l") in line
    assert "classic" in line and "INSWAPPER UNAVAILABLE" in line
    # "auto" picks the offline backend quietly but still says what inswapper would need.
    auto = FaceSwapPool(FaceSwapSettings(backend="auto", models_dir=tmp_path))
    assert auto.backend == "classic" and "inswapper_128.onnx" in auto.describe()


def test_unknown_backend_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"faceswap\.backend"):
        FaceSwapPool(FaceSwapSettings(backend="roop", models_dir=tmp_path))


async def test_classic_pool_keeps_the_loop_free(tmp_path: Path) -> None:
    hanks = DATA / "Tom_Hanks_54745.png"
    group = DATA / "t1.jpg"
    blank = tmp_path / "blank.jpg"
    Image.fromarray(np.full((120, 160, 3), 80, np.uint8)).save(blank)
    pool = FaceSwapPool(FaceSwapSettings(backend="classic", models_dir=tmp_path, workers=1))
    assert "1 worker x" in pool.describe()
    gaps: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    try:
        await pool.start()
        await pool.start()  # idempotent
        result = await pool.swap("1", group, hanks)
        assert result.backend == "classic" and result.embedding == "dlib"
        assert result.identity_target is not None and result.identity_ori is not None
        assert result.identity_target > result.identity_ori
        assert result.detail["worker_pid"] != os.getpid()
        with pytest.raises(FaceSwapError, match="no face found in ori_image"):
            await pool.swap("2", blank, hanks)
    finally:
        done.set()
        await beat
        await pool.close()
    # Loading dlib and swapping took seconds; the loop never stalled on them.
    assert max(gaps) < 0.25, max(gaps)


async def test_ready_names_each_worker_once(tmp_path: Path) -> None:
    """Two workers: the warm-up hears from both, each once (the first to load its models
    used to answer both pings, and the ready line listed its pid twice)."""
    pool = FaceSwapPool(FaceSwapSettings(backend="classic", models_dir=tmp_path, workers=2))
    try:
        await pool.start()
        pids = [i["pid"] for i in pool.worker_info]
    finally:
        await pool.close()
    assert len(pids) == 2 and len(set(pids)) == 2, pids
    assert os.getpid() not in pids


async def test_crashed_worker_rebuilds_pool_and_retries_once(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    models = make_models_dir(tmp_path / "models")
    ori, target = tmp_path / "ori.png", tmp_path / "target.png"
    Image.fromarray(face_card((60, 70, 230), seed=1)).save(ori)
    Image.fromarray(face_card((230, 70, 60), seed=2)).save(target)
    monkeypatch.setenv(MARKER_ENV, str(tmp_path / "crashed"))
    pool = CrashingPool(FaceSwapSettings(backend="inswapper", models_dir=models, workers=1))
    try:
        await pool.start()
        first = pool.worker_info[0]["pid"]
        result = await pool.swap("crash-once-1", ori, target)
        assert result.detail.get("retried_after_crash") is True
        assert result.detail["worker_pid"] != first  # a new pool, a new worker
        assert pool.crashes == 1

        # The run goes on in the new pool.
        after = await pool.swap("3", ori, target)
        assert after.identity_target is not None and after.identity_target > 0.9
        assert "retried_after_crash" not in after.detail
        assert pool.crashes == 1
    finally:
        await pool.close()


async def test_poison_row_fails_alone_and_its_neighbours_succeed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers, a row that kills its worker every time, three good rows beside it: the
    good rows caught in the crash are retried and succeed; only the poison row fails."""
    models = make_models_dir(tmp_path / "models")
    ori, target = tmp_path / "ori.png", tmp_path / "target.png"
    Image.fromarray(face_card((60, 70, 230), seed=1)).save(ori)
    Image.fromarray(face_card((230, 70, 60), seed=2)).save(target)
    monkeypatch.setenv(MARKER_ENV, str(tmp_path / "crashed"))
    pool = CrashingPool(FaceSwapSettings(backend="inswapper", models_dir=models, workers=2))
    try:
        await pool.start()
        results = await asyncio.gather(
            pool.swap("crash-always-x", ori, target),
            *(pool.swap(f"ok-{i}", ori, target) for i in range(3)),
            return_exceptions=True,
        )
        poison, good = results[0], results[1:]
        assert isinstance(poison, FaceSwapError) and "crashed twice" in str(poison)
        for r in good:
            assert isinstance(r, SwapResult), r
            assert r.identity_target is not None and r.identity_target > 0.9
        assert pool.crashes == 2  # the first crash, and the poison row's lone retry
    finally:
        await pool.close()


def test_models_that_fail_to_load_fail_rows_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The initializer never raises (the pool would take that for a crash on every row)."""

    def broken() -> None:
        raise RuntimeError("shape_predictor_68_face_landmarks.dat is truncated")

    monkeypatch.setattr(processors, "load_dlib", broken)  # what loads dlib for the worker
    # Registered first, so both globals are put back after the test.
    monkeypatch.setattr(worker, "_ENGINE", None)
    monkeypatch.setattr(worker, "_LOAD_ERROR", None)
    worker.init_worker(worker.WorkerConfig(backend="classic"))
    assert "truncated" in worker.ping()["load_error"]
    with pytest.raises(FaceSwapError, match="could not be loaded: RuntimeError: shape_pred"):
        worker.run_job(worker.SwapJob("1", "ori.jpg", "target.jpg"))
