"""TopFormer (arXiv 2204.05525) and TopFormer + MSCSA (arXiv 2308.05872): blocks, shapes, errors, converter, fidelity."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import msfusion as mf
from msfusion.analysis.complexity import MacCounter
from msfusion.convert.topformer import from_official, to_official
from msfusion.models.addons.mscsa import MSCSA
from msfusion.models.backbones.topformer import (
    SASEAttention,
    SemanticsInjection,
    TopFormer,
    create_topformer,
    topformer_config,
)
from msfusion.models.heads.topformer_head import TopFormerHead
from msfusion.models.presets.topformer import MSCSA_ABLATIONS, TABLE7, TopFormerSegmentor

# A small pyramid for real forward passes: channels 8/16/24/32 at strides 4/8/16/32.
TINY = dict(
    layers=[(3, 1, 8, 1), (3, 2, 8, 2), (3, 2, 16, 2), (3, 2, 24, 2), (3, 2, 32, 2)],
    pyramid_indices=(1, 2, 3, 4),
    stem_chs=8,
    inject_chs=16,
)
SASE_TINY = dict(depth=1, num_heads=2, key_dim=4)
MSCSA_TINY = dict(depth=1, num_heads=2, head_dim=4, mlp_ratio=2.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _tiny(extractor="sase", **kwargs):
    ekw = SASE_TINY if extractor == "sase" else MSCSA_TINY
    return TopFormer(**TINY, extractor=extractor, extractor_kwargs=ekw, **kwargs)


class _LogitsAtEighth(nn.Module):
    """Backbone + head without the final upsample: what the released numbers count."""

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x):
        return self.segmentor.decode_head(self.segmentor.extract_features(x))


def _gmacs(model, size, rules="torchprofile"):
    return mf.count_macs(model, (1, 3, size, size), rules=rules) / 1e9


def _gmacs_mmcv_with_attention(model, size):
    """mmcv's rules plus the attention matrix products, which mmcv's counter skips (MSCSA Tables 4-6)."""
    counter = MacCounter()
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, size, size, device="meta"))
    products = sum(v for k, v in counter.by_op.items() if k in ("bmm", "baddbmm") or "scaled_dot_product" in k)
    return (mf.count_macs(model, (1, 3, size, size), rules="mmcv") + products) / 1e9


# ---- Blocks -------------------------------------------------------------------------------


def test_sase_attention_is_unscaled_softmax_attention():
    attn = SASEAttention(12, num_heads=2, key_dim=3, attn_ratio=2.0).eval()
    x = torch.randn(2, 12, 5, 7)
    b, n = 2, 35
    q = attn.q(x).reshape(b, 2, 3, n).transpose(-2, -1)
    k = attn.k(x).reshape(b, 2, 3, n)
    v = attn.v(x).reshape(b, 2, 6, n).transpose(-2, -1)
    out = (q @ k).softmax(-1) @ v  # no 1/sqrt(d): TopFormer's attention
    expected = attn.proj(out.transpose(-2, -1).reshape(b, 12, 5, 7))
    torch.testing.assert_close(attn(x), expected, rtol=1e-4, atol=1e-5)


def test_injection_gates_at_the_coarse_size_then_upsamples():
    sim = SemanticsInjection(4, 6, 8).eval()
    x, g = torch.randn(1, 4, 9, 11), torch.randn(1, 6, 3, 4)
    up = lambda t: F.interpolate(t, size=(9, 11), mode="bilinear", align_corners=False)  # noqa: E731
    expected = sim.local_embedding(x) * up(F.relu6(sim.global_act(g) + 3) / 6) + up(sim.global_embedding(g))
    torch.testing.assert_close(sim(x, g), expected)


def test_head_sums_at_one_eighth_and_aligns_other_channels():
    info = [dict(chs=16, reduction=s, module=f"m{i}") for i, s in enumerate((8, 16, 32))]
    head = TopFormerHead(info, 5, dw=True).eval()
    assert all(isinstance(a, nn.Identity) for a in head.align) and head.fuse.conv.groups == 16
    feats = [torch.randn(1, 16, 13, 17), torch.randn(1, 16, 7, 9), torch.randn(1, 16, 4, 5)]
    x = feats[0] + sum(F.interpolate(f, size=(13, 17), mode="bilinear", align_corners=False) for f in feats[1:])
    torch.testing.assert_close(head(feats), head.conv_seg(head.fuse(x)))
    mixed = [dict(chs=c, reduction=s, module="m") for c, s in ((16, 8), (24, 16), (32, 32))]
    head = mf.create_model("topformer_head", feature_info=mixed, num_classes=3)
    assert [type(a).__name__ for a in head.align] == ["Identity", "ConvNormAct", "ConvNormAct"]
    with pytest.raises(ValueError, match="missing: \\[4\\]"):
        TopFormerHead(info, 5, in_strides=(4, 8))


# ---- Shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("extractor", ["sase", "mscsa"])
@pytest.mark.parametrize("size", [(64, 64), (97, 131), (130, 65)])
def test_injected_maps_at_every_level(extractor, size):
    """MSCSA in place of SASE feeds every injection level: same maps, same shapes."""
    h, w = size
    model = _tiny(extractor, features_only=True, inject_strides=(4, 8, 16, 32)).eval()
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    with torch.no_grad():
        pyramid, tokens = model.forward_features(torch.randn(2, 3, h, w))
        outs = model(torch.randn(2, 3, h, w))
    assert [p.shape[1] for p in pyramid] == [8, 16, 24, 32]
    # Pooled to 1/64: the 1/32 map pooled once more by 2.
    h32, w32 = pyramid[-1].shape[-2:]
    assert tokens.shape == (2, 80, (h32 - 1) // 2 + 1, (w32 - 1) // 2 + 1)
    for out, s in zip(outs, (4, 8, 16, 32), strict=True):
        assert out.shape == (2, 16, math.ceil(h / s), math.ceil(w / s))
        assert torch.isfinite(out).all()


def test_mscsa_replaces_sase_in_the_registered_models():
    with torch.device("meta"):
        base = mf.create_model("topformer_t_cls", features_only=True)
        ours = mf.create_model("topformer_t_mscsa_cls", features_only=True)
        segmentor = mf.create_model("topformer_b_mscsa")
    assert isinstance(ours.extractor, MSCSA) and ours.extractor.pool_stride == 64
    assert ours.feature_info == base.feature_info  # strides 8/16/32, 128 channels
    attn = ours.extractor.blocks[0].attn1
    assert (len(ours.extractor.blocks), attn.num_heads, attn.head_dim, attn.value_dim) == (2, 4, 14, 28)
    assert ours.extractor.blocks[0].mlp2.fc1.conv.out_channels == 3 * 208
    assert segmentor.backbone.extractor.blocks[0].attn1.head_dim == TABLE7["b"]["head_dim"]
    with torch.device("meta"):
        cls = mf.create_model("topformer_t_mscsa_cls")
    assert cls.extractor.pool_stride == 32 and cls.inject is None


def test_segmentor_any_size_and_small_inputs_padded():
    model = TopFormerSegmentor(dict(**TINY, extractor_kwargs=SASE_TINY), num_classes=4).eval()
    with torch.no_grad():
        for h, w in [(33, 47), (97, 131), (64, 200)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 4, h, w)
    assert model.min_size == 64


def test_classifier_and_its_composition_through_build_classifier():
    model = _tiny("mscsa", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 45, 70)).shape == (2, 7)
    with torch.device("meta"):
        registered = mf.create_model("topformer_t_mscsa_cls")
        tpm = create_topformer("t", features_only=True).tpm
        composed = mf.build_classifier(
            tpm,
            addon=MSCSA(tpm.feature_info, mode="classification", pool_stride=32, **TABLE7["t"]),
            num_classes=1000,
        )
    assert mf.count_params(composed) == mf.count_params(registered)
    assert mf.count_macs(composed) == mf.count_macs(registered)


# ---- Errors -------------------------------------------------------------------------------


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="at least 64x64 pixels; got 63x100"):
        _tiny(features_only=True)(torch.randn(1, 3, 63, 100))
    with pytest.raises(ValueError, match="num_heads=5 does not divide the 208 channels"):
        mf.create_model("topformer_t_mscsa", extractor_kwargs=dict(num_heads=5, head_dim=None))
    assert mf.create_model("topformer_t_mscsa", extractor_kwargs=dict(num_heads=4, head_dim=None)) is not None
    with pytest.raises(ValueError, match="ablation must be one of"):
        mf.create_model("topformer_t_mscsa_cls", ablation="no_pcp")
    with pytest.raises(ValueError, match="TopFormer \\+ MSCSA models"):
        mf.create_model("topformer_t", ablation="pcp")
    with pytest.raises(ValueError, match="inject_strides"):
        _tiny(features_only=True, inject_strides=(2, 8))
    with pytest.raises(ValueError, match="extractor must be one of"):
        _tiny("coat")
    with pytest.raises(ValueError, match="multiple of the coarsest pyramid stride"):
        _tiny(pool_stride=48)


# ---- Official checkpoint layout -----------------------------------------------------------

# Keys and shapes of the released TopFormer-T ADE20K checkpoint (mmseg layout), one per kind of module.
OFFICIAL_T = {
    "backbone.tpm.stem.0.c.weight": (16, 3, 3, 3),
    "backbone.tpm.stem.0.bn.running_var": (16,),
    "backbone.tpm.layer1.conv.0.c.weight": (16, 1, 3, 3),  # expansion 1: depthwise first
    "backbone.tpm.layer1.conv.2.c.weight": (16, 16, 1, 1),
    "backbone.tpm.layer2.conv.0.c.weight": (64, 16, 1, 1),
    "backbone.tpm.layer2.conv.2.c.weight": (64, 1, 3, 3),
    "backbone.tpm.layer2.conv.4.bn.weight": (16,),
    "backbone.tpm.layer9.conv.2.c.weight": (576, 1, 5, 5),
    "backbone.trans.transformer_blocks.0.attn.to_q.c.weight": (64, 208, 1, 1),
    "backbone.trans.transformer_blocks.3.attn.to_v.c.weight": (128, 208, 1, 1),
    "backbone.trans.transformer_blocks.0.attn.proj.1.c.weight": (208, 128, 1, 1),
    "backbone.trans.transformer_blocks.0.mlp.fc1.c.weight": (416, 208, 1, 1),
    "backbone.trans.transformer_blocks.0.mlp.dwconv.bias": (416,),
    "backbone.trans.transformer_blocks.0.mlp.fc2.bn.bias": (208,),
    "backbone.SIM.1.local_embedding.conv.weight": (128, 32, 1, 1),
    "backbone.SIM.3.global_act.bn.weight": (128,),
    "decode_head.linear_fuse.conv.weight": (128, 1, 1, 1),
    "decode_head.conv_seg.weight": (150, 128, 1, 1),
}


def test_official_layouts_load(tmp_path):
    with torch.device("meta"):
        model = mf.create_model("topformer_t")
    official = to_official(model.state_dict(), "mmseg")["state_dict"]
    for key, shape in OFFICIAL_T.items():
        assert tuple(official[key].shape) == shape, key
    assert not any(k.startswith("backbone.SIM.0.") for k in official)
    assert len(official) == len(model.state_dict())

    source = TopFormerSegmentor(dict(**TINY, extractor_kwargs=SASE_TINY), num_classes=3).eval()
    target = TopFormerSegmentor(dict(**TINY, extractor_kwargs=SASE_TINY), num_classes=3).eval()
    path = tmp_path / "ade.pth"
    torch.save(to_official(source.state_dict(), "mmseg"), path)
    mf.load_checkpoint(target, path)
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))

    # ImageNet backbone (no backbone. prefix, under state_dict_ema): into a classifier and into a segmentor.
    classifier = _tiny(num_classes=0)
    sd = {k: v for k, v in to_official(classifier.state_dict(), "imagenet")["state_dict"].items()}
    assert any(k.startswith("trans.transformer_blocks.0.attn.to_k.c.") for k in sd)
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict_ema": sd, "epoch": 300}, path)
    fresh = _tiny(num_classes=0)
    mf.load_checkpoint(fresh, path)
    torch.testing.assert_close(fresh.state_dict()["tpm.layers.2.dw.conv.weight"], sd["tpm.layer3.conv.2.c.weight"])
    with pytest.warns(UserWarning, match="missing"):
        report = mf.load_checkpoint(target, path, strict=False)
    assert report["missing"] and all(".inject." in k or k.startswith("decode_head.") for k in report["missing"])
    assert not report["unexpected"]


def test_converter_keeps_unknown_keys_and_is_idempotent_on_ours():
    state = {"backbone.SIM.0.foo": torch.zeros(1), "backbone.tpm.stem.0.c.weight": torch.zeros(1)}
    out = from_official({"state_dict": state}, prefix="backbone.")
    assert set(out) == {"backbone.SIM.0.foo", "backbone.tpm.stem.conv.weight"}
    model = TopFormerSegmentor(dict(**TINY, extractor_kwargs=SASE_TINY), num_classes=3)
    assert list(model.checkpoint_filter_fn(model.state_dict())) == list(model.state_dict())


# ---- Fidelity -----------------------------------------------------------------------------

# Backbone + head at 512x512 (150 classes), measured on the released code with torchprofile:
# size -> (params M, GMACs). The README's GFLOPs (mmcv's counter, whole segmentor, one decimal).
RELEASED = {"t": (1.39, 0.56), "s": (3.04, 1.15), "b": (5.06, 1.80)}
README_GFLOPS = {"t": 0.6, "s": 1.2, "b": 1.8}


@pytest.mark.parametrize("size", ["t", "s", "b"])
def test_topformer_params_and_macs(size):
    with torch.device("meta"):
        model = mf.create_model(f"topformer_{size}")
    params, gmacs = RELEASED[size]
    assert mf.count_params(model) / 1e6 == pytest.approx(params, rel=0.01)
    assert _gmacs(_LogitsAtEighth(model), 512) == pytest.approx(gmacs, rel=0.05)
    assert round(_gmacs(model, 512, rules="mmcv"), 1) == README_GFLOPS[size]


@pytest.mark.parametrize("size, paper", [("t", 0.55), ("b", 1.8)])
def test_table3_mscsa_flops_match_the_baseline(size, paper):
    with torch.device("meta"):
        base = _gmacs(_LogitsAtEighth(mf.create_model(f"topformer_{size}")), 512)
        ours = _gmacs(_LogitsAtEighth(mf.create_model(f"topformer_{size}_mscsa")), 512)
    assert ours == pytest.approx(paper, rel=0.05)
    assert ours == pytest.approx(base, rel=0.01)


@pytest.mark.parametrize(
    "name, paper", [("t_cls", 0.13), ("t_mscsa_cls", 0.13), ("b_cls", 0.38), ("b_mscsa_cls", 0.38)]
)
def test_table6_classification_flops(name, paper):
    with torch.device("meta"):
        model = mf.create_model(f"topformer_{name}")
    gflops = _gmacs_mmcv_with_attention(model, 224)
    assert gflops == pytest.approx(paper, rel=0.05)
    assert round(gflops, 2) == paper


def test_tables4_5_ablation_flops():
    measured = {}
    for row, (_, paper_m) in MSCSA_ABLATIONS.items():
        with torch.device("meta"):
            model = mf.create_model("topformer_t_mscsa_cls", ablation=row)
        measured[row] = _gmacs_mmcv_with_attention(model, 224) * 1e3
        assert measured[row] == pytest.approx(paper_m, rel=0.025), row
    # Table 4 adds components back cumulatively; each costs a little (+0, +1, +3 M in the paper).
    assert measured["no_options"] < measured["pcp"] < measured["pcp_intra_ffn"] < measured["full"]
    # Table 5: cheaper down-sampling than the default parallel convs.
    assert measured["single"] < measured["cascade"] < measured["avgpool"] < measured["full"]
    with torch.device("meta"):
        model = mf.create_model("topformer_t_mscsa_cls", ablation="no_options")
    block = model.extractor.blocks[0]
    assert block.attn1.pcp is None and len(block.attn1.downsample) == 0
    assert type(block.mlp1).__name__ == "FFN" and block.mlp1.fc1.conv.out_channels == 2 * 208


def test_config_rows_match_the_variants():
    assert topformer_config("t")["extractor_kwargs"]["num_heads"] == 4
    assert [f["chs"] for f in create_topformer("s", features_only=True).tpm.feature_info] == [24, 48, 96, 128]
    with pytest.raises(ValueError, match="size must be one of"):
        topformer_config("l")


@pytest.mark.parametrize(
    "size, lr", [("t", 3e-4), ("s", 1.2e-4), ("b", 1.2e-4), ("t_mscsa", 3e-4), ("b_mscsa", 1.2e-4)]
)
def test_ade20k_recipes(size, lr):
    from pathlib import Path

    from msfusion.engine.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"topformer_{size}_ade20k.yaml")
    assert cfg["optim"]["lr"] == lr and cfg["schedule"]["iters"] == 160_000 and cfg["data"]["batch_size"] == 16
    assert cfg["optim"]["custom_keys"]["head"] == {"lr_mult": 10.0}
    with torch.device("meta"):
        model = mf.create_model(cfg["model"]["name"], num_classes=150, **cfg["model"]["kwargs"])
    assert isinstance(model, TopFormerSegmentor)
