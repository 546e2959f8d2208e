"""TopFormer checkpoint key layouts (the released TopFormer code, arXiv 2204.05525).

Two official layouts exist:

- ``"mmseg"``: the ADE20K segmentors, ``{"state_dict": ..., "meta": ...}``
  with ``backbone.tpm.*`` (token pyramid), ``backbone.trans.*`` (SASE),
  ``backbone.SIM.{i}.*`` (injection at pyramid level i: 1, 2, 3 for strides
  8, 16, 32) and ``decode_head.linear_fuse.*`` / ``decode_head.conv_seg.*``.
- ``"imagenet"``: the ImageNet-pretrained backbones, the same keys without
  ``backbone.`` and without ``SIM`` or ``decode_head``; the weights sit under
  ``state_dict_ema``, ``state_dict`` or ``model``.

Official module names and ours:

==============================================  ==============================================
official                                        msfusion
==============================================  ==============================================
``tpm.stem.0.{c,bn}``                           ``tpm.stem.{conv,bn}``
``tpm.layer{j}.conv.{0,2,4}.{c,bn}`` (t != 1)   ``tpm.layers.{j-1}.{expand,dw,project}.{conv,bn}``
``tpm.layer{j}.conv.{0,2}.{c,bn}`` (t == 1)     ``tpm.layers.{j-1}.{dw,project}.{conv,bn}``
``trans.transformer_blocks.{i}.attn.to_q.c``    ``extractor.blocks.{i}.attn.q.conv`` (k, v alike)
``...attn.proj.1.c``, ``...mlp.fc1.c``          ``...attn.proj.1.conv``, ``...mlp.fc1.conv``
``SIM.{i}.*``                                   ``inject.{k}.*`` (k-th injected level)
``decode_head.linear_fuse.*``                   ``decode_head.fuse.*``
==============================================  ==============================================

Keys that fit no rule are passed through unchanged, so that ``load_checkpoint``
reports them instead of dropping them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["LAYOUTS", "from_official", "to_official", "unwrap"]

LAYOUTS = ("mmseg", "imagenet")
_WRAPPERS = ("state_dict_ema", "state_dict", "model")
_EXPANDED = ("expand", "dw", "project")
_PLAIN = ("dw", "project")

_OFFICIAL_LAYER = re.compile(r"^tpm\.layer(\d+)\.conv\.(\d+)\.(c|bn)\.(.+)$")
_OURS_LAYER = re.compile(r"^tpm\.layers\.(\d+)\.(expand|dw|project)\.(conv|bn)\.(.+)$")
_OFFICIAL_SIM = re.compile(r"^SIM\.(\d+)\.(.+)$")
_OURS_SIM = re.compile(r"^inject\.(\d+)\.(.+)$")
_CONV_BN = re.compile(r"\.c\.(weight)$")


def unwrap(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict inside an official checkpoint (``state_dict_ema``, ``state_dict``, ``model``) or itself."""
    for key in _WRAPPERS:
        inner = checkpoint.get(key)
        if isinstance(inner, dict) and any(isinstance(v, Tensor) for v in inner.values()):
            return inner
    return checkpoint


def _expanded_layers(keys: Sequence[str], official: bool) -> set[int]:
    """Token-pyramid blocks with an expansion conv (official index j, or our index j-1)."""
    if official:
        return {int(m.group(1)) for k in keys if (m := _OFFICIAL_LAYER.match(k)) and m.group(2) == "4"}
    return {int(m.group(1)) for k in keys if (m := _OURS_LAYER.match(k)) and m.group(2) == "expand"}


def _from_official_key(key: str, expanded: set[int], inject_index: Sequence[int]) -> str:
    if key.startswith("tpm.stem.0."):
        rest = key.removeprefix("tpm.stem.0.")
        return "tpm.stem." + ("conv." + rest.removeprefix("c.") if rest.startswith("c.") else rest)
    if m := _OFFICIAL_LAYER.match(key):
        j, n, part, rest = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        names = _EXPANDED if j in expanded else _PLAIN
        if n % 2 or n // 2 >= len(names):
            return key
        return f"tpm.layers.{j - 1}.{names[n // 2]}.{'conv' if part == 'c' else 'bn'}.{rest}"
    if key.startswith("trans.transformer_blocks."):
        key = "extractor.blocks." + key.removeprefix("trans.transformer_blocks.")
        key = (
            key.replace(".attn.to_q.", ".attn.q.").replace(".attn.to_k.", ".attn.k.").replace(".attn.to_v.", ".attn.v.")
        )
        return _CONV_BN.sub(r".conv.\1", key)
    if m := _OFFICIAL_SIM.match(key):
        level = int(m.group(1))
        return f"inject.{list(inject_index).index(level)}.{m.group(2)}" if level in inject_index else key
    return key


