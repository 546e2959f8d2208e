"""train.grad_checkpointing reaches a torchvision detector's backbone, with the same gradients."""

from __future__ import annotations

import pytest
import torch

from msfusion.engine.trainer import enable_grad_checkpointing
from msfusion.models.meta_arch.detector import build_detector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _loss(model) -> torch.Tensor:
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    return sum(model(images, targets).values())


def test_grad_checkpointing_reaches_the_detector_backbone_with_the_same_gradients():
    torch.manual_seed(0)
    model = build_detector(
        "fcos", backbone="test_mscan", neck="fpn", num_classes=3, neck_kwargs=dict(out_chs=32), min_size=64,
        max_size=64,
    ).train()  # fmt: skip
    _loss(model).backward()
    plain = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    enable_grad_checkpointing(model)
    assert model.backbone.backbone.grad_checkpointing
    _loss(model).backward()
    for key, param in model.named_parameters():
        if key in plain:
            torch.testing.assert_close(param.grad, plain[key], rtol=1e-5, atol=1e-6)


def test_a_detector_backbone_without_the_switch_is_named():
    class Plain(torch.nn.Module):
        feature_info = [dict(chs=8, reduction=s, module=f"s{s}") for s in (8, 16, 32)]

        def forward(self, x):
            return [torch.zeros(x.shape[0], 8, x.shape[2] // s, x.shape[3] // s) for s in (8, 16, 32)]

    model = build_detector("fcos", backbone=Plain(), neck="fpn", num_classes=3, neck_kwargs=dict(out_chs=32))
    with pytest.raises(ValueError, match="the detector's backbone Plain has no set_grad_checkpointing"):
        enable_grad_checkpointing(model)
