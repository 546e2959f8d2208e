"""Registry-wide tests (STYLE.md): every registered model, on small inputs.

Forward (shape, finite), backward (every parameter gets a gradient),
``features_only`` channels and strides equal ``feature_info``, odd input sizes.
Models above ``REAL_LIMIT`` parameters run on the meta device: shapes, autograd
wiring and gradient coverage are checked without the compute, so the suite stays
fast on 2 CPU cores; their numerics are covered by the tiny ``test_*`` variants
that share their code.
"""

import functools

import pytest
import torch

import msfusion as mf
from msfusion.models.segmentor import Segmentor

ALL = mf.list_models(include_test=True)
REAL_LIMIT = 6_000_000


@functools.cache
def _meta_info(name):
    with torch.device("meta"):
        model = mf.create_model(name)
    return mf.count_params(model), isinstance(model, Segmentor)


def _device(name):
    return torch.device("cpu") if _meta_info(name)[0] <= REAL_LIMIT else torch.device("meta")


def _build(name, **kwargs):
    with _device(name):
        return mf.create_model(name, **kwargs)


def _train_outputs(model, x):
    """Every output a training step uses (auxiliary and deep-supervision heads included)."""
    if isinstance(model, Segmentor):
        out = model.forward_train(x)
        return [out["logits"], *out.get("aux_logits", [])]
    if hasattr(model, "forward_train"):
        out = model.forward_train(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]
    out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name):
    device = _device(name)
    model = _build(name).train()
    x = torch.randn(2, 3, 64, 64, device=device)
    outs = _train_outputs(model, x)
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    model.eval()
    with torch.no_grad():
        y = model(x)
    if isinstance(model, Segmentor):
        assert y.shape == (2, model.num_classes, 64, 64)
    else:
        assert y.shape[0] == 2 and y.dim() == 2
    if device.type != "meta":
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_odd_input_size(name):
    model = _build(name).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 97, 131, device=_device(name)))
    if isinstance(model, Segmentor):
        assert y.shape == (1, model.num_classes, 97, 131)
    else:
        assert y.shape[0] == 1 and y.dim() == 2


@pytest.mark.parametrize("name", [n for n in ALL if not _meta_info(n)[1]])
def test_features_only_matches_feature_info(name):
    device = _device(name)
    backbone = _build(name, features_only=True).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 128, 128, device=device))
    assert isinstance(feats, list) and len(feats) == len(backbone.feature_info)
    for f, info in zip(feats, backbone.feature_info, strict=True):
        assert f.shape[1] == info["chs"]
        assert 128 // f.shape[-1] == info["reduction"]
    chans = [i["chs"] for i in backbone.feature_info]
    last = _build(name, features_only=True, out_indices=(-1,))
    assert [i["chs"] for i in last.feature_info] == chans[-1:]
