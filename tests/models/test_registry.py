"""The registry and create_model: names, errors, the timm adapter."""

import pytest
import torch

import msfusion as mf
from msfusion.registry import paper_figures


def test_list_models_is_sorted_and_filters():
    names = mf.list_models()
    assert names == sorted(names)
    assert {"segnext_t", "segnext_s", "segnext_b", "segnext_l", "mscan_t", "mscan_l"} <= set(names)
    assert mf.list_models("segnext_?") == ["segnext_b", "segnext_l", "segnext_s", "segnext_t"]
    assert not any(n.startswith("test_") for n in names)
    assert "test_segnext" in mf.list_models("test_*")


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="segnext_t"):
        mf.create_model("segnex_t")


def test_pretrained_true_offline_says_which_file_to_place(tmp_path, monkeypatch):
    # pretrained=True resolves the published weights (msfusion.weights); offline, the error names the file.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="Place the file at .*mscan_t_20230227-119e8c9f.pth"):
        mf.create_model("mscan_t", pretrained=True)


def test_out_indices_needs_features_only():
    with pytest.raises(ValueError, match="features_only"):
        mf.create_model("mscan_t", out_indices=(1, 2))


def test_model_cfg_is_recorded():
    model = mf.create_model("test_segnext", num_classes=3)
    assert model.model_cfg == {"name": "test_segnext", "kwargs": {"num_classes": 3}}


@pytest.mark.parametrize("name, chs", [("resnet18", [64, 128, 256, 512]), ("convnext_atto", [40, 80, 160, 320])])
def test_any_timm_model_is_a_backbone(name, chs):
    backbone = mf.create_model(name, features_only=True, out_indices=(-4, -3, -2, -1))
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == chs == [i["chs"] for i in backbone.feature_info]
    assert [64 // f.shape[-1] for f in feats] == [i["reduction"] for i in backbone.feature_info]


def test_timm_nhwc_backbone_returns_channels_first():
    # Swin's timm features are NHWC; the adapter must hand out (B, C, H, W).
    backbone = mf.create_model("swin_tiny_patch4_window7_224", features_only=True)
    feats = backbone(torch.randn(1, 3, 224, 224))
    assert [f.shape[1] for f in feats] == [i["chs"] for i in backbone.feature_info] == [96, 192, 384, 768]
    assert [f.shape[-1] for f in feats] == [56, 28, 14, 7]


def test_paper_figures_present_for_segnext():
    fig = paper_figures("segnext_b")
    assert fig is not None and fig.params_m == 27.6 and fig.gmacs == 34.9 and fig.input_size == (3, 512, 512)
