"""Local models without a model: settings, the lane's slots, paths, the family table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.backends.local import local_models
from runner.backends.local.config import resolve_source, worker_specs
from runner.backends.local.families import (
    GENERIC,
    edit_size,
    family_of,
    t2i_size,
    with_suffix,
)
from runner.errors import ModelNotServed, SettingsError
from runner.settings import LocalModel, load_settings

QWEN = family_of("QwenImagePipeline")


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **table):
    monkeypatch.chdir(tmp_path)
    return load_settings(
        models={"t2i": ["local:qwen-image", "wanx2.1-t2i-turbo"]},
        local={"qwen-image": {"path": "models/Qwen-Image", **table}},
    )


def test_lane_slots_are_devices_times_batch(tmp_path: Path, monkeypatch) -> None:
    s = _settings(tmp_path, monkeypatch, devices=["cuda:0", "cuda:1"], batch=3)
    q = s.quota("local:qwen-image")
    assert q.in_flight == 6 and q.max_in_flight == 6 and not q.learn
    assert q.submits_per_second >= 1000  # no rate to respect on one's own GPUs
    assert s.quota("wanx2.1-t2i-turbo").in_flight == 2  # API models keep theirs
    assert local_models(s.models) == ["local:qwen-image"]


def test_default_devices_do_not_need_torch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails: no GPU known
    from runner.backends.local import config

    config.visible_gpus.cache_clear()
    try:
        s = _settings(tmp_path, monkeypatch)
        assert s.quota("local:qwen-image").in_flight == 1
        assert config.device_list([]) == ["cpu"]
    finally:
        config.visible_gpus.cache_clear()


def test_a_listed_local_model_needs_its_table(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r'no \[local\.\\?"nope\\?"\] table'):
        load_settings(models={"t2i": ["local:nope"]})


@pytest.mark.parametrize(
    ("field", "value"), [("size", "big"), ("dtype", "int8"), ("batch", 0), ("colour", 1)]
)
def test_bad_local_fields_are_one_line(tmp_path: Path, monkeypatch, field, value) -> None:
    with pytest.raises(SettingsError) as err:
        _settings(tmp_path, monkeypatch, **{field: value})
    assert "\n" not in str(err.value).strip()


def test_missing_folder_says_what_to_put_where(tmp_path: Path) -> None:
    spec = LocalModel(path=str(tmp_path / "models" / "Qwen-Image"))
    with pytest.raises(ModelNotServed) as err:
        resolve_source("local:qwen-image", spec)
    text = str(err.value)
    assert "Qwen-Image does not exist" in text and "model_index.json" in text
    assert '[local."qwen-image"]' in text


def test_hub_id_is_looked_up_in_the_cache_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotServed, match="nor is it a hub id in the local HF cache"):
        resolve_source("local:q", LocalModel(path="Qwen/Qwen-Image"))
    # allowed to download: the id goes to the worker as is
    assert resolve_source("local:q", LocalModel(path="Qwen/Qwen-Image", allow_download=True)) == (
        "Qwen/Qwen-Image"
    )


def test_worker_specs_one_per_device(tmp_path: Path) -> None:
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    spec = LocalModel(path=str(folder), devices=["cuda:0", "cuda:1", "cpu"])
    specs = worker_specs("local:x", spec)
    assert [s.device for s in specs] == ["cuda:0", "cuda:1", "cpu"]
    assert [s.dtype for s in specs] == ["bfloat16", "bfloat16", "float32"]
    assert all(s.source == str(folder.resolve()) for s in specs)


def test_qwen_family_sizes_and_suffix() -> None:
    assert QWEN.cfg_arg == "true_cfg_scale" and QWEN.guidance == 4.0 and QWEN.negative == " "
    assert family_of("SomeOtherPipeline") is GENERIC
    # the model card's table, picked by the prompt's aspect ratio
    assert t2i_size(QWEN, "a poster, 16:9", "1328*1328", 16) == (1664, 928)
    assert t2i_size(QWEN, "竖版海报", "1328*1328", 16) == (928, 1664)
    assert t2i_size(QWEN, "a cat", "1328*1328", 16) == (1328, 1328)
    # the prompt as sent: the quality sentence follows the ratio's full stop
    assert t2i_size(QWEN, "a poster, 16:9. High quality", "1328*1328", 16) == (1664, 928)
    # another configured size: the named shape at its area, in the VAE's multiples
    w, h = t2i_size(QWEN, "wide 16:9", "512*512", 16)
    assert w % 16 == 0 and h % 16 == 0 and w > h
    assert with_suffix(QWEN, "a cat") == "a cat, Ultra HD, 4K, cinematic composition."
    assert with_suffix(QWEN, "一只猫").endswith("超清，4K，电影级构图.")
    once = with_suffix(QWEN, "a cat")
    assert with_suffix(QWEN, once) == once  # never twice


def test_edit_size_keeps_the_source_aspect() -> None:
    w, h = edit_size((1200, 800), "1024*1024", 16)
    assert w % 16 == 0 and h % 16 == 0
    assert abs(w / h - 1.5) < 0.05 and abs(w * h - 1024 * 1024) < 0.05 * 1024 * 1024


def test_doctor_lists_devices_and_local_folders(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("torch")
    from runner.doctor import check_local

    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    s = load_settings(
        models={"t2i": ["local:tiny"], "tie": ["local:gone"]},
        local={"tiny": {"path": str(folder), "devices": ["cpu"]}, "gone": {"path": "/no/where"}},
    )
    checks = {c.name: c for c in check_local(s)}
    assert set(checks) == {"devices", "local:tiny", "local:gone"}
    assert checks["devices"].detail.startswith("torch ")
    assert checks["local:tiny"].ok and "on cpu" in checks["local:tiny"].detail
    assert not checks["local:gone"].ok and "/no/where does not exist" in checks["local:gone"].detail
    assert not check_local(load_settings())  # nothing local: no lines


async def test_worker_answers_map_to_retry_or_row_failure(tmp_path: Path) -> None:
    import asyncio

    from runner.backends.local.pool import _Worker
    from runner.backends.local.worker import run_one
    from runner.errors import RowFailed, ServerError

    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (spec,) = worker_specs("local:x", LocalModel(path=str(folder), devices=["cpu"]))
    w = _Worker(spec, asyncio.get_running_loop())
    oom, bad, done = (asyncio.get_running_loop().create_future() for _ in range(3))
    w.pending.update({1: oom, 2: bad, 3: done})
    w._on_message(("error", 1, "oom", "OutOfMemoryError: CUDA out of memory"))
    w._on_message(("error", 2, "failed", "ValueError: bad prompt"))
    w._on_message(("done", 3, [b"png"]))
    with pytest.raises(ServerError, match="out of memory"):  # retried as a new attempt
        oom.result()
    with pytest.raises(RowFailed, match="bad prompt"):  # the row's own fault: not retried
        bad.result()
    assert done.result() == [b"png"] and not w.pending

    class Exploding:
        edits = True

        def edit(self, job):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    assert run_one(Exploding(), {})[0] == "oom"  # a Ray actor's answer, the same mapping
