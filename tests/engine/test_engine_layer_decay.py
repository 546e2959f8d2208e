"""Layer-wise lr decay (ced-mmseg constructor) and the UperNet CEDNet recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import msfusion
from msfusion.engine.config import ConfigError, load_config
from msfusion.engine.layer_decay import (
    build_layer_decay_param_groups,
    cednet_layer_id,
    cednet_small_layer_id,
    layer_lr_scale,
)
from msfusion.engine.optim import build_optimizer, build_scheduler
from msfusion.engine.trainer import train

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
VARIANTS = {
    # name: (drop path, layer-decay rule, num_layers); the official CEDNet mmseg configs
    "upernet_cednet_next_t": (0.2, "cednet", 4),
    "upernet_cednet_next_s": (0.3, "cednet_small", 7),
    "upernet_cednet_next_b": (0.4, "cednet_small", 7),
}


def _group_of(groups, name):
    return next(g for g in groups if name in g["names"])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_recipes_validate_and_build(name):
    drop_path, rule, num_layers = VARIANTS[name]
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg["model"]["name"] == name and msfusion.list_models(name) == [name]
    opt = cfg["optim"]
    assert (opt["lr"], opt["weight_decay"], opt["betas"], opt["custom_keys"]) == (1e-4, 0.05, [0.9, 0.999], {})
    assert opt["layer_decay"] == {"rate": 0.9, "num_layers": num_layers, "rule": rule, "head_weight_decay": None}
    sched = cfg["schedule"]
    assert (sched["iters"], sched["warmup_iters"], sched["warmup_ratio"], sched["power"]) == (160000, 1500, 1e-6, 1.0)
    data = cfg["data"]
    assert (data["batch_size"], data["crop_size"], data["train"]["type"]) == (16, [512, 512], "ade20k")
    assert (cfg["eval"]["mode"], cfg["eval"]["stride"]) == ("slide", [341, 341])
    assert cfg["model"]["kwargs"]["drop_path_rate"] == drop_path
    with torch.device("meta"):
        model = msfusion.create_model(name, num_classes=150, **cfg["model"]["kwargs"])
        default = msfusion.create_model(name)
    assert msfusion.count_params(model) == msfusion.count_params(default)
    assert tuple(model.auxiliary_weights) == (0.4,)  # what SegmentationTask weights the aux CE by
    groups = build_layer_decay_param_groups(model, opt["lr"], opt["weight_decay"], **opt["layer_decay"])
    assert sum(len(g["names"]) for g in groups) == len(list(model.parameters()))


def test_cednet_rule_on_the_t_model():
    with torch.device("meta"):
        model = msfusion.create_model("upernet_cednet_next_t", num_classes=150)
    lr, wd = 1e-4, 0.05
    groups = build_layer_decay_param_groups(model, lr, wd, rate=0.9, num_layers=4, rule="cednet")
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for g in groups for n in g["names"]) == sorted(names)
    assert len(groups) == 12  # ids 0..5, each with a decay and a no-decay group
    expected = {
        "backbone.stem.0.weight": 0.9**5,
        "backbone.stages.0.0.pwconv1.weight": 0.9**4,
        "backbone.stages.1.0.encoder.1.0.pwconv1.weight": 0.9**3,
        "backbone.stages.2.1.decoder_upsample.0.0.weight": 0.9**2,
        "backbone.stages.3.0.encoder.2.0.pwconv1.weight": 0.9,
    }
    for name, scale in expected.items():
        g = _group_of(groups, name)
        assert g["lr"] == pytest.approx(lr * scale) and g["weight_decay"] == wd, name
    head_weights = [n for n in names if n.startswith(("decode_head", "auxiliary_head")) and n.endswith("conv.weight")]
    assert head_weights
    for name in head_weights:
        g = _group_of(groups, name)
        assert g["lr"] == pytest.approx(lr) and g["weight_decay"] == wd
    # No weight decay: biases, norms (LN / BN weights), layer-scale gamma, in backbone and heads alike.
    params = dict(model.named_parameters())
    for name in names:
        g = _group_of(groups, name)
        if name.endswith(".bias") or params[name].ndim == 1:
            assert g["weight_decay"] == 0.0, name
        else:
            assert g["weight_decay"] == wd, name
    assert _group_of(groups, "backbone.stem.1.weight")["weight_decay"] == 0.0  # stem LayerNorm
    assert any(".gamma" in n for n in names)
    # Group 0 (the lr the trainer logs) is a full-lr head group.
    assert groups[0]["lr"] == pytest.approx(lr)


def test_cednet_small_rule_splits_each_cascade_stage():
    with torch.device("meta"):
        model = msfusion.create_model("upernet_cednet_next_s", num_classes=150)
    names = {n for n, _ in model.named_parameters()}
    expected = {
        "backbone.stem.3.weight": 0,
        "backbone.stages.0.3.0.weight": 1,  # the p2 stage's downsample
        "backbone.stages.1.0.encoder.0.1.pwconv1.weight": 2,
        "backbone.stages.1.0.encoder_downsample.0.0.weight": 2,
        "backbone.stages.1.0.encoder.1.3.pwconv1.weight": 2,
        "backbone.stages.1.0.encoder.1.4.pwconv1.weight": 3,
        "backbone.stages.1.0.encoder_downsample.1.0.weight": 3,
        "backbone.stages.1.0.encoder.2.0.pwconv1.weight": 3,
        "backbone.stages.1.1.decoder_upsample.0.0.weight": 3,
        "backbone.stages.3.0.encoder.1.6.pwconv1.weight": 7,
        "backbone.stages.4.0.encoder.0.0.pwconv1.weight": 8,
        "backbone.stages.4.0.encoder.2.1.pwconv1.weight": 9,
        "decode_head.conv_seg.weight": 8,
    }
    for name, layer_id in expected.items():
        assert name in names, name
        assert cednet_small_layer_id(name, 7) == layer_id, name
    assert cednet_layer_id("backbone.stages.4.0.encoder.0.0.gamma", 4) == 5
    # ids 8 and 9 are clamped to scale 1 (the seg constructor's min(scale, 1)).
    assert layer_lr_scale(9, 0.9, 7) == layer_lr_scale(8, 0.9, 7) == 1.0
    assert layer_lr_scale(7, 0.9, 7) == pytest.approx(0.9)
    assert layer_lr_scale(0, 0.9, 7) == pytest.approx(0.9**8)
    groups = build_layer_decay_param_groups(model, 1e-4, 0.05, rate=0.9, num_layers=7, rule="cednet_small")
    assert {g["layer_id"] for g in groups} == set(range(10))


def test_optimizer_and_schedule_with_layer_decay():
    model = msfusion.create_model("test_upernet_cednet")
    cfg = load_config(
        CONFIGS / "upernet_cednet_next_t.yaml",
        ["model.name=test_upernet_cednet", "optim.layer_decay.num_layers=3", "schedule.warmup_iters=0"],
    )
    opt = build_optimizer(model, cfg["optim"])
    sched = build_scheduler(opt, cfg["schedule"])
    stem = next(g for g in opt.param_groups if "backbone.stem.0.weight" in g["names"])
    assert stem["lr"] == pytest.approx(1e-4 * 0.9**4)  # 2 cascade stages: ids 0..3, heads 4
    opt.step()
    sched.step()
    factor = 1 - 1 / 160000
    assert stem["lr"] == pytest.approx(1e-4 * 0.9**4 * factor)  # the schedule keeps the per-layer ratio


def test_layer_decay_config_validation():
    path = CONFIGS / "upernet_cednet_next_t.yaml"
    with pytest.raises(ConfigError, match="custom_keys"):
        load_config(path, ["optim.custom_keys={head: {lr_mult: 10.0}}"])
    with pytest.raises(ConfigError, match="rule must be one of"):
        load_config(path, ["optim.layer_decay.rule=convnext"])
    with pytest.raises(ConfigError, match="num_layers"):
        load_config(None, ["optim.layer_decay.rate=0.9", "optim.custom_keys={}"])
    with pytest.raises(ConfigError, match="Did you mean 'optim.layer_decay'"):
        load_config(None, ["optim.layer_dacay.rate=0.9"])
    off = load_config(path, ["optim.layer_decay=null", "optim.custom_keys={}"])
    assert off["optim"]["layer_decay"] is None
    default = load_config(CONFIGS / "segnext_t_ade20k.yaml")
    assert default["optim"]["layer_decay"]["rate"] is None  # SegNeXt keeps its custom keys
    with pytest.raises(ValueError, match="custom_keys"):
        build_optimizer(torch.nn.Linear(2, 2), {**off["optim"], "custom_keys": {"a": {}}, "layer_decay": {
            "rate": 0.9, "num_layers": 1, "rule": "cednet"}})  # fmt: skip


def test_two_training_steps_from_the_t_recipe(tmp_path):
    cfg = load_config(
        CONFIGS / "upernet_cednet_next_t.yaml",
        [
            "model.name=test_upernet_cednet",
            "model.kwargs={}",
            "optim.layer_decay.num_layers=3",
            "data.train={type: shapes, split: train, num_images: 4, image_size: 64}",
            "data.val={}",
            "data.batch_size=2",
            "data.crop_size=[64, 64]",
            "data.scale=[64, 64]",
            "data.num_workers=0",
            "schedule.iters=2",
            "schedule.warmup_iters=1",
            "train.amp=none",
            "train.device=cpu",
            "train.log_interval=1",
            "train.eval_interval=0",
            "train.ckpt_interval=0",
            "train.progress=false",
            "train.tensorboard=false",
            f"train.work_dir={tmp_path}",
        ],
    )
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train(cfg)
    finally:
        torch.set_num_threads(old)
    history = summary["history"]
    assert len(history) == 2
    for record in history:
        assert math.isfinite(record["loss"]) and math.isfinite(record["loss_aux0"])
        assert record["loss"] > record["loss_aux0"] > 0  # the 0.4-weighted FCN term is included


def _official_detection_groups(names_and_ndims, lr, wd, rate, num_layers):
    """ced-mmdet's detection constructor on official names, as its source reads (our wording):
    backbone.* by the cednet rule, scale rate ** (num_layers + 1 - id), 1-D and biases undecayed;
    every name without 'backbone' at lr scale 1 and weight decay 1e-4 whatever its kind."""
    out = {}
    for name, ndim in names_and_ndims:
        if "backbone" not in name:
            out[name] = (lr, 1e-4)
            continue
        layer_id = cednet_layer_id(name, num_layers)
        no_decay = ndim == 1 or name.endswith(".bias")
        out[name] = (lr * rate ** (num_layers + 1 - layer_id), 0.0 if no_decay else wd)
    return out


def test_cednet_detector_groups_equal_the_official_detection_constructor():
    """RetinaNet CEDNet-NeXt-T: the chain's backbone and pyramid are the official ``backbone.*``."""
    with torch.device("meta"):
        model = msfusion.create_model("retinanet_cednet_next_t", num_classes=81)
    lr, wd = 1e-4, 0.05
    groups = build_layer_decay_param_groups(
        model, lr, wd, rate=0.95, num_layers=4, rule="cednet", head_weight_decay=1e-4
    )

    def official_name(ours: str) -> str:  # our layout -> ced-mmdet's (neck convs live in its backbone)
        for mine, theirs in (
            ("backbone.backbone.", "backbone."),
            ("backbone.neck.", "backbone."),
            ("head.", "bbox_head."),
        ):
            if ours.startswith(mine):
                return theirs + ours[len(mine) :]
        raise AssertionError(ours)

    params = list(model.named_parameters())
    official = _official_detection_groups([(official_name(n), p.ndim) for n, p in params], lr, wd, 0.95, 4)
    assert {official_name(n) for n, _ in params} == set(official)
    for name, _ in params:
        group = _group_of(groups, name)
        assert (group["lr"], group["weight_decay"]) == pytest.approx(official[official_name(name)]), name
    assert _group_of(groups, "backbone.backbone.stem.0.weight")["lr"] == pytest.approx(lr * 0.95**5)
    assert _group_of(groups, "head.classification_head.cls_logits.bias")["weight_decay"] == 1e-4
    assert _group_of(groups, "backbone.neck.reduce_convs.0.0.weight")["weight_decay"] == wd


