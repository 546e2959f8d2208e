"""One way to load weights: create_model(pretrained=) and a recipe's model.pretrained share a loader and a report.

Also what the hub cache check does with a plain-file entry, the offline hint's command and torch.hub's hash check.
Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import re
import types
import warnings

import pytest
import torch
from safetensors.torch import save_file

import msfusion as mf
from msfusion import weights as W
from msfusion.checkpoint import CheckpointError
from msfusion.engine.config import load_config
from msfusion.engine.tasks import build_task
from msfusion.engine.trainer import build_model


def _file(tmp_path, name: str, edit=None, **kwargs) -> tuple:
    """A test_segnext state dict saved as safetensors, after ``edit(state)``."""
    torch.manual_seed(0)
    source = mf.create_model("test_segnext", **kwargs)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    if edit is not None:
        edit(state)
    path = tmp_path / name
    save_file(state, str(path))
    return source, path


def _recipe_model(path, partial: bool = False):
    cfg = load_config(
        None,
        ["model.name=test_segnext", f"model.pretrained={path}", f"model.pretrained_partial={str(partial).lower()}"],
    )
    return build_model(cfg, build_task("segmentation"), types.SimpleNamespace(num_classes=3))


def _widen(state):
    key = "backbone.patch_embed1.proj.0.weight"
    state[key] = torch.cat([state[key], state[key][:1]], dim=0)  # one more output channel than the model


def test_a_wrong_shape_outside_the_head_is_refused_by_both_routes_with_the_same_table(tmp_path, capsys):
    source, path = _file(tmp_path, "wide.safetensors", _widen, num_classes=3)
    key = "backbone.patch_embed1.proj.0.weight"
    out_chs, *rest = source.state_dict()[key].shape
    own, wide = "x".join(map(str, (out_chs, *rest))), "x".join(map(str, (out_chs + 1, *rest)))
    row = rf"{re.escape(key)}\s+{wide}\s+{own}\s+another shape outside the head"
    with pytest.raises(CheckpointError, match="pretrained_partial") as direct:
        mf.create_model("test_segnext", num_classes=3, pretrained=str(path))
    with pytest.raises(CheckpointError, match="pretrained_partial") as recipe:
        _recipe_model(path)
    assert re.search(row, str(direct.value)), str(direct.value)
    assert str(direct.value) == str(recipe.value)  # one loader, one message

    # Allowed when asked: everything else loads, and the report names the tensor that did not.
    with pytest.warns(UserWarning, match=row):
        partial = mf.create_model("test_segnext", num_classes=3, pretrained=str(path), pretrained_partial=True)
    built = _recipe_model(path, partial=True)
    printed = capsys.readouterr().out
    assert printed.startswith("model.pretrained: ") and re.search(row, printed)
    for model in (partial, built):
        for name, value in source.state_dict().items():
            if name != key:
                torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)


def test_another_class_count_loads_with_the_head_in_the_report(tmp_path, capsys):
    source, path = _file(tmp_path, "three.safetensors", num_classes=3)
    with pytest.warns(UserWarning) as caught:
        five = mf.create_model("test_segnext", num_classes=5, pretrained=str(path))
    text = str(caught[0].message)
    assert "loaded" in text and "decode_head.conv_seg.weight" in text and "another shape in the head" in text
    for key, value in source.state_dict().items():
        if not key.startswith("decode_head.conv_seg"):
            torch.testing.assert_close(five.state_dict()[key], value, rtol=0, atol=0)
    cfg = load_config(None, ["model.name=test_segnext", f"model.pretrained={path}"])
    build_model(cfg, build_task("segmentation"), types.SimpleNamespace(num_classes=5))
    assert capsys.readouterr().out.strip() == f"model.pretrained: {text}"  # one report, word for word


def test_a_file_of_another_family_is_one_short_paragraph(tmp_path):
    other = mf.save_checkpoint(mf.create_model("test_upernet_cednet", num_classes=3), tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"loaded \d+ of \d+ model tensors \(\d+%\).*pretrained_partial") as err:
        _recipe_model(other)
    assert len(str(err.value).splitlines()) == 1
    report = W.load_pretrained(mf.create_model("test_segnext", num_classes=3), other, partial=True)
    assert report.loaded < 0.5 * report.expected and report.skipped


# ---- the hub cache: a plain-file entry, the offline hint, torch.hub's hash check --------------------------


@pytest.fixture
def plain_hub_file(tmp_path, monkeypatch):
    """A timm hub file stored in the cache as a plain file (no blob link), as on Windows without symlinks."""
    import timm
    from safetensors.torch import save

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    entry = W.timm_weights("test_convnext")
    data = save(timm.create_model("test_convnext").state_dict())
    repo = tmp_path / "hf" / "hub" / ("models--" + entry.hf_hub_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    path = repo / "snapshots" / commit / entry.hf_filename
    path.write_bytes(data)
    return entry, path, hashlib.sha256(data).hexdigest()


def _fake_hub(monkeypatch, sha256: str | None, calls: list):
    import huggingface_hub

    def get_paths_info(self, repo_id, paths, revision=None, **kwargs):
        calls.append((repo_id, paths, revision))
        return [types.SimpleNamespace(lfs=types.SimpleNamespace(sha256=sha256) if sha256 else None)]

    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", get_paths_info)


def test_a_plain_file_in_the_hub_cache_is_checked_against_the_hub_or_said_unchecked(plain_hub_file, monkeypatch):
    entry, path, sha = plain_hub_file
    calls: list = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub(monkeypatch, sha, calls)
    with pytest.warns(UserWarning, match="without a SHA-256 check: it is a plain file.*HF_HUB_OFFLINE is set"):
        assert W.resolve_weights(entry) == path
    assert calls == []  # offline: the hub is not asked

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # checked: no warning at all
        assert W.resolve_weights(entry) == path
    assert calls == [(entry.hf_hub_id, [entry.hf_filename], path.parent.name)]

    _fake_hub(monkeypatch, "0" * 64, calls)
    with pytest.raises(W.WeightsError, match="git-LFS SHA-256 the hub publishes.*moved to"):
        W.resolve_weights(entry)
    assert not path.exists() and path.with_name(path.name + ".sha256-mismatch").exists()


def test_the_offline_hint_names_the_installed_download_command(tmp_path, monkeypatch):
    import importlib.metadata
    import importlib.util

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    version = tuple(int(part) for part in importlib.metadata.version("huggingface_hub").split(".")[:2])
    has_hf = version >= (0, 34)  # the `hf` command arrived in huggingface_hub 0.34
    with pytest.raises(W.WeightsError, match="hf download timm/test_convnext" if has_hf else "huggingface-cli"):
        W.resolve_weights(W.timm_weights("test_convnext"))
    real = importlib.util.find_spec

    def without_cli(name, *args):  # huggingface_hub < 0.34: no huggingface_hub.cli package at all
        if name.startswith("huggingface_hub.cli"):
            raise ModuleNotFoundError(f"No module named {name.rsplit('.', 1)[0]!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_cli)
    assert W.hub_download_command() == "huggingface-cli download"
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "huggingface_hub" else real(name, *a)
    )
    assert W.hub_download_command().startswith("pip install huggingface_hub")


def test_a_url_download_goes_through_torch_hub_with_the_published_hash(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = {}

    def download(url, dst, hash_prefix=None, progress=True):
        seen.update(url=url, hash_prefix=hash_prefix)
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "deadbeef")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    entry = W.get_weights("mscan_t.in1k")
    with pytest.raises(W.WeightsError, match="invalid hash value"):
        W.resolve_weights(entry)
    assert seen == {"url": entry.url, "hash_prefix": "119e8c9f"}
    assert not (W.torch_hub_dir() / entry.filename).exists()
