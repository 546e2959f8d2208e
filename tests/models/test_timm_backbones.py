"""Any timm backbone at any input size (``TimmFeatures``) and ViTDet's simple feature pyramid."""

from __future__ import annotations

import pytest
import torch

import msfusion as mf
from msfusion.models.backbones.simple_pyramid import SimpleFeaturePyramid
from msfusion.models.backbones.timm_adapter import TimmFeatures, _fine_to_coarse

# The smallest model of each family, its strides, and the input constraint the adapter reports.
FAMILIES = {
    "resnet50": ([2, 4, 8, 16, 32], 32),
    "resnext26ts": ([2, 4, 8, 16, 32], 32),
    "regnety_002": ([2, 4, 8, 16, 32], 32),
    "efficientnet_b0": ([2, 4, 8, 16, 32], 32),
    "mobilenetv3_small_100": ([2, 4, 8, 16, 32], 32),
    "convnext_atto": ([4, 8, 16, 32], 32),
    "swin_tiny_patch4_window7_224": ([4, 8, 16, 32], 32),
    "pvt_v2_b0": ([4, 8, 16, 32], 32),
    "coat_lite_tiny": ([4, 8, 16, 32], 32),
    "maxvit_pico_rw_256": ([2, 4, 8, 16, 32], 256),  # 8x8 windows/grids tile the stride-32 map
    "hrnet_w18_small": ([2, 4, 8, 16, 32], 32),
    "mobilevit_xxs": ([2, 4, 8, 16, 32], 64),  # 2x2 unfolding patches tile the stride-32 map
    "vit_tiny_patch16_224": ([4, 8, 16, 32], 32),  # simple pyramid; its 1/32 level max-pools
    "deit_tiny_patch16_224": ([4, 8, 16, 32], 32),
}
BACKWARD = {"vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_runs_at_odd_sizes_once_padded(name: str) -> None:
    strides, divisor = FAMILIES[name]
    torch.manual_seed(0)
    model = TimmFeatures(name).train(name in BACKWARD)
    assert [f["reduction"] for f in model.feature_info] == strides
    assert model.size_divisor == divisor and model.min_size == divisor

    nearest = "x".join(str(s) for s in model.valid_size(97, 131))
    with pytest.raises(ValueError, match=f"multiples of {divisor}.*Pad it to {nearest}"):
        model(torch.randn(1, 3, 97, 131))
    for size in [(97, 131), (40, 70)]:  # the second size checks that nothing stays fixed to the first
        h, w = model.valid_size(*size)
        assert h % divisor == 0 and w % divisor == 0 and h >= size[0] and w >= size[1]
        x = torch.randn(1, 3, h, w)
        with torch.set_grad_enabled(name in BACKWARD):
            feats = model(x)
        assert len(feats) == len(model.feature_info)
        for f, info in zip(feats, model.feature_info, strict=True):
            # NCHW, the reported channels, exactly 1/stride of the padded input.
            assert tuple(f.shape) == (1, info["chs"], h // info["reduction"], w // info["reduction"]), (name, info)
            assert torch.isfinite(f).all()
    if name in BACKWARD:
        sum(f.float().square().mean() for f in feats).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing


def test_vit_simple_pyramid_is_vitdet() -> None:
    model = TimmFeatures("vit_tiny_patch16_224")
    pyramid = model.simple_pyramid
    assert [f["module"] for f in model.feature_info] == [f"simple_pyramid.{i}" for i in range(4)]
    assert [f["chs"] for f in model.feature_info] == [256] * 4
    assert all(model.get_submodule(f["module"]) is lvl for f, lvl in zip(model.feature_info, pyramid, strict=True))
    # 1/4: two deconvolutions halving channels (192 -> 96 -> 48); 1/8: one; 1/16: none; 1/32: max pooling.
    deconvs = [
        [m.out_channels for m in lvl.resample.modules() if isinstance(m, torch.nn.ConvTranspose2d)] for lvl in pyramid
    ]
    assert deconvs == [[96, 48], [96], [], []]
    assert isinstance(pyramid[3].resample, torch.nn.MaxPool2d)
    assert pyramid[0].lateral.in_channels == 48 and pyramid[0].lateral.kernel_size == (1, 1)
    assert pyramid[0].output.kernel_size == (3, 3) and pyramid[0].output.bias is None


def test_pyramid_options() -> None:
    plain = TimmFeatures("vit_tiny_patch16_224", simple_pyramid=False)
    assert plain.feature_info == [{"chs": 192, "reduction": 16, "module": "blocks.11"}]  # the last block only
    assert plain.size_divisor == 16
    assert plain(torch.randn(1, 3, 48, 80))[0].shape == (1, 192, 3, 5)

    picked = TimmFeatures("deit_tiny_patch16_224", out_indices=(1, 2), pyramid_chs=64)
    assert [(f["reduction"], f["chs"]) for f in picked.feature_info] == [(8, 64), (16, 64)]
    assert len(picked.simple_pyramid) == 2 and picked.size_divisor == 16

    forced = TimmFeatures("regnety_002", simple_pyramid=True, pyramid_scales=(2.0, 1.0))
    assert [f["reduction"] for f in forced.feature_info] == [16, 32]
    assert [tuple(f.shape[-2:]) for f in forced(torch.randn(1, 3, 64, 96))] == [(4, 6), (2, 3)]


def test_simple_pyramid_strides_and_errors() -> None:
    pyramid = SimpleFeaturePyramid(in_chs=32, in_stride=16, out_chs=8)
    outs = pyramid(torch.randn(2, 32, 3, 5))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 12, 20), (2, 8, 6, 10), (2, 8, 3, 5), (2, 8, 1, 2)]
    assert [f["reduction"] for f in pyramid.feature_info] == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="fractional"):
        SimpleFeaturePyramid(in_chs=32, in_stride=14)
    with pytest.raises(ValueError, match="not in"):
        SimpleFeaturePyramid(in_chs=32, in_stride=16, scales=(8.0,))


