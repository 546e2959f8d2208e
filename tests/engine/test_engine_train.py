"""The training loop: loss goes down, exact resume, NaN stop, atomic checkpoints, wrong-model resume."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from msfusion.checkpoint import CheckpointError
from msfusion.engine import checkpointing
from msfusion.engine.config import load_config
from msfusion.engine.segmentation import SegmentationTask
from msfusion.engine.trainer import NonFiniteLossError, StepBatches, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def tiny_config(work_dir: Path, *extra: str) -> dict:
    return load_config(
        None,
        [
            "model.name=test_segnext",
            "data.train={type: shapes, split: train, num_images: 16, image_size: 48}",
            "data.val={type: shapes, split: val, num_images: 2, image_size: 48}",
            "data.batch_size=4",
            "data.crop_size=[32, 32]",
            "data.scale=[48, 48]",
            "data.ratio_range=[0.75, 1.25]",
            "data.eval_scale=null",
            "data.num_workers=0",
            "optim.lr=2e-3",
            "schedule.iters=4",
            "schedule.warmup_iters=1",
            "train.log_interval=1",
            "train.eval_interval=0",
            "train.ckpt_interval=2",
            "train.progress=false",
            "train.tensorboard=false",
            f"train.work_dir={work_dir}",
            *extra,
        ],
    )


def test_step_batches_deal_global_batches_to_ranks():
    one = StepBatches(16, 4, 1, 0, 1, seed=3)
    ranks = [StepBatches(16, 4, 1, r, 2, seed=3) for r in range(2)]
    for batch, a, b in zip(one, *ranks, strict=True):
        assert sorted(batch) == sorted(a + b)
    accum = StepBatches(16, 4, 2, 0, 1, seed=3)
    flat = [i for micro in accum for i in micro]
    assert flat == [i for batch in one for i in batch]
    one.set_position(1, 2)  # epoch 1, from step 2: a different permutation, two steps left
    assert len(list(one)) == 2
    with pytest.raises(ValueError, match="divisible"):
        StepBatches(16, 4, 3, 0, 1, seed=0)


def test_a_few_steps_reduce_the_loss(tmp_path):
    # One fixed batch, repeated: the loss must fall clearly.
    cfg = tiny_config(tmp_path, "schedule.iters=12", "train.ckpt_interval=0", "data.train.num_images=4",
                      "schedule.warmup_iters=0", "optim.lr=3e-3")  # fmt: skip
    summary = train(cfg)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    train(tiny_config(full, "train.keep_checkpoints=5"))
    ckpts = full / "checkpoints"
    # Rebuild the state of a run interrupted right after step 2.
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    for f in ckpts.glob("iter_0000002*"):
        shutil.copy(f, part / "checkpoints" / f.name)
    pointer = {"step": 2, "weights": "iter_0000002.safetensors", "state": "iter_0000002.state.pt"}
    (part / "checkpoints" / "latest.json").write_text(json.dumps(pointer))
    summary = train(tiny_config(part), resume=True)
    assert summary["step"] == 4
    expected = load_file(ckpts / "iter_0000004.safetensors")
    got = load_file(part / "checkpoints" / "iter_0000004.safetensors")
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    assert [h["loss"] for h in summary["history"]] == pytest.approx([h["loss"] for h in train_history(full)])


def train_history(work_dir: Path) -> list:
    state = checkpointing.load_training_state(work_dir / "checkpoints" / "iter_0000004.state.pt")
    return state["history"]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_loss = SegmentationTask.loss
    calls = {"n": 0}

    def poisoned(self, forward, batch):
        calls["n"] += 1
        loss, logs = real_loss(self, forward, batch)
        return (loss * float("nan"), logs) if calls["n"] == 3 else (loss, logs)

    monkeypatch.setattr(SegmentationTask, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"at step 3\b.*iter_0000002"):
        train(tiny_config(tmp_path))
    pointer = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == 2
    load_file(tmp_path / "checkpoints" / pointer["weights"])  # intact


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    real_write = checkpointing._write_bytes
    calls = {"n": 0}

    def failing_write(path, data):
        calls["n"] += 1
        if calls["n"] == 2:  # the state file of step 4: write half, then the disk "fills up"
            Path(path).write_bytes(bytes(data[:100]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(checkpointing, "_write_bytes", failing_write)
    with pytest.raises(CheckpointError, match="no space left while writing .*iter_0000004.state.pt"):
        train(tiny_config(tmp_path))
    folder = tmp_path / "checkpoints"
    assert json.loads((folder / "latest.json").read_text())["step"] == 2
    assert not list(folder.glob("*.tmp")) and not (folder / "iter_0000004.state.pt").exists()
    monkeypatch.undo()
    assert train(tiny_config(tmp_path), resume=True)["step"] == 4  # resumable from step 2


def test_resume_from_another_models_checkpoint_is_refused(tmp_path):
    train(tiny_config(tmp_path, "schedule.iters=2"))
    other = tiny_config(tmp_path, "schedule.iters=4", "model.kwargs={channels: 64}")
    with pytest.raises(CheckpointError, match="this recipe builds"):
        train(other, resume=True)


def test_bad_mask_values_are_named(tmp_path):
    task = SegmentationTask()
    forward = lambda images: {"logits": torch.zeros(1, 3, 4, 4, requires_grad=True)}  # noqa: E731
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, 0, 0] = 7
    mask[0, 0, 1] = 255
    with pytest.raises(ValueError, match=r"\[7\].*outside \[0, 3\).*img.png"):
        task.loss(forward, {"image": torch.zeros(1, 3, 4, 4), "mask": mask, "path": ["img.png"]})


def test_resume_with_more_iterations_follows_the_new_schedule(tmp_path):
    train(tiny_config(tmp_path, "schedule.iters=2"))  # ends with lr 0 (poly reaches the end)
    summary = train(tiny_config(tmp_path, "schedule.iters=4"), resume=True)
    lrs = {h["step"]: h["lr"] for h in summary["history"]}
    assert summary["step"] == 4 and lrs[3] == pytest.approx(2e-3 * (1 - 2 / 4))


@pytest.mark.parametrize("avg_non_ignore", [True, False])
def test_cross_entropy_denominator_follows_avg_non_ignore(avg_non_ignore):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    mask = torch.randint(0, 3, (2, 4, 4))
    mask[0, :2] = 255  # 8 of 32 pixels ignored
    task = SegmentationTask()
    task.avg_non_ignore = avg_non_ignore
    loss, _ = task.loss(lambda images: {"logits": logits}, {"image": None, "mask": mask})
    # By hand: -log p(label) summed over labelled pixels, over 24 labelled (PyTorch) or all 32 (mmseg) pixels.
    log_p = logits.log_softmax(1).permute(0, 2, 3, 1)[mask != 255]
    nll = -log_p.gather(1, mask[mask != 255][:, None]).sum()
    assert loss.item() == pytest.approx((nll / (24 if avg_non_ignore else 32)).item(), rel=1e-6)


def test_paper_recipes_average_over_all_pixels_like_the_official_trainings():
    configs = Path(__file__).resolve().parents[2] / "configs"
    paper = [
        p for p in configs.glob("*.yaml") if p.name.startswith(("segnext_", "topformer_", "upernet_", "semantic_fpn_"))
    ]
    assert len(paper) >= 20
    assert all(load_config(p)["train"]["avg_non_ignore"] is False for p in paper)
    assert load_config(configs / "demo_shapes.yaml")["train"]["avg_non_ignore"] is True
