"""The trainer measures how long each step waits for data (the loader's share of step time)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from msfusion.data import ShapesDataset
from msfusion.engine.config import load_config
from msfusion.engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def test_data_wait_is_logged_per_interval_and_summarised(tmp_path: Path, monkeypatch, capsys) -> None:
    delay = 0.02  # seconds per sample, so a batch of 4 keeps the step waiting >= 80 ms
    original = ShapesDataset.__getitem__

    def slow_getitem(self, index):
        time.sleep(delay)
        return original(self, index)

    monkeypatch.setattr(ShapesDataset, "__getitem__", slow_getitem)
    cfg = load_config(
        None,
        [
            "model.name=test_segnext",
            "data.train={type: shapes, split: train, num_images: 8, image_size: 32}",
            "data.val={type: shapes, split: val, num_images: 2, image_size: 32}",
            "data.batch_size=4",
            "data.crop_size=[32, 32]",
            "data.scale=[32, 32]",
            "data.eval_scale=null",
            "data.num_workers=0",
            "schedule.iters=3",
            "schedule.warmup_iters=1",
            "train.log_interval=2",
            "train.eval_interval=0",
            "train.ckpt_interval=0",
            "train.progress=false",
            "train.tensorboard=false",
            f"train.work_dir={tmp_path}",
        ],
    )
    summary = train(cfg)
    records = summary["history"]
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert 4 * delay <= record["data_time"] <= record["step_time"]
    assert summary["data_wait_s"] >= 3 * 4 * delay
    assert 0 < summary["data_wait_share"] <= 1
    assert summary["data_wait_share"] == pytest.approx(summary["data_wait_s"] / summary["step_time_s"])
    out = capsys.readouterr().out
    assert all(" data 0." in line for line in out.splitlines() if line.startswith("step "))
    assert f"({100 * summary['data_wait_share']:.1f} %; data.num_workers=0)" in out