def from_official(
    state_dict: dict[str, Any], *, inject_index: Sequence[int] = (1, 2, 3), prefix: str = ""
) -> dict[str, Tensor]:
    """An official checkpoint (either layout, wrapped or not) -> our keys.

    Args:
        state_dict: the checkpoint or its state dict.
        inject_index: pyramid levels of the model's injection modules, in
            order (official ``SIM.{i}`` becomes ``inject.{position of i}``).
        prefix: put before backbone keys (``"backbone."`` for a segmentor,
            ``""`` for a ``TopFormer`` classifier or backbone).

    Returns:
        The renamed state dict; ``decode_head.*`` keys keep that prefix.
    """
    state = {k.removeprefix("module."): v for k, v in unwrap(state_dict).items() if isinstance(v, Tensor)}
    inner = [k.removeprefix("backbone.") for k in state]
    expanded = _expanded_layers(inner, official=True)
    out = {}
    for key, value in state.items():
        if key.startswith("decode_head."):
            out[key.replace("decode_head.linear_fuse.", "decode_head.fuse.", 1)] = value
            continue
        out[prefix + _from_official_key(key.removeprefix("backbone."), expanded, inject_index)] = value
    return out


def _to_official_key(key: str, expanded: set[int], inject_index: Sequence[int]) -> str:
    if key.startswith("tpm.stem."):
        rest = key.removeprefix("tpm.stem.")
        return "tpm.stem.0." + ("c." + rest.removeprefix("conv.") if rest.startswith("conv.") else rest)
    if m := _OURS_LAYER.match(key):
        i, name, part, rest = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        names = _EXPANDED if i in expanded else _PLAIN
        return f"tpm.layer{i + 1}.conv.{2 * names.index(name)}.{'c' if part == 'conv' else 'bn'}.{rest}"
    if key.startswith("extractor.blocks."):
        key = "trans.transformer_blocks." + key.removeprefix("extractor.blocks.")
        key = (
            key.replace(".attn.q.", ".attn.to_q.").replace(".attn.k.", ".attn.to_k.").replace(".attn.v.", ".attn.to_v.")
        )
        return key.replace(".conv.weight", ".c.weight")
    if m := _OURS_SIM.match(key):
        return f"SIM.{inject_index[int(m.group(1))]}.{m.group(2)}"
    return key


def to_official(
    state_dict: dict[str, Tensor], layout: str = "mmseg", *, inject_index: Sequence[int] = (1, 2, 3)
) -> dict[str, Any]:
    """Our state dict -> an official checkpoint dict (export, and round-trip tests).

    ``"mmseg"`` takes a ``TopFormerSegmentor`` state dict and returns
    ``{"state_dict": ..., "meta": {}}``; ``"imagenet"`` takes a ``TopFormer``
    state dict and returns ``{"state_dict": ...}`` (keys without our names,
    such as a classifier's ``head.*``, unchanged).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    prefix = "backbone." if layout == "mmseg" else ""
    inner = [k.removeprefix(prefix) for k in state_dict if k.startswith(prefix)]
    expanded = _expanded_layers(inner, official=False)
    out = {}
    for key, value in state_dict.items():
        if layout == "mmseg" and key.startswith("decode_head."):
            out[key.replace("decode_head.fuse.", "decode_head.linear_fuse.", 1)] = value
        elif key.startswith(prefix):
            out[prefix + _to_official_key(key.removeprefix(prefix), expanded, inject_index)] = value
        else:
            out[key] = value
    return {"state_dict": out, "meta": {}} if layout == "mmseg" else {"state_dict": out}
