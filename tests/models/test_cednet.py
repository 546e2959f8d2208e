"""CEDNet (arXiv 2302.06052) and its detection pyramid: fidelity, behaviour, errors, official checkpoint layouts.

Paper-size models are only built on the meta device (counts need no memory);
forward passes use the tiny ``test_cednet_*`` variants.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import msfusion as mf
from msfusion.analysis.mmcv_counter import count_macs_mmcv
from msfusion.convert.cednet import from_official, to_official
from msfusion.models.backbones import cednet as C
from msfusion.models.backbones.cednet_blocks import CEDBlock, LRCEDBlock
from msfusion.models.backbones.cednet_mixers import LePEAttention, SwinCEDBlock
from msfusion.models.chain import FeatureChain
from msfusion.models.necks import CEDNetPyramid
from msfusion.registry import paper_figures

TEST_VARIANTS = ["test_cednet_next", "test_cednet_r50", "test_cednet_swin", "test_cednet_cswin"]


def meta(name: str, **kwargs) -> C.CEDNet:
    with torch.device("meta"):
        return mf.create_model(name, **kwargs)


def with_pyramid(name: str, levels: str, device: str = "meta", **kwargs) -> FeatureChain:
    """A CEDNet backbone and its detection pyramid: the released code's detection wrapper."""
    with torch.device(device):
        backbone = mf.create_model(name, features_only=True, **kwargs)
        return FeatureChain(backbone, neck=CEDNetPyramid(backbone.feature_info, levels, norm=backbone.norm_type))


def params_m(model: torch.nn.Module) -> float:
    return mf.count_params(model) / 1e6


# --------------------------------------------------------------------- fidelity
@pytest.mark.parametrize(
    "name, paper_params, paper_gmacs",
    [("cednet_next_t", 34, 5.7), ("cednet_next_s", 55, 9.8), ("cednet_next_b", 95, 16.2)],
)
def test_params_and_macs_match_official_and_table9(name, paper_params, paper_gmacs):
    fig = paper_figures(name)
    model = meta(name)
    p = params_m(model)
    g = mf.count_macs(model, (1, 3, 224, 224), rules="mmcv") / 1e9
    # Official code (inference: last head only), within 1% / 3%.
    assert abs(p - fig.params_m) / fig.params_m < 0.01, p
    assert abs(g - fig.gmacs) / fig.gmacs < 0.03, g
    # The paper's rounded Table 9 figures.
    assert abs(p - paper_params) / paper_params < 0.03, p
    assert abs(g - paper_gmacs) / paper_gmacs < 0.03, g


def test_mmcv_rules_skip_gelu_and_custom_layernorm():
    model = meta("cednet_next_t")
    by_type: dict[str, int] = {}
    total = count_macs_mmcv(model, (1, 3, 224, 224), by_type=by_type)
    assert total == sum(by_type.values())
    assert "GELU" not in by_type and "LayerNorm2d" not in by_type
    # Only the head's nn.LayerNorm(2048) counts as a norm (2 x 2048).
    assert by_type["LayerNorm"] == 2 * 2048
    assert set(by_type) == {"Conv2d", "Linear", "Upsample", "LayerNorm"}
    # The default (torchprofile) convention is a different, reproducible count.
    assert mf.count_macs(model, (1, 3, 224, 224)) != total


@pytest.mark.parametrize(
    "kwargs, expected_m",
    [
        (dict(style="unet"), 31.50),
        (dict(style="hourglass"), 30.93),
        (dict(style="fpn_full"), 31.94),
        (dict(features_only=True), 30.72),
        (dict(deep_supervision=True), 40.04),
    ],
)
def test_style_and_wrapper_params_match_official(kwargs, expected_m):
    assert abs(params_m(meta("cednet_next_t", **kwargs)) - expected_m) / expected_m < 0.005