def test_out_indices_drop_unused_stages() -> None:
    model = TimmFeatures("resnet18", out_indices=(1, 2, 3))
    assert [f["module"] for f in model.feature_info] == ["layer1", "layer2", "layer3"]
    assert not any(name.startswith("layer4") for name, _ in model.model.named_modules())  # no unused parameters
    assert model.size_divisor == 16


def test_repeated_or_unordered_strides_keep_the_deepest_map_per_stride() -> None:
    assert _fine_to_coarse([16, 16, 16]) == [2]
    assert _fine_to_coarse([4, 8, 8, 16]) == [0, 2, 3]
    assert _fine_to_coarse([8, 4, 16]) == [1, 0, 2]


def test_bad_names_and_models_are_value_errors() -> None:
    with pytest.raises(ValueError, match="Did you mean: resnet50"):
        TimmFeatures("resnet_50")
    with pytest.raises(ValueError, match="cannot return feature maps.*AssertionError"):
        TimmFeatures("inception_v3", aux_logits=True)  # timm asserts: aux logits have no features_only form
    with pytest.raises(ValueError, match="not accepted"):
        TimmFeatures("regnety_002", no_such_option=1)
    with pytest.raises(ValueError, match="load_checkpoint"):
        TimmFeatures("regnety_002", pretrained=True)


def test_fixed_size_family_failure_names_the_built_size() -> None:
    model = TimmFeatures("coatnet_nano_rw_224")  # relative position tables of the 14x14 stride-16 grid
    with pytest.raises(ValueError, match="only run at the size it was built for, 224x224"):
        model(torch.randn(1, 3, 64, 96))


def test_create_model_routes_timm_names_here() -> None:
    model = mf.create_model("mobilenetv3_small_100", features_only=True, out_indices=(2, 3, 4))
    assert isinstance(model, TimmFeatures)
    assert [f["reduction"] for f in model.feature_info] == [8, 16, 32]
