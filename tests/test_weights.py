"""Pretrained weights: the table, the caches (offline), the hash check and every file layout.

Nothing here touches the network: every test points TORCH_HOME / HF_HOME at a
temporary folder, sets HF_HUB_OFFLINE=1 and writes the files it needs there,
in the layout torch.hub and the Hugging Face hub cache use.
"""

from __future__ import annotations

import hashlib
import io
import re

import pytest
import timm
import torch
from safetensors.torch import save as save_safetensors

import msfusion as mf
from msfusion import weights as W
from msfusion.checkpoint import CheckpointError
from msfusion.convert.segnext import to_official


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty torch.hub and Hugging Face caches under tmp_path, offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _hf_place(cache_root, repo_id: str, filename: str, data: bytes) -> tuple:
    """Write ``data`` as the hub cache does: blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main."""
    repo = cache_root / "hf" / "hub" / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha256(data).hexdigest()
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / filename).symlink_to(f"../../blobs/{digest}")
    return snap / filename, repo / "blobs" / digest


def _pth_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "meta": {}}, buffer)
    return buffer.getvalue()


def test_table_entries_are_complete_and_hashes_match_file_names():
    names = W.list_weights()
    assert {f"mscan_{s}.in1k" for s in "tsbl"} | {f"segnext_{s}.ade20k" for s in "tsbl"} <= set(names)
    for name in names:
        entry = W.get_weights(name)
        assert entry.url.startswith("https://") and entry.licence and entry.source and entry.dataset
        assert mf.list_models(entry.model), f"{name} fits no registered model"
        # Only the 8-digit prefix is published, in the file name; it must be the one checked.
        assert entry.sha256 is None
        assert re.search(rf"-{entry.sha256_prefix}\.pth$", entry.filename)
    assert W.get_weights("mscan_t.in1k").filename == "mscan_t_20230227-119e8c9f.pth"
    assert W.default_weights("segnext_t").name == "segnext_t.ade20k"


def test_unknown_weights_name_lists_available(caches):
    with pytest.raises(ValueError, match=r"no weights called 'segnext_t\.coco'.*segnext_t\.ade20k"):
        mf.create_model("test_segnext", pretrained="segnext_t.coco")
    with pytest.raises(ValueError, match=r"no published weights for 'test_cednet_next'.*mscan_t"):
        mf.create_model("test_cednet_next", pretrained=True)


def test_offline_missing_file_names_the_file_and_folder(caches):
    expected = caches / "torch" / "hub" / "checkpoints" / "mscan_t_20230227-119e8c9f.pth"
    with pytest.raises(W.WeightsError, match=re.escape(str(expected))) as info:
        mf.create_model("test_mscan", pretrained="mscan_t.in1k")
    assert "HF_HUB_OFFLINE" in str(info.value) and "download.openmmlab.com" in str(info.value)


def test_hash_mismatch_moves_the_file_aside(caches):
    path = W.torch_hub_dir() / W.get_weights("mscan_t.in1k").filename
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the published file")
    with pytest.raises(W.WeightsError, match="moved to .*sha256-mismatch") as info:
        W.resolve_weights(W.get_weights("mscan_t.in1k"))
    assert "starting with 119e8c9f" in str(info.value)
    assert not path.exists()
    assert path.with_name(path.name + ".sha256-mismatch").read_bytes() == b"not the published file"


def _tiny_official_entry(monkeypatch, data: bytes) -> W.Weights:
    """A table entry for a tiny MSCAN file whose name carries its real hash prefix, as mmseg publishes."""
    stamp = hashlib.sha256(data).hexdigest()[:8]
    entry = W.Weights(
        name="test_mscan.in1k",
        model="test_mscan",
        url=f"https://example.invalid/test_mscan_20230227-{stamp}.pth",
        sha256_prefix=stamp,
        licence="Apache-2.0",
        source="written by this test",
        dataset="none",
        num_classes=10,
    )
    monkeypatch.setitem(W._TABLE, entry.name, entry)
    (W.torch_hub_dir()).mkdir(parents=True, exist_ok=True)
    (W.torch_hub_dir() / entry.filename).write_bytes(data)
    return entry


def test_official_layout_from_the_torch_hub_cache_into_classifier_and_segmentor(caches, monkeypatch):
    torch.manual_seed(0)
    source = mf.create_model("test_mscan").eval()
    # The original SegNeXt key layout (mlp.dwconv.dwconv), wrapped in mmcv's state_dict container.
    _tiny_official_entry(monkeypatch, _pth_bytes(to_official(source.state_dict(), "original")))

    classifier = mf.create_model("test_mscan", pretrained="test_mscan.in1k").eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(classifier(x), source(x), rtol=0, atol=0)

    # pretrained=True picks the variant's first entry; another class count keeps a fresh classifier.
    with pytest.warns(UserWarning, match=r"loaded 195 of 197 model tensors.*\n.*\n.*\n  head.weight  10x32    5x32 "):
        five = mf.create_model("test_mscan", num_classes=5, pretrained=True)
    torch.testing.assert_close(five.patch_embed1.proj[0].weight, source.patch_embed1.proj[0].weight)

    # The encoder file into a segmentor fills its backbone; the decoder stays initialised.
    segmentor = mf.create_model("test_segnext", num_classes=3, pretrained="test_mscan.in1k")
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(segmentor.backbone.state_dict()[key], value, rtol=0, atol=0)

    # And into the backbone of a composed model.
    composed = mf.build_segmentor(
        "test_mscan", head="fcn", num_classes=3, backbone_kwargs={"pretrained": "test_mscan.in1k"}
    )
    torch.testing.assert_close(composed.backbone.block2[0].mlp.dwconv.weight, source.block2[0].mlp.dwconv.weight)