@pytest.mark.parametrize("levels, expected_m", [("p3p7", 32.17), ("p2p6", 32.20)])
def test_detection_wrappers_params_match_official(levels, expected_m):
    assert abs(params_m(with_pyramid("cednet_next_t", levels)) - expected_m) / expected_m < 0.005


@pytest.mark.parametrize(
    "name, retina_m, two_stage_m, gmacs",
    [("cednet_next_s", 54.52, 54.55, 197.5), ("cednet_next_b", 92.66, 92.69, 331.1)],
)
def test_detection_backbones_match_official(name, retina_m, two_stage_m, gmacs):
    retina = with_pyramid(name, "p3p7")
    assert abs(params_m(retina) - retina_m) / retina_m < 0.005
    assert abs(params_m(with_pyramid(name, "p2p6")) - two_stage_m) / two_stage_m < 0.005
    assert abs(count_macs_mmcv(retina, (1, 3, 800, 1280)) / 1e9 - gmacs) / gmacs < 0.01


@pytest.mark.parametrize("name, keys", [("cednet_next_t", 343), ("cednet_next_s", 555)])
def test_official_key_count(name, keys):
    assert len(meta(name, deep_supervision=True).state_dict()) == keys


def test_lr_block_adds_under_one_percent():
    # Table 8: the LR CED block adds < 1% parameters.
    with_lr, without = (
        params_m(meta("cednet_next_t")),
        params_m(meta("cednet_next_t", lr_block=False)),
    )
    assert 0 < with_lr - without < 0.01 * without
    model = meta("cednet_next_t", lr_block=False)
    assert all(type(b) is CEDBlock for b in model.stages[1][0].encoder[2])


def test_stage_allocation_tables_4_and_6():
    # Table 4: two-stage models that move blocks between stages keep the same size (all "38M").
    rows = [
        [[5, 10, 5], [1, 2, 1]],
        [[4, 8, 4], [2, 4, 2]],
        [[3, 6, 3], [3, 6, 3]],
        [[1, 2, 1], [5, 10, 5]],
    ]
    sizes = {params_m(with_pyramid("cednet_next_t", "p3p7", num_stages=2, blocks=b)) for b in rows}
    assert len(sizes) == 1, sizes
    # Table 6: any m with one [n1, n2, n3] for every stage.
    for m, blocks in [(1, [6, 9, 3]), (2, [3, 6, 3]), (4, [1, 4, 1])]:
        model = meta("cednet_next_t", num_stages=m, blocks=blocks)
        assert len(model.stages) == m + 1
        assert [len(s) for s in model.stages[m][0].encoder] == blocks
    model = meta("cednet_next_t", num_stages=2, blocks=[[5, 10, 5], [1, 2, 1]])
    assert [len(s) for s in model.stages[1][0].encoder] == [5, 10, 5]
    assert [len(s) for s in model.stages[2][0].encoder] == [1, 2, 1]
    assert len(model.stages[2]) == 1  # the last stage has no decoder
    assert len(meta("cednet_next_t", last_decoder=True).stages[3]) == 2


def test_drop_path_schedule_is_linear_over_all_blocks():
    model = meta("cednet_next_t", drop_path_rate=0.26)  # 27 blocks -> steps of 0.01
    assert isinstance(model.stages[0][0].drop_path, torch.nn.Identity)
    assert model.stages[1][0].encoder[0][0].drop_path.drop_prob == pytest.approx(0.03)
    assert model.stages[3][0].encoder[2][1].drop_path.drop_prob == pytest.approx(0.26)


def test_unet_moves_half_the_blocks_to_the_decoder():
    model = meta("cednet_next_t", style="unet")
    enc, dec = model.stages[1]
    assert [len(s) for s in enc.encoder] == [1, 2, 2]
    assert [len(s) for s in dec.decoder] == [2, 1]
    assert len(meta("cednet_next_t", style="hourglass").stages[1][1].lateral) == 2


