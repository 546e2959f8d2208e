"""DDP equivalence: 2 CPU processes (gloo) reach the same weights as 1 process with the same total batch.

Why the set-up below makes the two runs comparable (and what it does not test):

- BatchNorm: per-process batch statistics differ from whole-batch ones, and
  SyncBatchNorm has no CPU kernel, so the model runs with ``model.norm_eval``
  (BatchNorm frozen in eval mode, mmseg's ``norm_eval``). GroupNorm and
  LayerNorm are per image and need nothing.
- The NMF of the SegNeXt head draws random bases of shape (B*S, D, R) at every
  training call; one process draws them for 4 images, each of two processes
  for 2, so the draws cannot match. Both runs therefore use the head's fixed
  eval-mode bases in training too (patched below), a deterministic set-up.
- Dropout and drop path are off (random masks per process).
- Adam divides each gradient by its running RMS, which turns float-rounding
  noise on near-zero gradients into full-size steps of opposite sign; with
  ``eps=1`` the update is ``lr * m / (sqrt(v) + 1)``, about ``lr * grad`` for
  these gradients, so rounding stays rounding. The parameter groups (head lr
  x10, no decay for norms) are the official ones.
- Augmentation is drawn per (seed, epoch, image), hence identical; crops equal
  the image so no pixel is padded/ignored, and every image weighs the same in
  the mean loss, so DDP's average of per-rank means equals the global mean.

With that, rank r takes images ``batch[r::2]`` of each global batch of 4 and
the averaged gradient equals the single-process one up to float rounding.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _config(work_dir: str) -> dict:
    from msfusion.engine.config import load_config

    return load_config(
        None,
        [
            "model.name=test_segnext",
            "model.kwargs={dropout: 0.0, drop_path_rate: 0.0}",
            "model.norm_eval=true",
            "data.train={type: shapes, split: train, num_images: 12, image_size: 32}",
            "data.batch_size=4",
            "data.crop_size=[32, 32]",
            "data.scale=[32, 32]",
            "data.ratio_range=[1.0, 1.0]",
            "data.photometric=false",
            "data.num_workers=0",
            "optim.lr=0.02",
            "optim.eps=1.0",
            "schedule.iters=3",
            "schedule.warmup_iters=0",
            "train.eval_interval=0",
            "train.ckpt_interval=3",
            "train.progress=false",
            "train.tensorboard=false",
            "train.device=cpu",
            f"train.work_dir={work_dir}",
        ],
    )


def _deterministic_nmf() -> None:
    from msfusion.models.heads.ham import NMF2D

    def fixed_bases(self, batch, dim, device):
        return self.eval_bases.to(device).repeat(batch, 1, 1)

    NMF2D._bases = fixed_bases


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from msfusion.engine.trainer import train
    from msfusion.models.heads.ham import NMF2D

    monkeypatch.setattr(NMF2D, "_bases", NMF2D._bases)  # restored after the test
    _deterministic_nmf()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(_config(str(tmp_path / "one")))
    finally:
        torch.set_num_threads(old)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = load_file(tmp_path / "one" / "checkpoints" / "iter_0000003.safetensors")
    two = load_file(tmp_path / "two" / "checkpoints" / "iter_0000003.safetensors")
    worst = max((one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert worst < 1e-5, worst
    assert one.keys() == two.keys()
    # The runs did train: weights moved away from the initial ones (same seed, same model).
    from msfusion.registry import create_model

    torch.manual_seed(0)
    fresh = create_model("test_segnext", num_classes=7, dropout=0.0, drop_path_rate=0.0).state_dict()
    assert max((fresh[k] - one[k]).abs().max().item() for k in one if one[k].is_floating_point()) > 1e-3


if __name__ == "__main__":  # one rank of the DDP run (launched by torch.distributed.run above)
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    _deterministic_nmf()
    from msfusion.engine.trainer import train

    summary = train(_config(sys.argv[1]))
    assert summary["step"] == 3
