"""Checkpoints: our format, both official SegNeXt layouts, errors that explain themselves."""

import json
import warnings

import pytest
import torch

import msfusion as mf
from msfusion.checkpoint import CheckpointError, atomic_write
from msfusion.convert.segnext import to_official
from msfusion.registry import load_model


def _same_outputs(a, b, size=64):
    a.eval(), b.eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def _randomise(model):
    # Fresh models share init statistics; perturb everything, buffers included, so a
    # load that silently skipped a tensor would show.
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.mul_(1 + 0.1 * torch.rand_like(t)).add_(0.01 * torch.rand_like(t))
    return model


def test_round_trip_in_our_format(tmp_path):
    model = _randomise(mf.create_model("test_segnext", num_classes=7))
    path = mf.save_checkpoint(model, tmp_path / "ckpt", metadata={"step": 5})
    assert path.suffix == ".safetensors"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["model"] == {"name": "test_segnext", "kwargs": {"num_classes": 7}} and meta["step"] == 5
    _same_outputs(model, load_model(path))
    fresh = mf.create_model("test_segnext", num_classes=7)
    mf.load_checkpoint(fresh, path)
    _same_outputs(model, fresh)


@pytest.mark.parametrize("layout", ["original", "mmseg"])
def test_official_segmentor_layouts_load(tmp_path, layout):
    model = _randomise(mf.create_model("segnext_t"))
    state = to_official(model.state_dict(), layout)
    key = (
        "backbone.block1.0.mlp.dwconv.dwconv.weight" if layout == "original" else "backbone.block1.0.mlp.dwconv.weight"
    )
    assert key in state
    assert state["backbone.block1.0.mlp.dwconv.weight" if layout == "mmseg" else key].shape == (256, 1, 3, 3)
    assert state["decode_head.squeeze.gn.weight"].shape == (256,)
    assert state["decode_head.hamburger.ham_in.conv.bias"].shape == (256,)
    torch.save({"meta": {"mmseg_version": "x"}, "state_dict": state}, tmp_path / "official.pth")
    loaded = mf.create_model("segnext_t")
    mf.load_checkpoint(loaded, tmp_path / "official.pth")
    _same_outputs(model, loaded)


@pytest.mark.parametrize("layout", ["original", "mmseg"])
def test_mscan_imagenet_checkpoint_into_classifier_and_segmentor(tmp_path, layout):
    mscan = _randomise(mf.create_model("mscan_t"))
    torch.save({"state_dict": to_official(mscan.state_dict(), layout)}, tmp_path / "mscan_t.pth")
    classifier = mf.create_model("mscan_t")
    mf.load_checkpoint(classifier, tmp_path / "mscan_t.pth")
    _same_outputs(mscan, classifier)

    segmentor = mf.create_model("segnext_t")
    mf.load_checkpoint(segmentor, tmp_path / "mscan_t.pth")
    ours = segmentor.backbone.state_dict()
    theirs = {k: v for k, v in mscan.state_dict().items() if not k.startswith("head.")}
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_fine_tuning_with_another_class_count_drops_only_the_classifier(tmp_path):
    model = _randomise(mf.create_model("test_segnext", num_classes=5))
    path = mf.save_checkpoint(model, tmp_path / "c")
    target = mf.create_model("test_segnext", num_classes=3)
    with pytest.raises(CheckpointError, match="strict=False"):
        mf.load_checkpoint(target, path)
    with pytest.warns(UserWarning, match="decode_head.conv_seg.weight"):
        report = mf.load_checkpoint(target, path, strict=False)
    assert sorted(report["dropped"]) == ["decode_head.conv_seg.bias", "decode_head.conv_seg.weight"]
    assert torch.equal(target.backbone.block1[0].layer_scale_1, model.backbone.block1[0].layer_scale_1)


def test_mismatch_is_reported_as_a_table(tmp_path):
    path = mf.save_checkpoint(mf.create_model("test_segnext"), tmp_path / "c")
    other = mf.create_model("segnext_t")
    with pytest.raises(CheckpointError) as err:
        mf.load_checkpoint(other, path)
    text = str(err.value)
    assert "problem" in text and "mismatched" in text and "missing" in text
    assert "backbone.patch_embed1.proj.0.weight" in text


def test_missing_corrupt_and_non_state_dict_files(tmp_path):
    model = mf.create_model("test_segnext")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        mf.load_checkpoint(model, tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="bad.pth"):
        mf.load_checkpoint(model, tmp_path / "bad.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        mf.load_checkpoint(model, tmp_path / "bad.safetensors")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta_only.pth")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        mf.load_checkpoint(model, tmp_path / "meta_only.pth")


def test_pickled_objects_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("should not run",))

    torch.save({"state_dict": {"x": Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        mf.load_checkpoint(mf.create_model("test_segnext"), tmp_path / "evil.pth")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"good")

    def failing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_strict_false_reports_missing_keys_in_a_warning(tmp_path):
    model = mf.create_model("test_segnext")
    state = {k: v for k, v in model.state_dict().items() if "align" not in k}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="decode_head.align"):
        mf.load_checkpoint(mf.create_model("test_segnext"), tmp_path / "partial.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mf.load_checkpoint(mf.create_model("test_segnext"), tmp_path / "partial.pth", strict=False)
    assert any("decode_head.align" in str(w.message) for w in caught)