# ------------------------------------------------------------------ behaviour
@pytest.mark.parametrize("name", TEST_VARIANTS)
@pytest.mark.parametrize("style", C.STYLES)
def test_styles_and_mixers_forward_backward(name, style):
    model = mf.create_model(name, style=style, features_only=True).train()
    feats = model(torch.randn(1, 3, 64, 96))
    sum(f.square().mean() for f in feats).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    for f, info in zip(feats, model.feature_info, strict=True):
        assert f.shape[1:] == (
            info["chs"],
            math.ceil(64 / info["reduction"]),
            math.ceil(96 / info["reduction"]),
        )


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_odd_sizes_crop_to_ceil(name):
    model = mf.create_model(name, features_only=True, extra_stage_features=True).eval()
    with torch.no_grad():
        feats, extras = model.forward_with_extras(torch.randn(1, 3, 97, 131))
    # The extra 1/8 map stands apart, so the features stay strictly finest first.
    assert [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]
    assert [i["reduction"] for i in model.extra_feature_info] == [8]
    infos = model.feature_info + model.extra_feature_info
    for f, info in zip(feats + extras, infos, strict=True):
        assert f.shape[-2:] == (
            math.ceil(97 / info["reduction"]),
            math.ceil(131 / info["reduction"]),
        )


def test_odd_input_equals_explicit_zero_padding_cropped():
    model = mf.create_model("test_cednet_next", features_only=True).eval()
    x = torch.randn(1, 3, 40, 70)
    with torch.no_grad():
        odd = model(x)
        padded = model(F.pad(x, (0, 26, 0, 24)))  # to 64x96
    for o, p in zip(odd, padded, strict=True):
        assert torch.allclose(o, p[..., : o.shape[-2], : o.shape[-1]], atol=1e-5)


@pytest.mark.parametrize("levels, strides", [("p3p7", [8, 16, 32, 64, 128]), ("p2p6", [4, 8, 16, 32, 64])])
def test_detection_pyramid(levels, strides):
    model = with_pyramid("test_cednet_next", levels, device="cpu").eval()
    assert model.neck.out_channels == 256
    assert [i["reduction"] for i in model.feature_info] == strides
    names = dict(model.neck.named_modules())
    assert all(i["module"] in names for i in model.feature_info)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 97, 131))
    for f, s in zip(feats, strides, strict=True):
        assert f.shape == (1, 256, math.ceil(97 / s), math.ceil(131 / s))
    sub = CEDNetPyramid(model.backbone.feature_info, levels, out_indices=(0, 2))
    assert [i["reduction"] for i in sub.feature_info] == strides[0:3:2]


def test_pyramid_of_an_odd_input_equals_the_padded_one_but_at_the_border():
    # P3-P5 are per-pixel maps of the backbone's, which equal the padded network's cropped. P2's x2 upsampling
    # reads one P3 pixel past the crop (the padded input has it) and its 3x3 conv one more: only P2's last
    # two rows and columns differ.
    model = with_pyramid("test_cednet_next", "p2p6", device="cpu").eval()
    x = torch.randn(1, 3, 40, 70)
    with torch.no_grad():
        odd, padded = model(x), model(F.pad(x, (0, 26, 0, 24)))  # to 64x96
    padded = [p[..., : o.shape[-2], : o.shape[-1]] for o, p in zip(odd, padded, strict=True)]
    for o, p in zip(odd[1:], padded[1:], strict=True):
        assert torch.allclose(o, p, atol=1e-5)
    assert torch.allclose(odd[0][..., :-2, :-2], padded[0][..., :-2, :-2], atol=1e-5)
    assert not torch.allclose(odd[0], padded[0], atol=1e-5)


def test_backbone_pyramid_arguments_name_the_neck():
    with pytest.raises(ValueError, match="neck 'cednet_pyramid'"):
        mf.create_model("test_cednet_next", pyramid="p3p7")
    with pytest.raises(ValueError, match="levels must be one of"):
        CEDNetPyramid(meta("test_cednet_next", features_only=True).feature_info, "p3p6")
    with pytest.raises(ValueError, match="reads strides"):
        CEDNetPyramid([dict(chs=8, reduction=8), dict(chs=8, reduction=16)], "p3p7")


