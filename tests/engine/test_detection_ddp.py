"""Detection under DDP: 2 CPU processes (gloo) reach the weights of 1 process with the same total batch.

The tiny RetinaNet on a tiny CEDNet pyramid has no BatchNorm (LayerNorm only)
and no dropout; RetinaNet's loss is a mean over images of per-image sums
divided by that image's foreground anchors, so DDP's average of per-rank
means is the global mean; Adam's ``eps=1`` keeps float-rounding noise from
becoming full steps (see tests/engine/test_ddp.py). The evaluation gathers every
rank's detections, so both processes report the metrics of the whole set.
"""

from __future__ import annotations

import json
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
            "task=detection",
            "model.name=test_retinanet_cednet",
            "model.kwargs={min_size: 64, max_size: 64}",
            "data.train={type: shapes, split: train, num_images: 8, image_size: 64, transforms: {kind: eval}}",
            "data.val={type: shapes, split: val, num_images: 3, image_size: 64}",
            "data.batch_size=4",
            "data.num_workers=0",
            "optim.lr=0.01",
            "optim.eps=1.0",
            "schedule.iters=2",
            "schedule.warmup_iters=0",
            "train.eval_interval=2",
            "train.ckpt_interval=2",
            "train.progress=false",
            "train.tensorboard=false",
            "train.device=cpu",
            f"train.work_dir={work_dir}",
        ],
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_detection_two_gloo_processes_match_one(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from msfusion.engine.trainer import train

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_summary = train(_config(str(tmp_path / "one")))
    finally:
        torch.set_num_threads(old)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = load_file(tmp_path / "one" / "checkpoints" / "iter_0000002.safetensors")
    two = load_file(tmp_path / "two" / "checkpoints" / "iter_0000002.safetensors")
    assert one.keys() == two.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert worst < 1e-5, worst
    ranks = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    assert ranks[0]["num_images"] == 3 == one_summary["metrics"]["num_images"]


if __name__ == "__main__":  # one rank of the DDP run (launched by torch.distributed.run above)
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    from msfusion.engine.trainer import train

    summary = train(_config(sys.argv[1]))
    metrics = summary["metrics"]
    print(json.dumps({"num_images": metrics["num_images"], "num_detections": metrics["num_detections"]}))
