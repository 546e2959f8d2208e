"""Nothing lost, nothing wrong without a word: training runs, checkpoints, recipes and evaluation files.

Each test is one case a careless or hostile user hits, met where the user meets it (mostly the CLI).
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from msfusion.checkpoint import CheckpointError, save_checkpoint
from msfusion.cli import main
from msfusion.engine import checkpointing
from msfusion.engine.config import ConfigError, load_config

RECIPE = """\
model: {name: test_segnext}
data:
  train: {type: shapes, split: train, num_images: 8, image_size: 32}
  val: {type: shapes, split: val, num_images: 2, image_size: 32}
  batch_size: 4
  num_workers: 0
  crop_size: [32, 32]
  scale: [32, 32]
  eval_scale: null
optim: {lr: 1e-3}
schedule: {iters: 2, warmup_iters: 1}
train: {log_interval: 1, eval_interval: 2, ckpt_interval: 2, progress: false, tensorboard: false}
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def run(recipe, tmp_path_factory) -> Path:
    """A finished 2-step run (iter_0000002 + best), shared read-only; tests copy it to change it."""
    work = tmp_path_factory.mktemp("run") / "work"
    old = os.umask(0o022)
    try:
        torch.set_num_threads(1)
        assert main(["train", str(recipe), "--work-dir", str(work)]) == 0
    finally:
        os.umask(old)
    return work


def _copy(run: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(run, work)
    return work


# ---- 1. a new run never overwrites an old one ---------------------------------------------------------


def test_training_into_a_used_work_dir_is_refused_unless_resume_or_overwrite(recipe, run, tmp_path, capsys):
    work = _copy(run, tmp_path)
    best = (work / "checkpoints" / "best.safetensors").read_bytes()
    assert main(["train", str(recipe), "--work-dir", str(work)]) == 1
    err = capsys.readouterr().err
    assert "already holds a training run" in err
    assert "--resume" in err and "--work-dir" in err and "--overwrite" in err
    assert (work / "checkpoints" / "best.safetensors").read_bytes() == best  # untouched
    stale = work / "checkpoints" / "iter_0000001.safetensors"  # an older step that must not survive a restart
    shutil.copy(work / "checkpoints" / "iter_0000002.safetensors", stale)
    assert main(["train", str(recipe), "--work-dir", str(work), "--overwrite", "--set", "train.eval_interval=0"]) == 0
    names = {p.name for p in (work / "checkpoints").iterdir()}
    assert "iter_0000002.safetensors" in names and not stale.exists() and "best.safetensors" not in names
    assert main(["train", str(recipe), "--work-dir", str(work), "--resume", "--overwrite"]) == 2


# ---- 2. a damaged latest.json never restarts from step 0 ----------------------------------------------


def test_resume_without_a_readable_latest_json_uses_the_newest_complete_checkpoint(recipe, tmp_path, capsys):
    work = tmp_path / "work"
    args = ["train", str(recipe), "--work-dir", str(work), "--set", "train.eval_interval=0"]
    assert main([*args, "--set", "schedule.iters=4", "--set", "train.ckpt_interval=1"]) == 0
    folder = work / "checkpoints"
    (folder / "latest.json").write_text('{"step": 4, "weigh')  # damaged
    (folder / "iter_0000004.state.pt").write_bytes(b"truncated")  # and the newest step incomplete
    kept = checkpointing.load_training_state(folder / "iter_0000003.state.pt")["history"]
    with pytest.warns(UserWarning, match=r"damaged.*iter_0000003\.safetensors"):
        assert main([*args, "--set", "schedule.iters=5", "--resume"]) == 0
    state = checkpointing.load_training_state(folder / "iter_0000005.state.pt")
    assert [h["step"] for h in state["history"]] == [1, 2, 3, 4, 5]
    assert state["history"][:3] == kept  # steps 1-3 come from the checkpoint (same timings), not a restart
    (folder / "latest.json").unlink()  # the old advice: delete it. Resume still finds step 5.
    assert checkpointing.latest_checkpoint(work)[0].name == "iter_0000005.safetensors"
    for path in folder.glob("iter_*"):
        path.unlink()
    (folder / "best.json").write_text("{}")
    (folder / "best.safetensors").write_bytes(b"weights of an earlier run")
    assert main([*args, "--resume"]) == 1  # only best.* is left: starting over would overwrite it
    assert "cannot resume" in capsys.readouterr().err
    assert (folder / "best.safetensors").read_bytes() == b"weights of an earlier run"


# ---- 3. non-finite weights are never kept as good; recipes reject non-finite numbers ------------------


def test_non_finite_weights_stop_training_before_they_are_saved(recipe, tmp_path, monkeypatch):
    from msfusion.engine.trainer import NonFiniteLossError, Trainer, train

    real_step = Trainer.train_step

    def poisoned(self, batches):
        logs = real_step(self, batches)
        if self.step == 2:  # the update of step 2 blows up a weight; the loss of step 2 was finite
            next(self.model.parameters()).data.fill_(float("inf"))
        return logs

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    work = tmp_path / "work"
    with pytest.raises(NonFiniteLossError, match=r"weights became NaN or infinite by step 2.*iter_0000001"):
        train(load_config(recipe, ["train.ckpt_interval=1", f"train.work_dir={work}"]))
    folder = work / "checkpoints"
    assert json.loads((folder / "latest.json").read_text())["step"] == 1
    assert not list(folder.glob("iter_0000002*")) and not (folder / "best.safetensors").exists()
    assert all(torch.isfinite(t).all() for t in load_file(folder / "iter_0000001.safetensors").values())


def test_recipes_reject_non_finite_numbers(recipe, capsys):
    assert main(["train", str(recipe), "--set", "optim.lr=.inf"]) == 2
    assert "optim.lr is inf, which is not a finite number" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"model.kwargs.drop_path_rate is nan"):
        load_config(recipe, ["model.kwargs={drop_path_rate: .nan}"])