def test_deep_supervision_heads():
    model = mf.create_model("test_cednet_next", deep_supervision=True).train()
    x = torch.randn(2, 3, 64, 64)
    logits = model.forward_train(x)
    assert len(logits) == model.num_stages and all(t.shape == (2, 10) for t in logits)
    sum(t.square().mean() for t in logits).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_train(x)[-1])
    # Without deep supervision only the last head exists, under its official key.
    plain = mf.create_model("test_cednet_next")
    assert list(plain.final_layers) == [str(plain.num_stages - 1)]


# ----------------------------------------------------------- block semantics
def _official_channels_first_ln(x, weight, bias, eps=1e-6):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return weight[:, None, None] * (x - u) / torch.sqrt(s + eps) + bias[:, None, None]


def test_ced_and_lr_ced_blocks_follow_the_official_equations():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9)
    blk = LRCEDBlock(8, layer_scale_init=0.5)
    for p in blk.parameters():
        torch.nn.init.normal_(p, std=0.2)

    def dw_norm_act(seq, t):
        conv, norm, _ = seq
        return F.gelu(_official_channels_first_ln(conv(t), norm.weight, norm.bias))

    y = x + dw_norm_act(blk.dwconv1, x)
    y = y + dw_norm_act(blk.dwconv2, y)
    mlp = blk.pwconv2(F.gelu(blk.pwconv1(y.permute(0, 2, 3, 1)))) * blk.gamma
    assert torch.allclose(blk(x), x + mlp.permute(0, 3, 1, 2), atol=1e-5)
    assert blk.dwconv2[0].dilation == (3, 3) and blk.dwconv2[0].padding == (9, 9)

    ced = CEDBlock(8, layer_scale_init=0.5)
    for p in ced.parameters():
        torch.nn.init.normal_(p, std=0.2)
    z = _official_channels_first_ln(ced.dwconv(x), ced.norm.weight, ced.norm.bias).permute(0, 2, 3, 1)
    ref = x + (ced.pwconv2(F.gelu(ced.pwconv1(z))) * ced.gamma).permute(0, 3, 1, 2)
    assert torch.allclose(ced(x), ref, atol=1e-5)


def test_cswin_stripe_as_wide_as_the_map_is_global_attention():
    qkv = torch.randn(3, 2, 6 * 5, 8)
    stripe = LePEAttention(8, orientation=0, split_size=5, num_heads=2)
    whole = LePEAttention(8, orientation=-1, num_heads=2)
    whole.load_state_dict(stripe.state_dict())
    assert torch.allclose(stripe(qkv, 6, 5), whole(qkv, 6, 5), atol=1e-5)


def test_swin_window_covering_the_map_equals_unpadded_attention():
    blk = SwinCEDBlock(16, num_heads=2, window_size=7, shift=True).eval()
    x = torch.randn(1, 16, 7, 7)
    # One window: no shift, no padding; a 6x6 map is padded inside and cropped back.
    assert blk(x).shape == x.shape and blk(x[..., :6, :6]).shape == (1, 16, 6, 6)


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(style="bifpn"), "style"),
        (dict(token_mixer="conv3"), "token_mixer"),
        (dict(blocks=[2, 4]), "blocks"),
        (dict(blocks=[[2, 4, 2]] * 3), "blocks"),
        (dict(blocks=[[2, 4, 2], [2, 4]]), "blocks"),
        (dict(norm="gn"), "norm"),
        (dict(dims=(16, 24)), "dims"),
    ],
)
def test_invalid_arguments_say_what_is_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mf.create_model("test_cednet_next", **kwargs)


def test_too_small_input_names_the_minimum():
    model = mf.create_model("test_cednet_next")
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 64, 64))


