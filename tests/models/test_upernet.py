"""UperNet: UPerHead / FCNHead semantics and key names, the CEDNet presets, their configs.

Fidelity: CEDNet Table 3 parameters (61 / 83 / 123 M) and mmcv-rule MACs at
512x2048 (962 / 1045 / 1184 G), counted on the meta device.
"""

import pytest
import torch

import msfusion as mf
from msfusion.convert.cednet import to_official
from msfusion.models.heads import build_head
from msfusion.models.heads.fcn import FCNHead
from msfusion.models.heads.uper import UPerHead
from msfusion.models.meta_arch.upernet import UPerNet
from msfusion.registry import paper_figures

VARIANTS = ["upernet_cednet_next_t", "upernet_cednet_next_s", "upernet_cednet_next_b"]


def _info(chs=(8, 16, 24, 32), strides=(4, 8, 16, 32)):
    return [dict(chs=c, reduction=r, module=f"s{r}") for c, r in zip(chs, strides, strict=True)]


def _features(chs=(8, 16, 24, 32), size=(33, 47), batch=2):
    """Random maps at strides 4..32 of a (size) image, sides rounded up like a padded backbone."""
    h, w = size
    return [torch.randn(batch, c, -(-h // s), -(-w // s)) for c, s in zip(chs, (4, 8, 16, 32), strict=True)]


def test_uper_head_shapes_and_backward():
    head = UPerHead(_info(), num_classes=5, channels=16).train()
    feats = [f.requires_grad_(True) for f in _features()]
    out = head(feats)
    assert out.shape == (2, 5, 9, 12)  # the finest input's size
    out.square().mean().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_uper_head_mmcv_key_names():
    head = UPerHead(_info(), num_classes=5, channels=16)
    keys = set(head.state_dict())
    expected = {
        "conv_seg.weight",
        "conv_seg.bias",
        "bottleneck.conv.weight",
        "bottleneck.bn.running_mean",
        "fpn_bottleneck.conv.weight",
        "fpn_bottleneck.bn.weight",
    }
    expected |= {f"lateral_convs.{i}.conv.weight" for i in range(3)}
    expected |= {f"lateral_convs.{i}.bn.bias" for i in range(3)}
    expected |= {f"fpn_convs.{i}.conv.weight" for i in range(3)}
    expected |= {f"psp_modules.{j}.1.conv.weight" for j in range(4)}
    expected |= {f"psp_modules.{j}.1.bn.num_batches_tracked" for j in range(4)}
    assert expected <= keys
    # mmcv ConvModule: no conv bias in front of a norm.
    assert not any(k.endswith("conv.bias") for k in keys)
    sd = head.state_dict()
    assert sd["bottleneck.conv.weight"].shape == (16, 32 + 4 * 16, 3, 3)
    assert sd["fpn_bottleneck.conv.weight"].shape == (16, 4 * 16, 3, 3)
    assert sd["lateral_convs.0.conv.weight"].shape == (16, 8, 1, 1)


def test_uper_head_official_param_count():
    # The official code counts UPerHead(512 ch, 150 classes) on CEDNet-T's [96, 192, 352, 512]
    # as 60.50 M - 30.72 M (backbone) = 29.78 M.
    with torch.device("meta"):
        head = build_head("uper", feature_info=_info((96, 192, 352, 512)), num_classes=150)
    assert isinstance(head, UPerHead)
    assert mf.count_params(head) == 29_777_046


def test_fcn_head():
    feats = _features()
    head = FCNHead(_info(), num_classes=5, in_stride=8, channels=12)
    assert head(feats).shape == (2, 5, 5, 6)
    assert {"convs.0.conv.weight", "convs.0.bn.weight", "conv_seg.weight"} <= set(head.state_dict())
    assert "conv_cat.conv.weight" not in head.state_dict()
    cat = FCNHead(_info(), num_classes=5, in_stride=32, channels=12, num_convs=2, concat_input=True)
    assert cat(feats).shape == (2, 5, 2, 2)
    assert cat.state_dict()["conv_cat.conv.weight"].shape == (12, 32 + 12, 3, 3)
    with pytest.raises(ValueError, match="num_convs=0"):
        FCNHead(_info((8, 16), (4, 8)), num_classes=5, in_stride=8, channels=12, num_convs=0)
    with pytest.raises(ValueError, match="one feature map"):
        FCNHead(_info((8, 16), (4, 8)), num_classes=5, in_stride=(4, 8))
    with pytest.raises(ValueError, match=r"strides \[4, 8\]"):
        FCNHead(_info((8, 16), (4, 8)), num_classes=5, in_stride=16)


def test_upernet_any_timm_backbone_odd_size():
    model = UPerNet(
        "resnet18",
        num_classes=4,
        in_strides=(4, 8, 16, 32),
        channels=16,
        aux_in_stride=32,
        aux_channels=8,
    )
    x = torch.randn(2, 3, 45, 77)
    out = model.train().forward_train(x)
    assert out["logits"].shape == (2, 4, 45, 77)
    assert [a.shape for a in out["aux_logits"]] == [(2, 4, 45, 77)]
    assert model.auxiliary_weights == (0.4,)
    (out["logits"].mean() + 0.4 * out["aux_logits"][0].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x[:1]).shape == (1, 4, 45, 77)


def test_upernet_reads_its_auxiliary_map_by_stride():
    backbone = mf.create_model("test_cednet_next", features_only=True, extra_stage_features=True)
    assert [f["reduction"] for f in backbone.feature_info] == [4, 8, 16, 32]
    # By default the stride-16 map (mmseg's in_index=2 on a stride 4-32 pyramid).
    model = UPerNet(backbone, num_classes=3, channels=8, aux_channels=8)
    assert model.auxiliary_inputs == ("features",) and model.auxiliary_head[0].in_strides == (16,)
    # The stride-8 extra map (CEDNet's c3' of stage m-1), not the pyramid's stride-8 map.
    model = UPerNet(backbone, num_classes=3, channels=8, aux_in_stride=8, aux_in_extra=True)
    assert model.auxiliary_inputs == ("extra:0",)
    with pytest.raises(ValueError, match=r"strides \[4, 8, 16, 32\]"):
        UPerNet(backbone, num_classes=3, channels=8, aux_in_stride=64)
    with pytest.raises(ValueError, match=r"extra maps .* strides \[8\]"):
        UPerNet(backbone, num_classes=3, channels=8, aux_in_stride=16, aux_in_extra=True)
    assert UPerNet(backbone, num_classes=3, channels=8, aux_in_stride=None).auxiliary_head is None


@pytest.mark.parametrize(
    ("index", "source", "hint"), [(1, "features", "aux_in_stride=8$"), (4, "extra:0", "aux_in_extra=True")]
)
def test_aux_in_index_is_a_deprecated_alias_of_the_stride(index, source, hint):
    backbone = mf.create_model("test_cednet_next", features_only=True, extra_stage_features=True)
    with pytest.warns(DeprecationWarning, match=hint):
        model = UPerNet(backbone, num_classes=3, channels=8, aux_in_index=index)
    assert model.auxiliary_inputs == (source,)
    with pytest.warns(DeprecationWarning, match="aux_in_stride=None"):
        assert UPerNet(backbone, num_classes=3, channels=8, aux_in_index=None).auxiliary_head is None


def test_upernet_cednet_tiny_uses_stage_m_minus_1_map():
    model = mf.create_model("test_upernet_cednet").eval()
    info = model.backbone.feature_info
    # [c2, c3, c4, c5] strictly finest first; c3' of stage m-1 is the first extra map,
    # which the auxiliary head reads (mmseg's index 4).
    assert [i["reduction"] for i in info] == [4, 8, 16, 32]
    extra = model.backbone.extra_feature_info
    assert len(extra) == 1 and extra[0]["chs"] == info[1]["chs"] and extra[0]["reduction"] == 8
    assert model.auxiliary_inputs == ("extra:0",)
    assert model.decode_head.in_index == (0, 1, 2, 3)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 71)).shape == (1, 5, 45, 71)
    with pytest.raises(ValueError, match="segmentor"):
        mf.create_model("test_upernet_cednet", features_only=True)


def test_official_mmseg_checkpoint_loads(tmp_path):
    src = mf.create_model("test_upernet_cednet").eval()
    for m in src.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    official = to_official(src.backbone.state_dict(), "mmseg")
    sd = official["state_dict"]
    sd.update({f"decode_head.{k}": v for k, v in src.decode_head.state_dict().items()})
    # mmseg stores a single auxiliary head without a list index.
    sd.update({f"auxiliary_head.{k}": v for k, v in src.auxiliary_head[0].state_dict().items()})
    path = tmp_path / "upernet_official.pth"
    torch.save(official, path)

    dst = mf.create_model("test_upernet_cednet").eval()
    report = mf.load_checkpoint(dst, path)
    assert report["missing"] == [] and report["unexpected"] == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
        torch.testing.assert_close(dst.forward_train(x)["aux_logits"][0], src.forward_train(x)["aux_logits"][0])


@pytest.mark.parametrize(
    "name, official_no_aux_m",
    [
        ("upernet_cednet_next_t", 60.50),
        ("upernet_cednet_next_s", 82.84),
        ("upernet_cednet_next_b", 122.27),
    ],
)
def test_table3_params(name, official_no_aux_m):
    with torch.device("meta"):
        model = mf.create_model(name)
    total = mf.count_params(model)
    paper = paper_figures(name)
    assert abs(total / 1e6 - paper.params_m) / paper.params_m < 0.02
    no_aux = total - mf.count_params(model.auxiliary_head)
    assert no_aux / 1e6 == pytest.approx(official_no_aux_m, abs=0.01)
    assert model.backbone.extra_feature_info[0]["reduction"] == 8


def test_table3_macs_tiny():
    with torch.device("meta"):
        model = mf.create_model("upernet_cednet_next_t")
    paper = paper_figures("upernet_cednet_next_t")
    macs = mf.count_macs(model, (1, *paper.input_size), rules=paper.macs_rules)
    assert macs / 1e9 == pytest.approx(paper.gmacs, rel=0.005)


def test_batch_of_one_in_training_says_why():
    head = UPerHead(_info(), num_classes=5, channels=16).train()
    with pytest.raises(ValueError, match="at least 2 images"):
        head(_features(batch=1))
    assert head.eval()(_features(batch=1)).shape == (1, 5, 9, 12)
    gn = UPerHead(_info(), num_classes=5, channels=64, norm="gn", pool_scales=(1, 2)).train()
    assert gn(_features(batch=1)).shape == (1, 5, 9, 12)
