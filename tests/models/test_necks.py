"""FPN and PAN necks, their alignment hook, and the Semantic FPN head."""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

import msfusion as mf
from msfusion.models.heads.semantic_fpn import SemanticFPNHead
from msfusion.models.necks import ALIGNS, FPN, PAN, IdentityAlign, build_align
from msfusion.registry import model_entrypoint

R50_CHS = [256, 512, 1024, 2048]
STRIDES = [4, 8, 16, 32]
# ResNet maps of a 97x131 image: every stride-2 layer rounds up.
ODD_SIZES = [(25, 33), (13, 17), (7, 9), (4, 5)]


def info_of(chs, strides=STRIDES):
    return [dict(chs=c, reduction=s, module=f"stage{i}") for i, (c, s) in enumerate(zip(chs, strides, strict=True))]


def features(chs, sizes=ODD_SIZES, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in zip(chs, sizes, strict=True)]


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class Recorder(nn.Module):
    """An alignment that records its calls and returns ``low`` scaled by 2 (so its effect is visible)."""

    calls: list = []

    def __init__(self, chs, low_stride, high_stride, **kwargs):
        super().__init__()
        self.build = (chs, low_stride, high_stride, kwargs)

    def forward(self, low, high):
        Recorder.calls.append((self.build[1], low.detach().clone(), high.detach().clone()))
        return 2 * low


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "cls, kwargs, out_strides",
    [
        (FPN, {}, [4, 8, 16, 32]),
        (FPN, dict(extra_levels=1, extra_type="maxpool"), [4, 8, 16, 32, 64]),
        (FPN, dict(in_strides=(8, 16, 32), extra_levels=2, extra_source="c5"), [8, 16, 32, 64, 128]),
        (PAN, dict(extra_levels=2), [4, 8, 16, 32, 64, 128]),
        (PAN, dict(in_strides=(8, 16, 32), extra_levels=1, extra_type="maxpool", norm="gn"), [8, 16, 32, 64]),
    ],
)
def test_odd_sizes_shapes_and_feature_info(cls, kwargs, out_strides):
    neck = cls(info_of(R50_CHS), out_chs=64, **kwargs)
    outs = neck(features(R50_CHS))
    assert [f["reduction"] for f in neck.feature_info] == out_strides
    assert all(f["chs"] == 64 for f in neck.feature_info) and neck.out_channels == 64
    assert len(outs) == len(out_strides)
    sizes = dict(zip(STRIDES, ODD_SIZES, strict=True))
    for stride in out_strides:
        if stride not in sizes:  # an extra level: its stride-2 step rounds up
            h, w = sizes[stride // 2]
            sizes[stride] = (-(-h // 2), -(-w // 2))
    for out, stride in zip(outs, out_strides, strict=True):
        assert out.shape == (2, 64, *sizes[stride])
        assert torch.isfinite(out).all()
    names = dict(neck.named_modules())
    assert all(f["module"] in names for f in neck.feature_info)


def test_default_levels_skip_stride_2():
    neck = FPN(info_of([64, 256, 512], [2, 4, 8]), out_chs=32)
    assert neck.in_strides == (4, 8)
    outs = neck(features([64, 256, 512], [(49, 66), (25, 33), (13, 17)]))
    assert [tuple(o.shape[-2:]) for o in outs] == [(25, 33), (13, 17)]


def test_pan_backward_reaches_every_parameter():
    neck = PAN(info_of(R50_CHS[:3], STRIDES[:3]), out_chs=32, extra_levels=2, extra_source="c5")
    sum(o.mean() for o in neck(features(R50_CHS[:3], ODD_SIZES[:3], batch=1))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in neck.parameters())


def test_pan_bottom_up_is_the_papers_recursion():
    neck = PAN(info_of(R50_CHS), out_chs=32)
    xs = features(R50_CHS)
    p = neck.forward_top_down(neck.select(xs))
    n = [p[0]]
    for i in range(3):
        down = F.relu(neck.downsample_convs[i].conv(n[-1]))
        n.append(F.relu(neck.pafpn_convs[i].conv(down + p[i + 1])))
    for ours, ref in zip(neck(xs), n, strict=True):
        torch.testing.assert_close(ours, ref)


# ----------------------------------------------------------------------------- torchvision equality

TV_CASES = [
    # (our kwargs, levels used, torchvision extra block): Faster R-CNN, RetinaNet/FCOS, RetinaNet v2
    (dict(extra_levels=1, extra_type="maxpool"), 4, LastLevelMaxPool),
    (dict(extra_levels=2, extra_source="p5"), 3, lambda: LastLevelP6P7(256, 256)),
    (dict(extra_levels=2, extra_source="c5"), 3, lambda: LastLevelP6P7(2048, 256)),
]


@pytest.mark.parametrize("kwargs, levels, extra", TV_CASES)
def test_same_parameters_and_outputs_as_torchvision(kwargs, levels, extra):
    chs, strides = R50_CHS[-levels:], STRIDES[-levels:]
    ours = FPN(info_of(chs, strides), out_chs=256, **kwargs)
    ref = FeaturePyramidNetwork(chs, 256, extra_blocks=extra())
    assert count(ours) == count(ref)
    assert count(FPN(info_of(R50_CHS), 256)) == count(FeaturePyramidNetwork(R50_CHS, 256)) == 3_344_384

    ours.load_state_dict(ours.checkpoint_filter_fn(ref.state_dict()))
    xs = features(chs, ODD_SIZES[-levels:], batch=1)
    expected = list(ref(OrderedDict((str(i), x) for i, x in enumerate(xs))).values())
    got = ours(xs)
    assert len(got) == len(expected) == len(ours.feature_info)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torchvision_weights_with_norm_and_old_layout():
    ref = FeaturePyramidNetwork(R50_CHS, 32, norm_layer=nn.BatchNorm2d).eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.running_mean, -1, 1)
            nn.init.uniform_(m.running_var, 0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 2)
    ours = FPN(info_of(R50_CHS), out_chs=32, norm="bn").eval()
    assert count(ours) == count(ref)
    ours.load_state_dict(ours.checkpoint_filter_fn(ref.state_dict()))
    xs = features(R50_CHS, batch=1)
    for a, b in zip(ours(xs), ref(OrderedDict(enumerate(xs))).values(), strict=True):
        torch.testing.assert_close(a, b)

    plain = FeaturePyramidNetwork(R50_CHS[1:], 32, extra_blocks=LastLevelP6P7(32, 32))
    # torchvision before 0.8 stored the convs without the ``.0`` of Conv2dNormActivation.
    old = {re.sub(r"(inner|layer)_blocks\.(\d+)\.0\.", r"\1_blocks.\2.", k): v for k, v in plain.state_dict().items()}
    assert "inner_blocks.0.weight" in old
    ours = FPN(info_of(R50_CHS[1:], STRIDES[1:]), out_chs=32, extra_levels=2)
    ours.load_state_dict(ours.checkpoint_filter_fn(old))
    torch.testing.assert_close(ours.fpn_convs[4].conv.weight, plain.extra_blocks.p7.weight)


# ----------------------------------------------------------------------------- the alignment hook


@pytest.mark.parametrize("cls", [FPN, PAN])
def test_hook_gets_lateral_and_top_down_maps(cls):
    Recorder.calls = []
    neck = cls(info_of(R50_CHS), out_chs=32, align=Recorder, align_kwargs=dict(tag=1))
    assert [m.build for m in neck.aligns] == [(32, 4, 8, {"tag": 1}), (32, 8, 16, {"tag": 1}), (32, 16, 32, {"tag": 1})]
    xs = features(R50_CHS)
    neck(xs)
    # Called coarse to fine, with low = the finer lateral, high = the coarser top-down map.
    assert [c[0] for c in Recorder.calls] == [16, 8, 4]
    for (_, low, high), (h, w), (hh, hw) in zip(Recorder.calls, ODD_SIZES[2::-1], ODD_SIZES[:0:-1], strict=True):
        assert low.shape == (2, 32, h, w) and high.shape == (2, 32, hh, hw)
    laterals = [conv(x) for conv, x in zip(neck.lateral_convs, xs, strict=True)]
    with torch.no_grad():
        torch.testing.assert_close(Recorder.calls[0][2], laterals[3])
        for k in range(3):
            torch.testing.assert_close(Recorder.calls[k][1], laterals[2 - k])
        # The next step's high is this step's aligned low (2x) plus the upsampled high.
        for k in range(2):
            _, low, high = Recorder.calls[k]
            expected = 2 * low + F.interpolate(high, size=low.shape[-2:], mode="nearest")
            torch.testing.assert_close(Recorder.calls[k + 1][2], expected)


def test_identity_by_default_and_per_level_control():
    neck = FPN(info_of(R50_CHS), out_chs=32)
    assert all(type(a) is IdentityAlign for a in neck.aligns) and count(neck.aligns) == 0
    for spec in ({8: Recorder, 16: None}, {"8": Recorder}, [None, Recorder, None], {8: {"type": Recorder, "r": 2}}):
        neck = FPN(info_of(R50_CHS), out_chs=32, align=spec)
        assert [type(a).__name__ for a in neck.aligns] == ["IdentityAlign", "Recorder", "IdentityAlign"], spec
    assert neck.aligns[1].build == (32, 8, 16, {"r": 2})

    Recorder.calls = []
    FPN(info_of(R50_CHS), out_chs=32, align={4: Recorder})(features(R50_CHS))
    assert [c[0] for c in Recorder.calls] == [4]


def test_fine_shorthand(monkeypatch):
    # Stand a recorder in for FINE in the registry, for this test only.
    monkeypatch.delitem(ALIGNS._lazy, "fine", raising=False)
    monkeypatch.setitem(ALIGNS._table, "fine", Recorder)
    a = PAN(info_of(R50_CHS), out_chs=32, fine=True)
    b = PAN(info_of(R50_CHS), out_chs=32, align="fine")
    c = FPN(info_of(R50_CHS), out_chs=32, fine={"ratio": 2})
    # The paper's stages: fusions whose finer map has stride 8 or 16; the stride-4 fusion stays plain.
    assert type(a.aligns[0]) is IdentityAlign and all(type(m) is Recorder for m in a.aligns[1:])
    assert all(type(m) is Recorder for m in b.aligns)
    assert type(c.aligns[0]) is IdentityAlign and c.aligns[1].build == (32, 8, 16, {"ratio": 2})
    with pytest.raises(ValueError, match="either fine= or align="):
        FPN(info_of(R50_CHS), fine=True, align="fine")


def test_real_fine_in_the_hook():
    from msfusion.models.align.fine import FINE

    neck = FPN(info_of(R50_CHS[1:], STRIDES[1:]), out_chs=32, fine=True, extra_levels=1, extra_type="maxpool")
    assert all(isinstance(a, FINE) for a in neck.aligns)
    outs = neck(features(R50_CHS[1:], ODD_SIZES[1:], batch=1))
    assert [tuple(o.shape[-2:]) for o in outs] == [*ODD_SIZES[1:], (2, 3)]


def test_align_errors():
    info = info_of(R50_CHS)
    with pytest.raises(ValueError, match="Did you mean 'fine'"):
        FPN(info, align="fien")
    with pytest.raises(ValueError, match=r"finer strides \[4, 8, 16\]"):
        FPN(info, align={32: "fine"})
    with pytest.raises(ValueError, match="3 fusion steps"):
        FPN(info, align=[None, None])
    with pytest.raises(ValueError, match="module instance"):
        FPN(info, align=IdentityAlign())
    with pytest.raises(ValueError, match="not an nn.Module"):
        build_align(lambda *a: 3, 32, 8, 16)
    with pytest.raises(ValueError, match="takes no arguments"):
        build_align("identity", 32, 8, 16, r=2)


# ----------------------------------------------------------------------------- input validation


def test_input_errors():
    info = info_of(R50_CHS)
    neck = FPN(info, out_chs=32)
    xs = features(R50_CHS, batch=1)
    with pytest.raises(ValueError, match=r"stride-8 level \(features\[1\]\)"):
        neck([xs[0], torch.randn(1, 256, 13, 17), *xs[2:]])
    with pytest.raises(ValueError, match="list of 4 feature maps"):
        neck(xs[1:])
    with pytest.raises(ValueError, match="finest first"):
        neck(xs[::-1])
    same = FPN(info_of([32] * 4), out_chs=32)
    with pytest.raises(ValueError, match="stride-8 map .* larger than the stride-4 map"):
        same(features([32] * 4, [ODD_SIZES[1], ODD_SIZES[0], *ODD_SIZES[2:]], batch=1))
    with pytest.raises(ValueError, match=r"features have strides \[4, 8, 16, 32\]"):
        FPN(info, in_strides=(8, 64))
    with pytest.raises(ValueError, match="extra_type"):
        FPN(info, extra_type="pool")


# ----------------------------------------------------------------------------- registry and the head


def test_registered_and_composed():
    assert {"fpn", "pan"} <= set(mf.list_models(kind="neck"))
    assert "semantic_fpn" in mf.list_models(kind="head")
    neck = model_entrypoint("pan", kind="neck")(info_of(R50_CHS), out_chs=32)
    head = model_entrypoint("semantic_fpn", kind="head")(neck.feature_info, num_classes=5, channels=32)
    assert isinstance(neck, PAN) and isinstance(head, SemanticFPNHead)
    model = mf.build_segmentor(
        "resnet18",
        neck="fpn",
        head="semantic_fpn",
        num_classes=3,
        neck_kwargs=dict(out_chs=32, fine=True),
        head_kwargs=dict(channels=32),
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 3, 97, 131)


def test_semantic_fpn_head_layout_and_count():
    head = SemanticFPNHead(info_of([256] * 4), num_classes=19)
    # mmseg's FPNHead: 1, 1, 2, 3 convs (3x3, 128 ch, no bias) + GN, then conv_seg.
    convs = 4 * 256 * 128 * 9 + 3 * 128 * 128 * 9
    assert count(head) == convs + 7 * 2 * 128 + 128 * 19 + 19 == 1_626_259
    keys = set(head.state_dict())
    assert {"scale_heads.0.0.conv.weight", "scale_heads.3.4.conv.weight", "scale_heads.3.4.gn.bias"} <= keys
    assert "scale_heads.0.2.conv.weight" not in keys and head.num_upsamples == (0, 1, 2, 3)
    # Semantic FPN on ResNet-50 with 19 classes: 28.5 M parameters (FINE, arXiv 2606.14005, Table 7).
    with torch.device("meta"):
        import timm

        backbone = timm.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
        total = count(backbone) + count(FPN(info_of(R50_CHS))) + count(head)
    assert round(total / 1e6, 1) == 28.5


def test_semantic_fpn_head_odd_and_even_sizes():
    head = SemanticFPNHead(info_of([32] * 4), num_classes=4, channels=32).eval()
    with torch.no_grad():
        assert head(features([32] * 4)).shape == (2, 4, 25, 33)
        # Even sizes: the exact-size upsampling is the paper's (and mmseg's) 2x bilinear chain.
        xs = features([32] * 4, [(16, 24), (8, 12), (4, 6), (2, 3)])
        ref = sum(nn.Sequential(*head.scale_heads[i])(x) for i, x in enumerate(xs))
        torch.testing.assert_close(head.forward_features(xs), ref)
    with pytest.raises(ValueError, match="power-of-two"):
        SemanticFPNHead(info_of([32] * 4, [4, 8, 12, 32]), num_classes=4, in_strides=(4, 12))
    with pytest.raises(ValueError, match="missing: \\[64\\]"):
        SemanticFPNHead(info_of([32] * 4), num_classes=4, in_strides=(4, 64))
