"""Channels-last training on CPU: the layout choices made for speed compute the same function and gradients.

MSCA runs its strip branches contiguous on large maps; the loss reads channels-last logits as rows of classes.
"""

from __future__ import annotations

import copy

import torch

import msfusion
from msfusion.layers import msca


def test_channels_last_training_path_matches_the_default(monkeypatch):
    torch.manual_seed(0)
    module = msca.MSCA(8)
    fast = copy.deepcopy(module).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 64, 64)
    x_fast = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    x = x.requires_grad_()
    taken = []
    original = msca.MSCA._forward_strips_contiguous
    monkeypatch.setattr(msca.MSCA, "_forward_strips_contiguous", lambda self, *a: taken.append(1) or original(self, *a))

    out, out_fast = module(x), fast(x_fast)
    assert taken, "the channels-last training path was not taken at 64x64"
    assert out_fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_fast, out, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_fast.backward(grad)
    torch.testing.assert_close(x_fast.grad, x.grad, rtol=1e-4, atol=1e-5)
    for (name, p), p_fast in zip(module.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p.grad, rtol=1e-4, atol=1e-4, msg=name)

    with torch.no_grad():  # inference keeps the default path
        fast(x_fast)
    fast(torch.randn(1, 8, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_())  # so do small maps
    assert len(taken) == 1


def test_channels_last_segmentor_loss_matches_the_default():
    """A channels-last model's logits stay NHWC up to the loss, which reads them as rows of classes."""
    from msfusion.engine.segmentation import SegmentationTask

    torch.manual_seed(0)
    model = msfusion.create_model("test_segnext", num_classes=4).train()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64)
    batch = {"image": images, "mask": torch.randint(0, 4, (2, 64, 64))}
    batch["mask"][:, ::3, ::5] = 255
    fast_batch = {**batch, "image": images.contiguous(memory_format=torch.channels_last)}
    for avg_non_ignore in (True, False):
        task = SegmentationTask()
        task.avg_non_ignore = avg_non_ignore
        torch.manual_seed(1)
        loss, _ = task.loss(model.forward_train, batch)
        torch.manual_seed(1)
        fast_logits = fast.forward_train(fast_batch["image"])["logits"]
        assert fast_logits.is_contiguous(memory_format=torch.channels_last) and not fast_logits.is_contiguous()
        torch.manual_seed(1)
        fast_loss, _ = task.loss(fast.forward_train, fast_batch)
        torch.testing.assert_close(fast_loss, loss, rtol=1e-5, atol=1e-6)
        model.zero_grad()
        fast.zero_grad()
        loss.backward()
        fast_loss.backward()
        for (name, p), p_fast in zip(model.named_parameters(), fast.parameters(), strict=True):
            torch.testing.assert_close(p_fast.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