# ---- 4. a full disk during a checkpoint write -----------------------------------------------------------


def test_disk_full_while_writing_a_checkpoint_names_both_files_and_cleans_up(
    recipe, run, tmp_path, capsys, monkeypatch
):
    work = _copy(run, tmp_path)

    def full_disk(path, data):
        Path(path).write_bytes(bytes(data[:64]))  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing, "_write_bytes", full_disk)
    args = ["train", str(recipe), "--work-dir", str(work), "--resume", "--set", "schedule.iters=4"]
    assert main(args) == 1
    err = capsys.readouterr().err
    folder = work / "checkpoints"
    assert f"no space left while writing {folder / 'iter_0000004.state.pt'}" in err
    assert f"the previous checkpoint {folder / 'iter_0000002.safetensors'} is intact" in err
    assert "Traceback" not in err
    assert not list(folder.glob(".*.tmp")) and not list(folder.glob("iter_0000004*"))
    assert json.loads((folder / "latest.json").read_text())["step"] == 2


def test_a_file_size_limit_on_the_weights_write_keeps_the_previous_checkpoint(tmp_path):
    model = nn.Linear(64, 64)  # 16 KiB of weights
    first = checkpointing.save_training_checkpoint(tmp_path, 1, model, {"history": []})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(CheckpointError, match=r"file-size limit was reached while writing .*iter_0000002") as info:
            checkpointing.save_training_checkpoint(tmp_path, 2, model, {"history": []})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    message = str(info.value)  # named as what it is (not "no space left"), with the fix
    assert "ulimit -f" in message and "no space left" not in message
    assert f"the previous checkpoint {first} is intact" in message
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "iter_0000001.json",
        "iter_0000001.safetensors",
        "iter_0000001.state.pt",
        "latest.json",
    ]


# ---- 8. optimiser settings changed on resume are applied, not only recorded ---------------------------


def test_resume_applies_a_changed_learning_rate_and_weight_decay(recipe, run, tmp_path, capsys):
    work = _copy(run, tmp_path)
    args = ["train", str(recipe), "--work-dir", str(work), "--resume", "--set", "schedule.iters=4"]
    assert main([*args, "--set", "optim.lr=1e-2", "--set", "optim.weight_decay=0.05"]) == 0
    assert "new optimiser settings: lr, weight_decay" in capsys.readouterr().out
    state = checkpointing.load_training_state(work / "checkpoints" / "iter_0000004.state.pt")
    lrs = {h["step"]: h["lr"] for h in state["history"]}
    assert lrs[3] == pytest.approx(1e-2 * (1 - 2 / 4))  # poly from the new base lr
    groups = state["optimizer"]["param_groups"]
    assert {g["weight_decay"] for g in groups} <= {0.05, 0.0} and any(g["weight_decay"] == 0.05 for g in groups)
    assert "lr: 0.01" in (work / "config.yaml").read_text()


# ---- 9. each evaluation writes its own file and says what it measured ---------------------------------


def test_evaluations_in_other_modes_keep_their_own_files(recipe, run, tmp_path):
    ckpt = str(run / "checkpoints" / "best.safetensors")
    base = ["eval", str(recipe), "--checkpoint", ckpt, "--out", str(tmp_path), "--no-progress"]
    assert main(base) == 0
    assert main([*base, "--mode", "slide", "--set", "eval.crop_size=[24,24]", "--set", "eval.stride=[16,16]"]) == 0
    whole = json.loads((tmp_path / "best_eval_whole.json").read_text())
    slide = json.loads((tmp_path / "best_eval_slide.json").read_text())
    assert whole["eval"] == {"mode": "whole", "tta": False}
    assert slide["eval"] == {"mode": "slide", "tta": False, "crop_size": [24, 24], "stride": [16, 16]}
    assert whole["checkpoint"] == slide["checkpoint"] == str(Path(ckpt).resolve())


