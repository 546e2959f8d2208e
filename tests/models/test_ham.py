"""The Hamburger head: NMF semantics, eval determinism, the official random mode."""

import pytest
import torch
import torch.nn.functional as F

import msfusion as mf
from msfusion.models.heads.ham import NMF2D


def _reference_nmf(x, rank, steps, inv_t=1.0):
    """The official NMF2D algorithm written out from the released SegNeXt code, step by step."""
    b, c, h, w = x.shape
    x = x.view(b, c, h * w)
    bases = F.normalize(torch.rand((b, c, rank)).to(x.device), dim=1)
    coef = F.softmax(inv_t * torch.bmm(x.transpose(1, 2), bases), dim=-1)

    def coef_step(bases, coef):
        return coef * torch.bmm(x.transpose(1, 2), bases) / (coef.bmm(bases.transpose(1, 2).bmm(bases)) + 1e-6)

    for _ in range(steps):
        coef = coef_step(bases, coef)
        bases = bases * torch.bmm(x, coef) / (bases.bmm(coef.transpose(1, 2).bmm(coef)) + 1e-6)
    coef = coef_step(bases, coef)
    return torch.bmm(bases, coef.transpose(1, 2)).view(b, c, h, w)


@pytest.mark.parametrize("training, steps", [(True, 6), (False, 7)])
def test_random_mode_draws_exactly_like_the_official_code(training, steps):
    x = torch.rand(2, 16, 5, 7)
    nmf = NMF2D(16, rank=4, random_eval=True).train(training)
    torch.manual_seed(123)
    ours = nmf(x)
    torch.manual_seed(123)
    reference = _reference_nmf(x, rank=4, steps=steps)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_eval_is_deterministic_by_default_and_batch_independent():
    model = mf.create_model("test_segnext").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model(x)
        torch.manual_seed(999)
        b = model(x)
        single = model(x[1:])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a[1:], single, rtol=1e-5, atol=1e-5)


def test_official_random_eval_differs_between_calls():
    model = mf.create_model("test_segnext", ham_random_eval=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_training_draws_fresh_bases():
    nmf = NMF2D(8, rank=2).train()
    x = torch.rand(1, 8, 4, 4)
    assert not torch.equal(nmf(x), nmf(x))


def test_gradients_flow_through_all_nmf_steps():
    # No one-step gradient (as the released code): d out / d x includes the iterations.
    x = torch.rand(1, 8, 4, 4, requires_grad=True)
    nmf = NMF2D(8, rank=2, eval_steps=3).eval()
    nmf(x).sum().backward()
    full = x.grad.clone()
    x.grad = None
    with torch.no_grad():
        detached_bases = nmf.eval_bases.clone()
    assert full.abs().sum() > 0
    # A one-step gradient would equal the gradient of the final reconstruction alone; ours differs.
    xs = x.detach().clone().requires_grad_(True)
    with torch.no_grad():
        b = detached_bases
        flat = x.detach().view(1, 8, 16)
        coef = F.softmax(torch.bmm(flat.transpose(1, 2), b), dim=-1)
        for _ in range(3):
            coef = coef * torch.bmm(flat.transpose(1, 2), b) / (coef.bmm(b.transpose(1, 2).bmm(b)) + 1e-6)
            b = b * torch.bmm(flat, coef) / (b.bmm(coef.transpose(1, 2).bmm(coef)) + 1e-6)
    flat_s = xs.view(1, 8, 16)
    coef_last = coef * torch.bmm(flat_s.transpose(1, 2), b) / (coef.bmm(b.transpose(1, 2).bmm(b)) + 1e-6)
    torch.bmm(b, coef_last.transpose(1, 2)).sum().backward()
    assert not torch.allclose(full, xs.grad, rtol=1e-3, atol=1e-6)


def test_no_nmf_state_in_checkpoints():
    model = mf.create_model("segnext_t")
    assert not any("bases" in k for k in model.state_dict())


def test_head_selection_by_stride():
    model = mf.create_model("test_segnext", in_strides=(32,)).eval()
    assert model.decode_head.squeeze.conv.in_channels == 32
    # The positional form is gone: heads read maps by stride only.
    with pytest.raises(ValueError, match="in_index"):
        mf.create_model("test_segnext", in_index=(3,))
    with pytest.raises(ValueError, match=r"strides \[4, 8, 16, 32\]"):
        mf.create_model("test_segnext", in_strides=(64,))
    model = mf.create_model("test_segnext", in_strides=(4, 8, 16, 32)).eval()
    assert model.decode_head.squeeze.conv.in_channels == 8 + 16 + 24 + 32
    assert model(torch.randn(1, 3, 40, 56)).shape == (1, 5, 40, 56)