@pytest.mark.parametrize(
    "name", ["retinanet_cednet_next_t", "mask_rcnn_cednet_next_t", "cascade_mask_rcnn_cednet_next_t"]
)
def test_cednet_detection_recipes_use_the_official_layer_decay_and_steps(name):
    cfg = load_config(CONFIGS / f"{name}_coco.yaml")
    rate = 0.6 if name.startswith("cascade") else 0.95
    assert cfg["optim"]["layer_decay"] == {"rate": rate, "num_layers": 4, "rule": "cednet", "head_weight_decay": 1e-4}
    assert cfg["optim"]["custom_keys"] == {}
    schedule = cfg["schedule"]
    per_epoch = 117266 / 16  # 36 epochs, x0.1 after epochs 27 and 33 (the released ced-mmdet configs)
    assert schedule["policy"] == "step" and schedule["iters"] == math.ceil(36 * per_epoch)
    assert schedule["steps"] == [round(27 * per_epoch), round(33 * per_epoch)]
    with torch.device("meta"):
        model = msfusion.create_model(cfg["model"]["name"], **cfg["model"]["kwargs"])
    groups = build_optimizer(model, cfg["optim"]).param_groups
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_head_weight_decay_is_checked():
    with pytest.raises(ConfigError, match="head_weight_decay must be a non-negative number"):
        load_config(CONFIGS / "upernet_cednet_next_t.yaml", ["optim.layer_decay.head_weight_decay=-1"])
