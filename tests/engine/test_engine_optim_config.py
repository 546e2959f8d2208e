"""Optimiser groups (mmcv custom-key rules), the warm-up + poly schedule, and recipe validation."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
import yaml

import msfusion
from msfusion.engine.config import ConfigError, apply_overrides, load_config, validate_config
from msfusion.engine.demo import DEMO_RECIPE
from msfusion.engine.optim import build_optimizer, build_param_groups, build_scheduler, match_custom_key

OFFICIAL_KEYS = {"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}}
ROOT = Path(__file__).resolve().parents[2]


def test_match_custom_key_longest_then_alphabetical_first_only():
    keys = {"ab": {}, "ba": {}, "abc": {}, "head": {}, "norm": {}}
    assert match_custom_key("x.abc.y", keys) == "abc"  # longest first
    assert match_custom_key("x.aba.y", keys) == "ab"  # equal length: alphabetical ("ab" < "ba")
    # 'head' (4) and 'norm' (4): alphabetical, so a head's norm gets the head rule only.
    assert match_custom_key("decode_head.squeeze.gn.norm", keys) == "head"
    assert match_custom_key("encoder.stem", keys) is None


def _group_of(groups, name):
    return next(g for g in groups if name in g["names"])


def test_official_param_groups_on_segnext():
    model = msfusion.create_model("test_segnext", num_classes=5)
    groups = build_param_groups(model, lr=6e-5, weight_decay=0.01, custom_keys=OFFICIAL_KEYS)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for g in groups for n in g["names"]) == sorted(names)
    head_gn = next(n for n in names if n.startswith("decode_head") and ".gn." in n)
    g = _group_of(groups, head_gn)
    assert g["lr"] == pytest.approx(6e-4) and g["weight_decay"] == pytest.approx(0.01)  # head wins over norm
    norm1 = next(n for n in names if "norm1" in n)
    g = _group_of(groups, norm1)
    assert g["lr"] == pytest.approx(6e-5) and g["weight_decay"] == 0.0
    stem_bn = "backbone.patch_embed1.proj.1.weight"
    if stem_bn in names:  # the stem BatchNorm matches no key: it keeps weight decay (official)
        g = _group_of(groups, stem_bn)
        assert g["weight_decay"] == pytest.approx(0.01) and g["custom_key"] is None
    bias = next(n for n in names if n.startswith("backbone") and n.endswith("bias") and "norm" not in n)
    assert _group_of(groups, bias)["weight_decay"] == pytest.approx(0.01)


def _mmcv_lr(it, base, iters, warmup, ratio, power=1.0, min_lr=0.0):
    regular = (base - min_lr) * (1 - it / iters) ** power + min_lr
    if it < warmup:
        k = (1 - it / warmup) * (1 - ratio)
        return regular * (1 - k)
    return regular


def test_schedule_matches_mmcv_poly_with_linear_warmup_and_resumes():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, {"lr": 1e-2, "weight_decay": 0.0, "betas": [0.9, 0.999], "custom_keys": {}})
    cfg = {"iters": 100, "warmup_iters": 10, "warmup_ratio": 1e-6, "power": 1.0, "min_lr": 1e-4}
    sched = build_scheduler(opt, cfg)
    seen = []
    for it in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if it == 40:
            state = sched.state_dict()
    for it in (0, 5, 10, 50, 99):
        assert seen[it] == pytest.approx(_mmcv_lr(it, 1e-2, 100, 10, 1e-6, 1.0, 1e-4), rel=1e-9)
    assert seen[0] < 1e-7 and seen[10] > seen[50] > seen[99]
    # A fresh scheduler loaded from the state continues with the same lrs.
    opt2 = build_optimizer(model, {"lr": 1e-2, "weight_decay": 0.0, "betas": [0.9, 0.999], "custom_keys": {}})
    sched2 = build_scheduler(opt2, cfg)
    sched2.load_state_dict(state)  # saved after the step of iteration 40
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(seen[42], rel=1e-12)
    assert sched2.lr_lambdas[0].warmup_iters == 10


def test_step_schedule_equals_torch_linear_warmup_then_multistep_and_resumes():
    """``policy: step`` = torch's LinearLR(start_factor=ratio) chained with MultiStepLR (the detection 1x)."""
    from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR

    sgd = {"type": "sgd", "lr": 0.02, "weight_decay": 1e-4, "custom_keys": {}}
    cfg = validate_config({"schedule": {"policy": "step", "iters": 120, "warmup_iters": 10, "warmup_ratio": 1e-3,
                                        "steps": [80, 110]}})["schedule"]  # fmt: skip
    ours = build_optimizer(torch.nn.Linear(2, 2), sgd)
    reference = build_optimizer(torch.nn.Linear(2, 2), sgd)
    scheduler = build_scheduler(ours, cfg)
    chained = ChainedScheduler(
        [LinearLR(reference, start_factor=1e-3, total_iters=10), MultiStepLR(reference, [80, 110], gamma=0.1)]
    )
    for it in range(120):
        assert ours.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-9), it
        ours.step(), reference.step(), scheduler.step(), chained.step()
        if it == 90:
            state = scheduler.state_dict()
    assert ours.param_groups[0]["lr"] == pytest.approx(0.02 * 0.01)
    resumed = build_optimizer(torch.nn.Linear(2, 2), sgd)
    again = build_scheduler(resumed, cfg)
    again.load_state_dict(state)
    assert again.lr_lambdas[0].steps == [80, 110] and again.lr_lambdas[0].gamma == 0.1