# ---- 10. a pretrained file of another family -----------------------------------------------------------


def test_a_pretrained_file_of_another_family_is_refused_with_a_short_summary(recipe, tmp_path, capsys):
    import msfusion as mf
    from msfusion.weights import load_pretrained

    other = save_checkpoint(mf.create_model("test_upernet_cednet", num_classes=7), tmp_path / "other.safetensors")
    args = ["train", str(recipe), "--work-dir", str(tmp_path / "w"), "--set", f"model.pretrained={other}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert re.search(r"loaded \d of \d+ model tensors \(\d%\)", err) and "model.pretrained_partial: true" in err
    assert len(err.splitlines()) == 1 and len(err) < 1000  # one paragraph, not a table of every key
    model = mf.create_model("test_segnext", num_classes=7)
    summary = str(load_pretrained(model, other, partial=True))
    assert re.search(r"loaded \d of", summary)
    own = save_checkpoint(mf.create_model("test_segnext", num_classes=3), tmp_path / "own.safetensors")
    summary = str(load_pretrained(model, own))  # fine-tuning to another class count: the head differs
    assert "decode_head.conv_seg.weight" in summary and "another shape in the head" in summary


# ---- 11. bad numbers in recipes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.warmup_iters=-3", "schedule.warmup_iters must be a non-negative integer"),
        ("train.eval_interval=-2", "train.eval_interval must be a non-negative integer"),
        ('train.ckpt_interval="4"', "'4' (a string: write the value without quotes)"),
        ("data.crop_size=64", "data.crop_size must be a pair of positive integers, got 64; write e.g. [64, 64]"),
        ("eval.stride=[600,600]", "leave pixels uncovered"),
    ],
)
def test_bad_recipe_values_are_named_with_the_fix(recipe, override, message, capsys):
    assert main(["train", str(recipe), "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_float_yaml_reads_as_a_string_is_accepted(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim: {lr: 1e-3, weight_decay: 5e-2}\n")  # YAML 1.1: no dot, so both are strings
    cfg = load_config(path)
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["weight_decay"] == 0.05


# ---- 12. no raw tracebacks -------------------------------------------------------------------------------


def test_work_dir_that_is_a_file_and_unknown_model_kwargs_are_named(recipe, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["train", str(recipe), "--work-dir", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    args = ["train", str(recipe), "--work-dir", str(tmp_path / "w"), "--set", "model.kwargs={colour: 3}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "create_model('test_segnext')" in err and "colour" in err and "Traceback" not in err


def test_checkpoint_paths_and_class_counts_are_checked_with_the_fix(recipe, run, tmp_path, capsys):
    base = ["eval", str(recipe), "--no-progress", "--out", str(tmp_path)]
    assert main([*base, "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors: no such file" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(run / "checkpoints")]) == 2
    assert "is a folder; pass the checkpoint file inside it; it holds best.safetensors" in capsys.readouterr().err
    # A sidecar with a keyword the model does not take: named, not a TypeError from a constructor.
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("best.safetensors", "best.json"):
        shutil.copy(run / "checkpoints" / name, ckpt / name)
    meta = json.loads((ckpt / "best.json").read_text())
    meta["model"]["kwargs"]["colour"] = 3
    (ckpt / "best.json").write_text(json.dumps(meta))
    images = tmp_path / "img"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (20, 20)).save(images / "a.png")
    assert main(["predict", "--checkpoint", str(ckpt / "best.safetensors"), str(images), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "best.safetensors" in err and "colour" in err and "Traceback" not in err
    # A dataset with another class count: the hint names CLI options, and --no-strict is offered.
    folder = tmp_path / "two"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "classes.yaml").write_text("names: [background, thing]\n")
    Image.new("RGB", (20, 20)).save(folder / "images" / "a.png")
    Image.fromarray(__import__("numpy").eye(20, dtype="uint8")).save(folder / "masks" / "a.png")
    two = ["--set", f"data.val={{type: folder, root: {folder}}}"]
    good = str(run / "checkpoints" / "best.safetensors")
    assert main([*base, "--checkpoint", good, *two]) == 2
    err = capsys.readouterr().err
    assert "trained for 7 classes but data.val has 2" in err and "--no-strict" in err
    with pytest.warns(UserWarning, match="dropped"):
        assert main([*base, "--checkpoint", good, "--no-strict", *two]) == 0


# ---- 13. checkpoints follow the user's umask --------------------------------------------------------------


def test_checkpoints_are_written_with_the_users_umask(run):
    for name in ("best.safetensors", "best.json", "iter_0000002.state.pt", "latest.json"):
        assert (run / "checkpoints" / name).stat().st_mode & 0o777 == 0o644, name
