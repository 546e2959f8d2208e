"""``addon="mscsa"`` fits the backbone it is given (MSCSA, arXiv 2308.05872, Table 7), and its edges.

The add-on reads the stride 4-32 maps by stride, takes the Table 7 row of the
backbone's family (else one rule on its widths), records what it resolved in
the checkpoint sidecar (old sidecars still load as saved), refuses
contradicting ``addon_kwargs`` and batch-1 training inputs its BatchNorms cannot take.
"""

import json

import pytest
import torch

import msfusion as mf
import msfusion.models.presets.mscsa  # noqa: F401  (registers the variants)
from msfusion.models.addons.mscsa import MSCSA, TABLE7, mscsa_config
from msfusion.models.meta_arch.detector import DetectorComplexity

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _info(widths, strides=(4, 8, 16, 32)):
    return [dict(chs=c, reduction=s, module=f"s{i}") for i, (c, s) in enumerate(zip(widths, strides, strict=True))]


def test_resnet50_with_addon_equals_resnet50_mscsa():
    with torch.device("meta"):
        composed = mf.build_classifier("resnet50", addon="mscsa", num_classes=1000)
        preset = mf.create_model("resnet50_mscsa")
    assert composed.addon.in_strides == [4, 8, 16, 32]  # the stride-2 stem map is not read
    assert mf.count_params(composed) == mf.count_params(preset) == 36_996_712
    assert mf.count_macs(composed) == mf.count_macs(preset)
    assert composed.addon.config_source == "MSCSA Table 7, resnet50 row"


@pytest.mark.parametrize(
    "name,backbone", [("mask_rcnn_r50_mscsa", "resnet50"), ("mask_rcnn_pvt_v2_b0_mscsa", "pvt_v2_b0")]
)
def test_detector_composed_with_addon_equals_preset(name, backbone):
    with torch.device("meta"):
        preset = mf.create_model(name)
        composed = mf.build_detector("mask_rcnn", backbone=backbone, addon="mscsa", num_classes=81)
    assert mf.count_params(composed) == mf.count_params(preset)
    size = (1, 3, 128, 160)
    macs = [mf.count_macs(DetectorComplexity(m, num_rois=4, num_mask_rois=2), size) for m in (composed, preset)]
    assert macs[0] == macs[1]


@pytest.mark.parametrize(
    "backbone,widths,row",
    [
        ("resnet50.a1_in1k", (256, 512, 1024, 2048), "resnet50"),  # a pretrained tag names the same model
        ("resnet101", (256, 512, 1024, 2048), "resnet50"),  # family row by widths
        ("resnet34", (64, 128, 256, 512), "resnet18"),
        ("pvt_v2_b1", (64, 128, 320, 512), "pvt_v2_b1"),  # by name, although B2 has the same widths
        ("pvt_v2_b4", (64, 128, 320, 512), "pvt_v2_b2"),  # the last row with those widths
        ("swin_tiny_patch4_window7_224", (96, 192, 384, 768), "swin_t"),
        ("convnext_small", (96, 192, 384, 768), "convnext_t"),
    ],
)
def test_table7_row_of_the_backbones_family(backbone, widths, row):
    source, cfg = mscsa_config(_info(widths), backbone, mode="classification")
    assert source == f"MSCSA Table 7, {row} row"
    expected = {k: v for k, v in TABLE7[row].items() if k != "dense_pool_stride"}
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["in_strides"] == [4, 8, 16, 32] and cfg["in_chs"] == list(widths)


def test_dense_pooling_and_upsampling_follow_the_row():
    _, dense = mscsa_config(_info((152, 320, 320, 320)), "coat_small", mode="dense")
    _, cls = mscsa_config(_info((152, 320, 320, 320)), "coat_small", mode="classification")
    assert dense["pool_stride"] == 32 and "allow_upsample" not in dense
    assert cls["pool_stride"] == 16 and cls["allow_upsample"] is True  # Table 7's 1/16 (1/32)


def test_other_backbones_derive_the_configuration_from_their_widths():
    # mobilenetv3_small_100: strides 2-32 with widths 16, 16, 24, 48, 576; no Table 7 family.
    widths, strides = (16, 16, 24, 48, 576), (2, 4, 8, 16, 32)
    source, cfg = mscsa_config(_info(widths, strides), "mobilenetv3_small_100", mode="dense")
    assert source.startswith("derived from the widths [16, 24, 48, 576]")
    c = 16 + 24 + 48 + 576
    assert cfg["in_strides"] == [4, 8, 16, 32] and cfg["squeeze_ratio"] is None and cfg["pool_stride"] == 32
    assert cfg["head_dim"] == round(c / 3.2 / 8) == 26 and cfg["num_heads"] == 8 and cfg["depth"] == 1
    # A ResNet whose widths no row has is not forced into a row either.
    assert mscsa_config(_info((32, 64, 128, 256)), "resnet10t")[0].startswith("derived")


