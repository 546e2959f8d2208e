"""Fusion time (CEDNet Sec. 1, Fig. 1): the paper's 91.7% for FPN on ConvNeXt-S, and the presets."""

import pytest
import timm
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import msfusion as mf
from msfusion.analysis.fusion_time import first_fusion_prefixes, fusion_split, fusion_time
from msfusion.models.meta_arch.upernet import UPerNet


def test_convnext_s_fpn_reproduces_figure1():
    # A RetinaNet FPN on C3-C5 (P6 from C5, then P7), 256 channels: the paper's 91.7%.
    with torch.device("meta"):
        net = nn.ModuleDict(
            dict(
                backbone=timm.create_model("convnext_small", features_only=True, out_indices=(1, 2, 3)),
                fpn=FeaturePyramidNetwork([192, 384, 768], 256, LastLevelP6P7(768, 256)),
            )
        )
    split = fusion_split(net, before=["backbone"])
    assert split.before_params == mf.count_params(net["backbone"])
    assert split.total_params == mf.count_params(net)
    assert fusion_time(net, before=["backbone"]) == pytest.approx(0.917, abs=5e-4)
    assert first_fusion_prefixes(net) == ["backbone"]


def test_cednet_preset_counts_stem_and_first_encoder():
    with torch.device("meta"):
        backbone = mf.create_model("cednet_next_t", features_only=True)
        seg = mf.create_model("upernet_cednet_next_t")
    assert first_fusion_prefixes(backbone) == ["stem", "stages.0", "stages.1.0"]
    before = sum(mf.count_params(m) for m in (backbone.stem, backbone.stages[0], backbone.stages[1][0]))
    split = fusion_split(backbone)
    assert split.before_params == before
    assert split.ratio == pytest.approx(before / mf.count_params(backbone))
    assert 0.30 < split.ratio < 0.36  # 33.5%: far earlier than FPN's 91.7%
    seg_split = fusion_split(seg)
    assert seg_split.before == ("backbone.stem", "backbone.stages.0", "backbone.stages.1.0")
    assert seg_split.before_params == before


def test_one_stage_cednet_fuses_after_the_backbone():
    backbone = mf.create_model("test_cednet_next", features_only=True, num_stages=1)
    assert fusion_time(backbone) == 1.0
    seg = UPerNet(backbone, num_classes=3, channels=8, aux_in_stride=None)
    assert fusion_time(seg) == pytest.approx(mf.count_params(backbone) / mf.count_params(seg))


def test_hrnet_fuses_early():
    with torch.device("meta"):
        backbone = mf.create_model("hrnet_w18_small", features_only=True)
    prefixes = first_fusion_prefixes(backbone)
    assert "model.stage2.0.branches" in prefixes
    assert fusion_time(backbone) < 0.1


def test_plain_segmentor_uses_its_backbone():
    model = mf.create_model("test_segnext")
    assert first_fusion_prefixes(model) == ["backbone"]
    assert fusion_time(model) == pytest.approx(mf.count_params(model.backbone) / mf.count_params(model))


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="before="):
        fusion_time(nn.Conv2d(3, 3, 1))
    net = nn.ModuleDict(dict(a=nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="top-level modules are"):
        fusion_time(net, before=["b"])
    with pytest.raises(ValueError, match="list of module prefixes"):
        fusion_time(net, before="a")
