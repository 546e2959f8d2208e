"""Registry-wide tests: every registered name, by kind, on small inputs.

Whole models (backbones, classifiers, segmentors): forward (shape, finite),
backward (every parameter gets a gradient), ``features_only`` channels and
strides equal ``feature_info`` (strictly finest first), odd input sizes,
``num_classes`` of classifiers. Parts (necks, add-ons, heads): built on a
four-level ``feature_info`` (strides 4-32), forward and backward at an odd size.
Detectors have their own suite (tests/models/test_detection.py, tests/models/test_detr.py, tests/models/test_yolo.py).
Models above ``REAL_LIMIT`` parameters run on the meta device: shapes, autograd
wiring and gradient coverage are checked without the compute, so the suite stays
fast on 2 CPU cores; their numerics are covered by the tiny ``test_*`` variants
that share their code.
"""

import functools

import pytest
import torch

import msfusion as mf
from msfusion.models.meta_arch.segmentor import Segmentor

MODEL_KINDS = ("backbone", "classifier", "segmentor")
# list_models(kind="backbone") also lists the classifiers (their features_only form): each name once.
ALL = list(dict.fromkeys(n for kind in MODEL_KINDS for n in mf.list_models(kind=kind, include_test=True)))
PARTS = [(n, kind) for kind in ("neck", "addon", "head") for n in mf.list_models(kind=kind, include_test=True)]
REAL_LIMIT = 6_000_000
PART_INFO = [
    dict(chs=c, reduction=r, module=f"stage{i}") for i, (c, r) in enumerate([(16, 4), (24, 8), (32, 16), (48, 32)])
]


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
    strides = [info["reduction"] for info in backbone.feature_info]
    assert strides == sorted(set(strides)), "feature_info must be strictly finest first"
    for f, info in zip(feats, backbone.feature_info, strict=True):
        assert f.shape[1] == info["chs"]
        assert 128 // f.shape[-1] == info["reduction"]
        assert isinstance(info.get("module"), str) and info["module"]
    chans = [i["chs"] for i in backbone.feature_info]
    last = _build(name, features_only=True, out_indices=(-1,))
    assert [i["chs"] for i in last.feature_info] == chans[-1:]


@pytest.mark.parametrize("name", [n for n in ALL if mf.model_kind(n) == "classifier"])
def test_classifier_num_classes(name):
    with torch.device("meta"):
        model = mf.create_model(name, num_classes=7)
        y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 7)


@pytest.mark.parametrize("name", [n for n in ALL if mf.model_kind(n) == "segmentor"])
def test_segmentor_refuses_features_only_and_names_its_backbone(name):
    with pytest.raises(ValueError, match="is a segmentor"):
        mf.create_model(name, features_only=True)


def _part_inputs(batch=2):
    h, w = 97, 131
    return [torch.randn(batch, i["chs"], -(-h // i["reduction"]), -(-w // i["reduction"])) for i in PART_INFO]


@pytest.mark.parametrize("name, kind", PARTS)
def test_part_forward_backward(name, kind):
    torch.manual_seed(0)
    extra = {"num_classes": 5} if kind == "head" else {}
    part = mf.create_model(name, feature_info=PART_INFO, **extra).train()
    feats = [f.requires_grad_() for f in _part_inputs()]
    out = part(feats)
    outs = [out] if kind == "head" else list(out)
    if kind == "head":
        assert out.shape[:2] == (2, 5)
    else:
        info = part.feature_info
        assert len(outs) == len(info)
        strides = [i["reduction"] for i in info]
        assert strides == sorted(set(strides))
        for o, i in zip(outs, info, strict=True):
            assert o.shape[1] == i["chs"] and o.shape[-2] == -(-97 // i["reduction"])
    sum(o.float().square().mean() for o in outs).backward()
    no_grad = [n for n, p in part.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