def test_maps_outside_strides_4_to_32_pass_through_unchanged():
    info = _info((8, 8, 16, 24, 32, 16), (2, 4, 8, 16, 32, 64))
    addon = mf.registry.model_entrypoint("mscsa", kind="addon")(info, num_heads=2, head_dim=4, squeeze_ratio=None)
    assert addon.in_strides == [4, 8, 16, 32]
    assert [(f["chs"], f["reduction"]) for f in addon.feature_info] == [(f["chs"], f["reduction"]) for f in info]
    feats = [torch.randn(2, f["chs"], 128 // f["reduction"], 128 // f["reduction"]) for f in info]
    out = addon.eval()(feats)
    assert out[0] is feats[0] and out[-1] is feats[-1]
    assert all(o.shape == f.shape and not torch.equal(o, f) for o, f in zip(out[1:5], feats[1:5], strict=True))


def test_addon_kwargs_that_contradict_the_backbone_are_refused():
    info = _info((64, 128, 256, 512))
    named = "strides \\[4, 8, 16, 32\\] with widths \\[64, 128, 256, 512\\]"
    with pytest.raises(ValueError, match=f"does not have.*{named}"):
        MSCSA(info, in_strides=[8, 16, 32, 64])
    with pytest.raises(ValueError, match=f"in_chs=\\[64, 128, 320, 512\\] does not match.*{named}"):
        MSCSA(info, in_chs=[64, 128, 320, 512])
    with pytest.raises(ValueError, match=f"neither a backbone stride.*{named}"):
        MSCSA(info, pool_stride=48)
    with pytest.raises(ValueError, match="strides \\[2, 4, 8, 16, 32\\] with widths"):
        with torch.device("meta"):
            mf.build_classifier("resnet18", addon="mscsa", addon_kwargs={"in_strides": [4, 64]}, num_classes=3)


def test_checkpoint_records_the_resolved_configuration_and_old_sidecars_load_as_saved(tmp_path):
    name = "mobilenetv3_small_100"  # strides 2-32: the old add-on also read the stride-2 map
    new = mf.build_classifier(name, addon="mscsa", num_classes=3)
    path = mf.save_checkpoint(new, tmp_path / "new")
    recorded = json.loads(path.with_suffix(".json").read_text())["model"]["kwargs"]["addon_kwargs"]
    assert recorded["in_strides"] == [4, 8, 16, 32] and recorded["head_dim"] == 26
    assert mf.load_model(path).addon.in_chs == new.addon.in_chs

    # A checkpoint of the old default: PVTv2-B1's row on every map, and a sidecar without the settings.
    old_cfg = dict(pool_stride=32, squeeze_ratio=5 / 8, depth=1, num_heads=8, head_dim=24, mlp_ratio=2.0)
    old = mf.build_classifier(name, addon="mscsa", num_classes=3, addon_kwargs={**old_cfg, "in_strides": "all"})
    path = mf.save_checkpoint(old, tmp_path / "old")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["model"]["kwargs"]["addon_kwargs"] = None  # what the old code wrote
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    loaded = mf.load_model(path)  # strict: every tensor fits
    assert loaded.addon.in_chs == [16, 16, 24, 48, 576] and loaded.addon.split_chs == [10, 10, 15, 30, 360]
    assert loaded.addon.blocks[0].attn1.head_dim == 24
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), old.eval()(x))


def test_batch_one_training_on_small_inputs_is_refused_with_the_smallest_size():
    torch.manual_seed(0)
    model = mf.create_model("resnet18_mscsa", num_classes=3).train()
    with pytest.raises(ValueError, match="at least 97 pixels on one side"):
        model(torch.randn(1, 3, 96, 96))  # refused before the backbone runs
    model(torch.randn(1, 3, 97, 64)).sum().backward()  # the smallest that trains: a 4x2 pooled grid
    model(torch.randn(2, 3, 96, 96)).sum().backward()  # two samples: BatchNorm has two values
    seg = mf.create_model("topformer_t_mscsa").train()
    with pytest.raises(ValueError, match="at least 193 pixels on one side"):
        seg(torch.randn(1, 3, 97, 131))  # TopFormer + MSCSA pools to 1/64


def test_every_composer_records_the_resolved_settings():
    with torch.device("meta"):
        seg = mf.build_segmentor("pvt_v2_b0", addon="mscsa", neck="fpn", head="semantic_fpn", num_classes=3)
        det = mf.build_detector("retinanet", backbone="pvt_v2_b0", addon="mscsa", num_classes=3)
    row = dict(TABLE7["pvt_v2_b0"])
    for model in (seg, det):
        recorded = model.model_cfg["kwargs"]["addon_kwargs"]
        assert recorded == {"mode": "dense", **row, "in_strides": [4, 8, 16, 32], "in_chs": [32, 64, 160, 256]}


def test_pvt_v2_b0_detector_row_counts_with_one_stated_convention():
    # PVT's get_flops adds the attention products to mmcv's count; torchprofile counts them (README).
    from msfusion.analysis.report import model_report

    report = model_report("mask_rcnn_pvt_v2_b0_mscsa")
    assert report["rules"] == "torchprofile" and report["paper_gmacs"] == 199
    assert abs(report["gmacs"] - 198.5) < 0.05
