"""Composition by name: build_segmentor / build_classifier, heads by stride, kinds, rebuildable checkpoints."""

import pytest
import torch
from torch import nn

import msfusion as mf
from msfusion.checkpoint import CheckpointError
from msfusion.engine.config import load_config
from msfusion.models.meta_arch.segmentor import Segmentor


class _Features(nn.Module):
    """A hand-written producer whose feature_info can be anything."""

    def __init__(self, info):
        super().__init__()
        self.feature_info = info
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return [self.conv(x)[..., :: i["reduction"], :: i["reduction"]] for i in self.feature_info]


def test_ham_head_reads_strides_8_16_32_whatever_the_positions():
    # resnet18's timm features have strides 2, 4, 8, 16, 32: by position the head would read 4/8/16.
    model = mf.build_segmentor("resnet18", head="ham", num_classes=3, head_kwargs={"channels": 32, "ham_channels": 32})
    strides = [i["reduction"] for i in model.backbone.feature_info]
    assert strides == [2, 4, 8, 16, 32]
    assert model.decode_head.in_strides == (8, 16, 32)
    assert [strides[i] for i in model.decode_head.in_index] == [8, 16, 32]
    assert model.decode_head.in_channels == [128, 256, 512]
    assert model.eval()(torch.randn(1, 3, 45, 70)).shape == (1, 3, 45, 70)


def test_missing_stride_lists_the_strides_there():
    with pytest.raises(ValueError, match=r"strides \[2, 4, 8, 16, 32\].*missing: \[64\]"):
        mf.build_segmentor("resnet18", head="ham", num_classes=3, head_kwargs={"in_strides": (16, 32, 64)})


def test_feature_list_out_of_order_is_refused():
    info = [dict(chs=8, reduction=8), dict(chs=8, reduction=4)]
    with pytest.raises(ValueError, match="increase strictly"):
        mf.build_segmentor(_Features(info), head="fcn", num_classes=3, head_kwargs={"in_stride": 8})


