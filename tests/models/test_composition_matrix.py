"""The composition matrix: timm backbone families x decode heads, at a size not divisible by 32.

Each family's smallest model is built once as a backbone and composed with the
Ham (strides 8/16/32), UperNet (4/8/16/32) and MLP (4/8/16/32) heads through
``build_segmentor``; the segmentor pads the 97x131 input to what the backbone
needs (``size_divisor``, ``min_size``) and crops the logits back.
"""

import functools

import pytest
import torch

import msfusion as mf

FAMILIES = {
    "ResNet-50": "resnet50",
    "ResNeXt": "resnext26ts",
    "RegNet": "regnety_002",
    "EfficientNet": "efficientnet_b0",
    "MobileNetV3": "mobilenetv3_small_100",
    "ConvNeXt": "convnext_atto",
    "Swin": "swin_tiny_patch4_window7_224",
    "PVTv2": "pvt_v2_b0",
    "CoaT-Lite": "coat_lite_tiny",
    "MaxViT": "maxvit_pico_rw_256",
    "HRNet": "hrnet_w18_small",
    "ViT": "vit_tiny_patch16_224",
    "DeiT": "deit_tiny_patch16_224",
}
HEADS = {
    "ham": {"channels": 32, "ham_channels": 32},
    "uper": {"channels": 16, "pool_scales": (1, 2)},
    "mlp": {"channels": 32},
}


@functools.cache
def _backbone(name):
    torch.manual_seed(0)
    return mf.create_model(name, features_only=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_with_every_head_at_an_odd_size(family):
    backbone = _backbone(FAMILIES[family])
    strides = [i["reduction"] for i in backbone.feature_info]
    assert {8, 16, 32} <= set(strides) and 4 in strides, f"{family}: strides {strides}"
    x = torch.randn(1, 3, 97, 131)
    for head, head_kwargs in HEADS.items():
        model = mf.build_segmentor(backbone, head=head, num_classes=3, head_kwargs=head_kwargs).eval()
        expected = {"ham": (8, 16, 32)}.get(head, (4, 8, 16, 32))
        assert [strides[i] for i in model.decode_head.in_index] == list(expected)
        assert model.size_divisor % backbone.size_divisor == 0
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, 3, 97, 131) and torch.isfinite(y).all(), f"{family} + {head}"
