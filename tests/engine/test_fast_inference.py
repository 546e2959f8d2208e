"""``optimize_for_inference``: every rewrite keeps the eager float32 outputs, and the original model is untouched.

BatchNorm statistics, affine parameters and layer scales are drawn at random,
so that folding them (SegNeXt Fig. 2a pre-norms, conv -> BN pairs) changes
every weight it touches. Nothing here times anything.
"""

import copy

import pytest
import torch
from torch import nn

import msfusion as mf
from msfusion.engine.fast_inference import FoldedMSCABlock, fold_batch_norms
from msfusion.layers import ConvNormAct
from msfusion.models.backbones.mscan import MSCABlock

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _randomise_norms(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.5 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.3 * torch.randn(m.num_features, generator=g))
        if isinstance(m, MSCABlock):
            m.layer_scale_1.data.copy_(0.5 * torch.randn(m.layer_scale_1.shape, generator=g))
            m.layer_scale_2.data.copy_(0.5 * torch.randn(m.layer_scale_2.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def segnext():
    torch.manual_seed(0)
    return _randomise_norms(mf.create_model("test_segnext"))


@pytest.fixture(scope="module")
def images():
    # An odd size: the segmentor pads inside and crops back.
    return torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "options",
    [
        dict(channels_last=False, fold_bn=False),
        dict(channels_last=False, fold_bn=True),
        dict(channels_last=True, fold_bn=False),
        dict(channels_last=True, fold_bn=True),
    ],
    ids=["copy", "fold", "channels_last", "fold+channels_last"],
)
def test_each_rewrite_keeps_outputs(segnext, images, options):
    with torch.no_grad():
        expected = segnext(images)
    fast = mf.optimize_for_inference(segnext, keep_memory=False, **options)
    out = fast(images)
    assert out.shape == expected.shape
    assert (out - expected).abs().max() < TOL
    assert not out.requires_grad


def test_folding_rewrites_every_block_and_leaves_no_batch_norm(segnext):
    fast = mf.optimize_for_inference(segnext, channels_last=False, keep_memory=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not any(isinstance(m, MSCABlock) for m in fast.modules())
    blocks = sum(isinstance(m, MSCABlock) for m in segnext.modules())
    assert sum(isinstance(m, FoldedMSCABlock) for m in fast.modules()) == blocks > 0


def test_folded_block_equals_block_alone():
    torch.manual_seed(0)
    block = _randomise_norms(MSCABlock(16, mlp_ratio=2, drop_path=0.1))
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        assert (FoldedMSCABlock(block)(x) - block(x)).abs().max() < TOL


def test_conv_bn_pairs_fold_in_sequential_and_conv_norm_act():
    torch.manual_seed(0)
    model = _randomise_norms(
        nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            ConvNormAct(8, 8, 3, norm="bn", act="relu"),
        )
    )
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
        folded = copy.deepcopy(model)
        assert fold_batch_norms(folded) == 2
        assert (folded(x) - expected).abs().max() < TOL
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def test_sliding_window_and_flip_use_the_optimised_forward(segnext, images):
    fast = mf.optimize_for_inference(segnext, keep_memory=False)
    with torch.no_grad():
        expected = segnext.slide_inference(images, (48, 48), (32, 32))
        assert (fast.slide_inference(images, (48, 48), (32, 32)) - expected).abs().max() < TOL
        expected = segnext.aug_inference(images, scales=(0.75, 1.0), flip=True)
        assert (fast.aug_inference(images, scales=(0.75, 1.0), flip=True) - expected).abs().max() < TOL


def test_original_model_is_untouched_and_still_trains(segnext, images):
    model = copy.deepcopy(segnext)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mf.optimize_for_inference(model, keep_memory=False)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())
    model.train()
    loss = model(images).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_compiled_copy_keeps_outputs():
    # The graph capture of the optimised forward (dynamo + AOT autograd, no code generation: inductor
    # takes minutes on 2 cores; bench_vs_mmseg.py reports inductor's output difference at full size).
    model = _randomise_norms(mf.create_model("test_mscan"))
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(images)
    fast = mf.optimize_for_inference(model, compile="aot_eager", keep_memory=False)
    assert (fast(images) - expected).abs().max() < TOL
    assert fast.inference_optimizations["compile"] == "aot_eager"


def test_bad_input_is_a_clear_error(segnext):
    with pytest.raises(ValueError, match="nn.Module"):
        mf.optimize_for_inference("segnext_t")
    with pytest.raises(ValueError, match="backend"):
        mf.optimize_for_inference(segnext, compile=1)


def _speed_recipe(work_dir, *extra):
    from msfusion.engine.config import load_config

    return load_config(
        None,
        [
            "model.name=test_segnext",
            "data.train={type: shapes, split: train, num_images: 4, image_size: 48}",
            "data.batch_size=2",
            "data.crop_size=[32, 32]",
            "data.scale=[48, 48]",
            "data.eval_scale=null",
            "data.num_workers=0",
            "schedule.iters=2",
            "schedule.warmup_iters=1",
            "train.eval_interval=0",
            "train.ckpt_interval=1",
            "train.keep_checkpoints=5",
            "train.progress=false",
            "train.tensorboard=false",
            "train.channels_last=true",
            # train.keep_freed_memory is left off: it is process-wide and the test suite shares a process.
            "optim.fused=true",
            f"train.work_dir={work_dir}",
            *extra,
        ],
    )


def test_training_speed_switches_resume_bit_identically(tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file

    from msfusion.engine.trainer import train

    full, part = tmp_path / "full", tmp_path / "part"
    train(_speed_recipe(full))
    (part / "checkpoints").mkdir(parents=True)
    for f in (full / "checkpoints").glob("iter_0000001*"):
        shutil.copy(f, part / "checkpoints" / f.name)
    pointer = {"step": 1, "weights": "iter_0000001.safetensors", "state": "iter_0000001.state.pt"}
    (part / "checkpoints" / "latest.json").write_text(json.dumps(pointer))
    assert train(_speed_recipe(part), resume=True)["step"] == 2
    expected = load_file(full / "checkpoints" / "iter_0000002.safetensors")
    got = load_file(part / "checkpoints" / "iter_0000002.safetensors")
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