def _timm_file(monkeypatch, caches, name: str = "test_convnext") -> tuple:
    torch.manual_seed(0)
    full = timm.create_model(name).eval()
    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    link, blob = _hf_place(caches, hub_id, "model.safetensors", save_safetensors(full.state_dict()))
    return full, link, blob


def test_timm_hub_weights_into_features_backbone_and_composed_model(caches, monkeypatch, tmp_path):
    full, _, _ = _timm_file(monkeypatch, caches)
    x = torch.randn(1, 3, 64, 64)
    reference = full.forward_intermediates(x, intermediates_only=True)

    with pytest.warns(UserWarning, match="head.fc.weight"):  # the classifier has no place: named, not hidden
        backbone = mf.create_model("test_convnext", features_only=True, pretrained=True).eval()
    for got, want in zip(backbone(x), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    with pytest.warns(UserWarning, match="no place in a features-only backbone"):
        seg = mf.build_segmentor("test_convnext", head="fcn", num_classes=3, backbone_kwargs={"pretrained": True})
    for got, want in zip(seg.eval().backbone(x), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    # The checkpoint of the fine-tuned model rebuilds without resolving the hub weights again.
    path = mf.save_checkpoint(seg, tmp_path / "seg.safetensors")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    again = mf.load_model(path).eval()
    torch.testing.assert_close(again(x), seg(x), rtol=0, atol=0)


def test_timm_hub_blob_mismatch_moved_aside(caches, monkeypatch):
    _, link, blob = _timm_file(monkeypatch, caches)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # one byte changed: the LFS id no longer matches
    with pytest.raises(W.WeightsError, match="git-LFS object id.*moved to"):
        mf.create_model("test_convnext", features_only=True, pretrained=True)
    assert not link.exists() and blob.with_name(blob.name + ".sha256-mismatch").exists()


def test_timm_offline_without_file_says_how_to_get_it(caches):
    command = re.escape(W.hub_download_command())  # `hf download`, or `huggingface-cli download` before 0.34
    with pytest.raises(W.WeightsError, match=rf"`{command} timm/test_convnext\.r160_in1k") as info:
        mf.create_model("test_convnext", features_only=True, pretrained=True)
    assert str(caches / "hf" / "hub") in str(info.value)


def test_torchvision_resnet_file_loads_into_timm_backbone(tmp_path):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(tv.state_dict(), path)
    with pytest.warns(UserWarning, match="fc.weight"):
        backbone = mf.create_model("resnet18", features_only=True, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    expected = []
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        y = layer(y)
        expected.append(y)
    got = backbone(x)
    assert [g.shape[1] for g in got[-4:]] == [64, 128, 256, 512]
    for g, e in zip(got[-4:], expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_our_backbone_file_into_composed_model(tmp_path):
    torch.manual_seed(0)
    backbone = mf.create_model("test_convnext", features_only=True)
    path = mf.save_checkpoint(backbone, tmp_path / "backbone.safetensors")
    seg = mf.build_segmentor("test_convnext", head="fcn", num_classes=3)
    mf.load_checkpoint(seg, path)
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(seg.backbone.state_dict()[key], value, rtol=0, atol=0)


def test_a_file_of_another_family_is_refused(tmp_path, caches, monkeypatch):
    vit = timm.create_model("test_vit")
    path = tmp_path / "vit.safetensors"
    path.write_bytes(save_safetensors(vit.state_dict()))
    with pytest.raises(CheckpointError, match="does not fit"):
        mf.create_model("test_convnext", features_only=True, pretrained=str(path))
    with pytest.raises(FileNotFoundError, match="pretrained file not found"):
        mf.create_model("test_convnext", features_only=True, pretrained=str(tmp_path / "nope.pth"))


def test_paper_recipes_name_published_weights():
    import pathlib

    import yaml

    named = {}
    for path in sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        value = (yaml.safe_load(path.read_text()).get("model") or {}).get("pretrained")
        if value:
            named[path.name] = value
    assert named["segnext_t_ade20k.yaml"] == "mscan_t.in1k"
    for recipe, value in named.items():
        known = value in W.list_weights() or getattr(timm.models.get_pretrained_cfg(value), "hf_hub_id", None)
        assert known, f"{recipe}: model.pretrained {value!r} names no published weights"


def test_cli_version_weights_listing_and_table_width(capsys):
    from msfusion.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith(f"msfusion {mf.__version__}")
    assert main(["models", "segnext_t*", "--weights"]) == 0
    out = capsys.readouterr().out
    assert "segnext_t.ade20k" in out and "05bd8466" in out and "Apache-2.0" in out
    assert main(["models", "cednet_next_s"]) == 0
    out = capsys.readouterr().out
    assert "55 (code 56.2)" in out and "9.8 (code 9.66)" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_every_cli_option_has_help_and_shared_options_agree():
    import argparse

    from msfusion.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing, devices = [], {}
    for command, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings and action.help is None:
                missing.append(f"{command} {action.option_strings[0]}")
            if "--device" in action.option_strings:
                devices[command] = action.help
    assert not missing, f"options without help text: {missing}"
    assert {"bench", "predict", "train", "eval"} <= set(devices)
    assert all("cpu" in text and "cuda" in text for text in devices.values())
    bench = sub.choices["bench"].parse_args(["segnext_t", "--input", "256"])
    assert bench.input == (256, 256)