@pytest.mark.parametrize(
    "schedule, message",
    [
        ({"policy": "step", "iters": 100}, "schedule.steps must be increasing"),
        ({"policy": "step", "iters": 100, "steps": [90, 60]}, "schedule.steps must be increasing"),
        ({"policy": "step", "iters": 100, "steps": [60, 100]}, "between 0 and schedule.iters"),
        ({"policy": "step", "iters": 100, "steps": [60], "gamma": 0}, "schedule.gamma must be a number in"),
        ({"iters": 100, "steps": [60]}, "the steps would be ignored"),
        ({"policy": "cosine"}, "schedule.policy must be one of"),
    ],
)
def test_step_schedule_settings_are_checked(schedule, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"schedule": schedule})


def test_a_warmup_as_long_as_the_run_is_warned(recwarn):
    opt = build_optimizer(
        torch.nn.Linear(2, 2), {"lr": 1e-2, "weight_decay": 0.0, "betas": [0.9, 0.999], "custom_keys": {}}
    )
    build_scheduler(opt, {"iters": 100, "warmup_iters": 99})
    assert not recwarn.list, "a warm-up shorter than the run is fine"
    with pytest.warns(UserWarning, match=r"warmup_iters \(50\) is not below schedule.iters \(30\).*warmup_iters=3"):
        build_scheduler(opt, {"iters": 30, "warmup_iters": 50})


def test_unknown_keys_rejected_with_did_you_mean(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim.lerning_rate.*Did you mean"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"Did you mean 'train.seed'"):
        load_config(None, ["train.sed=3"])
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(None, ["train.amp=fp8"])


def test_overrides_parse_yaml_scalars_and_open_trees():
    cfg = load_config(
        None, ["optim.lr=1e-3", "data.crop_size=[64, 32]", "data.train.num_images=7", "train.clip_grad=null"]
    )
    assert cfg["optim"]["lr"] == 1e-3 and cfg["data"]["crop_size"] == [64, 32]
    assert cfg["data"]["train"] == {"num_images": 7} and cfg["train"]["clip_grad"] is None
    assert apply_overrides({}, ["model.kwargs.anything=1"])["model"]["kwargs"] == {"anything": 1}


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    "path", sorted(glob.glob(str(ROOT / "configs" / "segnext_*.yaml"))) + [str(ROOT / "configs" / "demo_shapes.yaml")]
)
def test_shipped_recipes_validate(path):
    cfg = load_config(path)
    assert msfusion.list_models(cfg["model"]["name"]) == [cfg["model"]["name"]]


def test_demo_yaml_equals_embedded_recipe():
    from_yaml = validate_config(yaml.safe_load((ROOT / "configs" / "demo_shapes.yaml").read_text()))
    embedded = validate_config(DEMO_RECIPE)
    from_yaml["train"]["work_dir"] = embedded["train"]["work_dir"]
    assert from_yaml == embedded