def test_producer_without_feature_info_is_refused():
    with pytest.raises(ValueError, match="no feature_info"):
        mf.build_segmentor(nn.Conv2d(3, 8, 1), head="ham", num_classes=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(head="hamm"), r"unknown head 'hamm'.*Did you mean: ham"),
        (dict(head="ham", neck="fpnn"), r"unknown neck 'fpnn'"),
        (dict(head="ham", addon="mscsaa"), r"unknown addon 'mscsaa'"),
        (dict(head="segnext_t"), r"'segnext_t' is a segmentor, not a head"),
        (dict(head="ham", head_kwargs={"in_strides": (8,)}, neck_kwargs={"x": 1}), "neck_kwargs given without a neck"),
    ],
)
def test_bad_part_names_say_what_exists(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mf.build_segmentor("test_mscan", num_classes=3, **kwargs)


def test_timm_name_without_features_says_why():
    with pytest.raises(ValueError):
        mf.create_model("no_such_timm_model_xyz", features_only=True)


def test_segmentor_features_only_names_its_backbone():
    with pytest.raises(ValueError, match=r"create_model\('mscan_t', features_only=True\)"):
        mf.create_model("segnext_t", features_only=True)


def test_list_models_by_kind():
    assert "segnext_t" in mf.list_models(kind="segmentor")
    assert "segnext_t" not in mf.list_models(kind="classifier")
    assert {"ham", "uper", "mlp", "fcn"} <= set(mf.list_models(kind="head"))
    assert mf.model_kind("mscan_t") == "classifier"
    # Backbones: every name create_model(name, features_only=True) builds, the ImageNet classifiers included.
    backbones = mf.list_models(kind="backbone")
    assert {"mscan_t", "mscan_l", "cednet_next_t", "topformer_b_cls"} <= set(backbones) and "segnext_t" not in backbones
    assert set(mf.list_models(kind="classifier")) <= set(backbones)
    with pytest.raises(ValueError, match="kind must be one of"):
        mf.list_models(kind="decoder")


def test_composed_segmentor_checkpoint_rebuilds_exactly(tmp_path):
    torch.manual_seed(0)
    model = mf.build_segmentor(
        "test_mscan", head="uper", num_classes=4, head_kwargs={"channels": 8, "norm": "bn"}
    ).eval()
    path = mf.save_checkpoint(model, tmp_path / "composed")
    again = mf.load_model(path).eval()
    assert isinstance(again, Segmentor)
    x = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_part_given_as_module_is_refused_at_save_with_the_reason(tmp_path):
    model = mf.build_segmentor(
        _Features([dict(chs=8, reduction=8)]), head="fcn", num_classes=3, head_kwargs={"in_stride": 8, "channels": 8}
    )
    with pytest.raises(CheckpointError, match="backbone is a _Features"):
        mf.save_checkpoint(model, tmp_path / "c")
    assert not (tmp_path / "c.safetensors").exists()
    weights = mf.save_checkpoint(model, tmp_path / "c", allow_unrebuildable=True)
    with pytest.raises(CheckpointError, match="no model description"):
        mf.load_model(weights)


def test_module_built_by_name_is_recorded(tmp_path):
    backbone = mf.create_model("test_mscan", features_only=True)
    model = mf.build_segmentor(backbone, head="ham", num_classes=3, head_kwargs={"channels": 32, "ham_channels": 32})
    path = mf.save_checkpoint(model.eval(), tmp_path / "c")
    again = mf.load_model(path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_build_classifier_any_backbone_and_checkpoint(tmp_path):
    model = mf.build_classifier("resnet18", num_classes=7).eval()
    x = torch.randn(2, 3, 61, 75)
    assert model(x).shape == (2, 7)
    path = mf.save_checkpoint(model, tmp_path / "cls")
    with torch.no_grad():
        torch.testing.assert_close(mf.load_model(path).eval()(x), model(x))


def test_segnext_preset_takes_an_addon_or_neck_like_any_composition():
    head_kwargs = {"channels": 32, "ham_channels": 32}
    plain = mf.create_model("test_segnext", num_classes=3)
    assert plain.addon is None and plain.neck is None
    with pytest.raises(ValueError, match="unknown neck"):
        mf.create_model("test_segnext", neck="no_such_neck", head_kwargs=head_kwargs)


def test_slide_inference_with_a_covering_crop_equals_whole_inference():
    torch.manual_seed(0)
    model = mf.create_model("test_segnext", num_classes=3).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        whole = model(x)
        slid = model.slide_inference(x, crop_size=(64, 64), stride=(32, 32))
        torch.testing.assert_close(slid, whole)
        tiled = model.slide_inference(x, crop_size=(32, 32), stride=(16, 16))
    assert tiled.shape == whole.shape and not torch.allclose(tiled, whole)


def test_multi_scale_at_scale_one_without_flip_is_the_softmax_of_forward():
    torch.manual_seed(0)
    model = mf.create_model("test_segnext", num_classes=3).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(model.aug_inference(x, scales=(1.0,), flip=False), model(x).softmax(dim=1))
        flipped = model.aug_inference(x, scales=(1.0,), flip=True)
        expected = (model(x).softmax(1) + model(x.flip(-1)).flip(-1).softmax(1)) / 2
        torch.testing.assert_close(flipped, expected)


def test_recipe_composes_a_segmentor(tmp_path):
    from msfusion.engine.tasks import build_task
    from msfusion.engine.trainer import build_model

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model:\n  compose:\n    backbone: test_mscan\n    head: mlp\n    head_kwargs: {channels: 32}\n"
        "train:\n  work_dir: " + str(tmp_path / "w") + "\n"
    )
    cfg = load_config(recipe)
    task = build_task(cfg["task"])

    class _Data:
        num_classes = 4
        class_names = ["a", "b", "c", "d"]
        ignore_index = 255

    kwargs = task.model_kwargs(_Data())
    model = build_model(cfg, task, _Data())
    assert isinstance(model, Segmentor) and model.num_classes == kwargs["num_classes"] == 4
    assert model.decode_head.in_strides == (4, 8, 16, 32)


def test_recipe_compose_is_validated(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  compose:\n    head: ham\n")
    with pytest.raises(ValueError, match="model.compose must be a mapping with a backbone"):
        load_config(recipe)


def test_build_classifier_builds_an_addon_in_its_classification_form():
    model = mf.build_classifier("resnet18", addon="mscsa", num_classes=5).eval()
    assert model.addon.mode == "classification"
    assert len(model.addon.feature_info) == 1
    with torch.no_grad():
        assert model(torch.randn(2, 3, 97, 131)).shape == (2, 5)
    dense = mf.build_classifier("resnet18", addon="mscsa", addon_kwargs={"mode": "dense"}, num_classes=5)
    assert dense.addon.mode == "dense"
