"""run.json records what a run ran on (git commit, library versions, device model, threads); resume says its step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from msfusion.engine.config import load_config
from msfusion.engine.trainer import git_commit, train, write_run_record

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def test_git_commit_inside_and_outside_a_checkout(tmp_path):
    assert git_commit(tmp_path) is None  # not a git folder: no error, no commit
    here = git_commit(Path(__file__).parent)
    if here is not None:  # the tests run from a checkout (a wheel install has none)
        assert re.fullmatch(r"[0-9a-f]{40}", here["commit"]) and isinstance(here["dirty"], bool)


def test_run_record_names_versions_device_and_threads(tmp_path):
    import numpy
    import torchvision

    cfg = load_config(None, ["model.name=test_segnext"])
    write_run_record(tmp_path / "run.json", cfg, torch.device("cpu"), 1)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["torchvision"] == torchvision.__version__ and record["numpy"] == numpy.__version__
    assert record["threads"] == torch.get_num_threads() == 1
    assert record["cpu"] and record["device"] == f"cpu ({record['cpu']})" and record["gpu"] is None
    assert "git" in record and record["config"]["model"]["name"] == "test_segnext"


def test_a_resumed_run_says_from_which_step(tmp_path, capsys):
    overrides = [
        "model.name=test_segnext",
        "data.train={type: shapes, split: train, num_images: 4, image_size: 32}",
        "data.batch_size=2",
        "data.crop_size=[32, 32]",
        "data.scale=[32, 32]",
        "data.num_workers=0",
        "schedule.warmup_iters=0",
        "train.eval_interval=0",
        "train.ckpt_interval=1",
        "train.progress=false",
        "train.tensorboard=false",
        f"train.work_dir={tmp_path / 'run'}",
    ]
    train(load_config(None, [*overrides, "schedule.iters=1"]))
    capsys.readouterr()
    summary = train(load_config(None, [*overrides, "schedule.iters=2"]), resume=True)
    assert summary["step"] == 2
    out = capsys.readouterr().out
    assert re.search(r"^resumed from step 1 \(.*iter_0000001\.safetensors\)$", out, re.MULTILINE), out
