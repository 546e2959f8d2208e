"""Freezing BatchNorm for detection backbones, as torchvision and the DETR codes do.

Shared by the torchvision detectors (``msfusion.models.meta_arch.detector``) and the
transformers DETRs (``msfusion.models.meta_arch.detr``).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["freeze_batch_norm"]


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by ``FrozenBatchNorm2d`` (statistics and affine fixed).

    torchvision does this to its ImageNet-initialised detection backbones
    (the batches of 1-2 images per GPU are too small for BatchNorm); the
    affine terms become buffers, so parameter counts drop accordingly.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                if child.track_running_stats and child.running_mean is not None:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module