# -------------------------------------------------------- official checkpoints
def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, list) else [out]


def _perturbed(name, **kwargs):
    model = mf.create_model(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_detectors_build_the_pyramid_as_their_neck():
    # By name, the neck takes the arch's levels (P2-P6 two-stage, P3-P7 one-stage) and the backbone's norm.
    two_stage = mf.build_detector("faster_rcnn", backbone="test_cednet_r50", neck="cednet_pyramid", num_classes=3)
    assert two_stage.backbone.names == ["p2", "p3", "p4", "p5", "p6"]
    assert isinstance(two_stage.backbone.neck.reduce_convs[0][1], torch.nn.BatchNorm2d)
    one_stage = mf.build_detector("retinanet", backbone="test_cednet_next", neck="cednet_pyramid", num_classes=3)
    assert one_stage.backbone.names == ["p3", "p4", "p5", "p6", "p7"]


def test_backbone_pyramid_arguments_still_build_the_same_detector():
    # msfusion 0.1.0's spelling: the pyramid as backbone arguments with neck=None.
    old = mf.build_detector(
        "retinanet", backbone="test_cednet_next", neck=None, num_classes=3,
        backbone_kwargs=dict(pyramid="p2p6", pyramid_chs=16, out_indices=(1, 2, 3, 4)),
    )  # fmt: skip
    neck = old.backbone.neck
    assert isinstance(neck, CEDNetPyramid) and (neck.levels, neck.out_chs) == ("p2p6", 16)
    assert old.backbone.names == ["p3", "p4", "p5", "p6"] and old.model_cfg["kwargs"]["neck"] is None
    new = mf.build_detector(
        "retinanet", backbone="test_cednet_next", neck="cednet_pyramid", num_classes=3,
        neck_kwargs=dict(levels="p2p6", out_chs=16, out_indices=(1, 2, 3, 4)),
    )  # fmt: skip
    assert list(old.state_dict()) == list(new.state_dict())
    # Through a preset, the backbone arguments override the preset's neck.
    preset = mf.create_model("test_retinanet_cednet", backbone_kwargs=dict(pyramid_chs=24))
    assert preset.backbone.neck.out_chs == 24
    with pytest.raises(ValueError, match="no other neck"):
        mf.build_detector("retinanet", backbone="test_cednet_next", backbone_kwargs=dict(pyramid="p3p7"), num_classes=3)


@pytest.mark.parametrize("name", ["test_cednet_next", "test_cednet_swin", "test_cednet_r50"])
def test_imagenet_layout_round_trip(name, tmp_path):
    src = _perturbed(name, deep_supervision=True)
    ckpt = to_official(src.state_dict(), "imagenet")
    ckpt.update(epoch=torch.tensor(299))  # official checkpoints carry training state too
    if name == "test_cednet_swin":
        assert any(k.endswith("relative_position_index") for k in ckpt["model"])
    path = tmp_path / "checkpoint-best.pth"
    torch.save(ckpt, path)
    dst = mf.create_model(name)  # inference model: last head only
    mf.load_checkpoint(dst, path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(_outputs(src, x)[0], _outputs(dst, x)[0], atol=1e-5)


@pytest.mark.parametrize("arch, levels", [("retinanet", "p3p7"), ("faster_rcnn", "p2p6")])
def test_mmdet_layout_round_trip(arch, levels, tmp_path):
    src = with_pyramid("test_cednet_next", levels, device="cpu").eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # The released detectors keep the pyramid inside the backbone: its keys sit beside the backbone's.
    ckpt = to_official({**src.backbone.state_dict(), **src.neck.state_dict()}, "mmdet")
    sd = ckpt["state_dict"]
    assert all(k.startswith("backbone.") for k in sd) and any(".reduce_convs." in k for k in sd)
    sd["bbox_head.retina_cls.weight"] = torch.zeros(9, 256, 3, 3)
    torch.save(ckpt, tmp_path / "official.pth")
    # Into a detector whose neck is the pyramid (its levels follow the arch): every tensor finds its place.
    dst = mf.build_detector(arch, backbone="test_cednet_next", neck="cednet_pyramid", num_classes=3).eval()
    with pytest.warns(UserWarning, match="bbox_head.retina_cls.weight"):
        mf.load_checkpoint(dst, tmp_path / "official.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(src(x), dst.backbone(x).values(), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    # The same detector checkpoint also initialises a plain backbone, and the neck alone.
    plain = mf.create_model("test_cednet_next", features_only=True)
    plain.load_state_dict(plain.checkpoint_filter_fn(ckpt))
    neck = CEDNetPyramid(plain.feature_info, levels)
    neck.load_state_dict(neck.checkpoint_filter_fn(ckpt))


def test_mmseg_layout_round_trip():
    src = _perturbed("test_cednet_next", features_only=True, extra_stage_features=True)
    ckpt = to_official(src.state_dict(), "mmseg")
    ckpt["state_dict"]["decode_head.conv_seg.weight"] = torch.zeros(150, 512, 1, 1)
    ckpt["state_dict"]["auxiliary_head.conv_seg.weight"] = torch.zeros(150, 256, 1, 1)
    dst = mf.create_model("test_cednet_next", features_only=True, extra_stage_features=True)
    dst.load_state_dict(dst.checkpoint_filter_fn(ckpt))
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(_outputs(src, x), _outputs(dst, x), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_unknown_keys_are_kept_for_the_loader_to_report():
    model = mf.create_model("test_cednet_next")
    sd = dict(model.state_dict(), **{"stages.9.0.weight": torch.zeros(1)})
    assert "stages.9.0.weight" in model.checkpoint_filter_fn({"model": sd})
    assert "stem.0.weight" in from_official({"state_dict": {"module.backbone.stem.0.weight": torch.zeros(1)}})


# mmdet RetinaHead on 256 channels, 80 classes, 9 anchors: 4+4 3x3 convs, cls and reg outputs.
RETINA_HEAD = 8 * (256 * 256 * 9 + 256) + (256 * 720 * 9 + 720) + (256 * 36 * 9 + 36)


@pytest.mark.parametrize(
    "name, kwargs, table_m",
    [
        ("cednet_r50_t", {}, 39),  # Table 5
        ("cednet_swin_t", {}, 37),  # Table 5
        ("cednet_cswin_t", {}, 33),  # Table 5
        ("cednet_next_t", {}, 38.6),  # Table 8, with LR blocks
        ("cednet_next_t", {"lr_block": False}, 38.5),  # Table 8, without
    ],
)
def test_retinanet_sizes_match_tables_5_and_8(name, kwargs, table_m):
    total = (mf.count_params(with_pyramid(name, "p3p7", **kwargs)) + RETINA_HEAD) / 1e6
    assert abs(total - table_m) / table_m < 0.025, total


def test_swin_official_roll_back_quirk_is_an_option():
    # On a map that fits one window the official code skips the forward roll but
    # still rolls the output back; the option reproduces exactly that.
    from msfusion.models.backbones.cednet_mixers import SwinCEDBlock

    torch.manual_seed(0)
    plain = SwinCEDBlock(32, num_heads=1, window_size=7, shift=True).eval()
    quirk = SwinCEDBlock(32, num_heads=1, window_size=7, shift=True, roll_back_unshifted=True).eval()
    quirk.load_state_dict(plain.state_dict())
    x = torch.randn(1, 7, 7, 32)
    with torch.no_grad():
        expected = torch.roll(plain.window_attention(x), shifts=(3, 3), dims=(1, 2))
        torch.testing.assert_close(quirk.window_attention(x), expected)
        y = torch.randn(1, 14, 14, 32)  # larger maps are shifted and rolled back either way
        torch.testing.assert_close(quirk.window_attention(y), plain.window_attention(y))
