"""Small modules that several test files build on, defined once.

Test files import them as ``from helpers import TinyBackbone``: ``tests/``
holds the root ``conftest.py`` and no ``__init__.py``, so pytest puts it on
``sys.path`` before it collects any test file.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyBackbone", "tiny_detection_recipe"]


class TinyBackbone(nn.Module):
    """Four strided convs: strides 4, 8, 16, 32 with 8, 16, 24, 32 channels (the feature contract).

    ``forward`` maps a (B, 3, H, W) image to four maps (B, C_i, H / s_i, W / s_i),
    finest first, described by ``feature_info`` (``chs``, ``reduction``,
    ``module`` per map), as every registered backbone's ``features_only``
    form does: enough for a detector to build, train and export in a test.
    """

    def __init__(self) -> None:
        super().__init__()
        chs = (8, 16, 24, 32)
        self.stem = nn.Conv2d(3, chs[0], 4, stride=4)
        self.stages = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chs, chs[1:], strict=False))
        self.feature_info = [dict(chs=c, reduction=4 * 2**i, module=f"s{i}") for i, c in enumerate(chs)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [torch.relu(self.stem(x))]
        for stage in self.stages:
            feats.append(torch.relu(stage(feats[-1])))
        return feats


def tiny_detection_recipe(model: dict, work_dir: str, iters: int) -> dict:
    """A detection recipe that trains ``model`` (the recipe's ``model`` section) on 64x64 shapes in seconds.

    Four training and two held-out images, batch 2, a checkpoint every step and one
    evaluation after the last: enough to train, resume, evaluate and predict in a test.
    """
    shapes = {"type": "shapes", "image_size": 64, "seed": 0}
    return {
        "task": "detection",
        "model": model,
        "data": {"train": dict(shapes, split="train", num_images=4), "val": dict(shapes, split="val", num_images=2),
                 "batch_size": 2, "num_workers": 0},
        "optim": {"lr": 1.0e-4},
        "schedule": {"iters": iters, "warmup_iters": 1},
        "train": {"work_dir": work_dir, "eval_interval": iters, "ckpt_interval": 1,
                  "log_interval": 1, "progress": False, "tensorboard": False},
    }  # fmt: skip
