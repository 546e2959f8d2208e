"""Layer-wise learning-rate decay: ced-mmseg's ``LearningRateDecayOptimizerConstructor``.

Source: the official CEDNet segmentation code (zhanggang001/CEDNet@305d637,
``ced-mmseg/mmcv_custom/layer_decay_optimizer_constructor.py`` and
``configs/cednet/upernet_ced_next_*_512_160k_ade20k_ms.py``), a ConvNeXt-style
constructor. Re-implemented from its behaviour, in our own code:

- Every trainable parameter gets a layer id from its name (the ``rule``):

  * ``cednet`` (UperNet CEDNet-NeXt-T, ``num_layers`` 4): ``backbone.stem.*``
    -> 0, ``backbone.stages.k.*`` -> k + 1.
  * ``cednet_small`` (S / B, ``num_layers`` 7): ``backbone.stem.*`` -> 0,
    ``backbone.stages.0.*`` (the stride-4 blocks and their downsample) -> 1;
    each cascade stage k >= 1 is split in two: its encoder's level-0 blocks,
    ``encoder_downsample.0`` and level-1 blocks 0-3 -> 2k; level-1 blocks 4 on,
    ``encoder_downsample.1``, the level-2 (LR) blocks and the decoder -> 2k + 1.
  * Any other parameter (the decode and auxiliary heads, and backbone
    parameters outside ``stem``/``stages``) -> ``num_layers + 1``.

- lr scale = ``min(1, rate ** (num_layers + 1 - layer_id))``: 1 for the heads,
  ``rate`` for the last counted layer, ``rate ** (num_layers + 1)`` for the
  stem. (The constructor writes it as ``decay_rate ** (L - id - 1)`` with
  ``L = num_layers + 2``.) The segmentation constructor clamps the scale at 1;
  that matters for S/B, whose 4-stage backbone has ids up to 9 with
  ``num_layers`` 7, so the whole last stage trains at the full lr.
- Weight decay 0 for every 1-D parameter (norm weights and biases, layer-scale
  ``gamma``), every ``*.bias`` and the top-level ``pos_embed`` / ``cls_token``;
  the configured weight decay for all other parameters, heads included. (The
  detection copy of the constructor gives non-backbone parameters weight
  decay 1e-4 instead; the segmentation one, used here, does not.)
- mmcv ``custom_keys`` play no part (the constructor replaces the default
  one), so a recipe with layer decay must leave ``optim.custom_keys`` empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "LAYER_ID_RULES",
    "cednet_layer_id",
    "cednet_small_layer_id",
    "layer_lr_scale",
    "no_weight_decay",
    "build_layer_decay_param_groups",
]

_STAGE = re.compile(r"stages\.(\d+)\.")
_ENCODER_BLOCK = re.compile(r"stages\.\d+\.0\.encoder\.(\d+)\.(\d+)\.")
_ENCODER_DOWN = re.compile(r"stages\.\d+\.0\.encoder_downsample\.(\d+)\.")


def cednet_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a segmentor parameter under ced-mmseg's ``layer_wise_cednet`` rule."""
    if name.startswith("backbone.stem."):
        return 0
    if name.startswith("backbone.stages."):
        return int(_STAGE.match(name, len("backbone.")).group(1)) + 1
    return num_layers + 1


def cednet_small_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a segmentor parameter under ced-mmseg's ``layer_wise_cednet_small`` rule."""
    if name.startswith("backbone.stem."):
        return 0
    if not name.startswith("backbone.stages."):
        return num_layers + 1
    rel = name[len("backbone.") :]
    stage = int(_STAGE.match(rel).group(1))
    if stage == 0:
        return 1
    block = _ENCODER_BLOCK.match(rel)
    if block is not None:
        level, index = int(block.group(1)), int(block.group(2))
        early = level == 0 or (level == 1 and index < 4)
        return 2 * stage if early else 2 * stage + 1
    down = _ENCODER_DOWN.match(rel)
    if down is not None:
        return 2 * stage if int(down.group(1)) == 0 else 2 * stage + 1
    return 2 * stage + 1  # the decoder (and anything else in the stage)


LAYER_ID_RULES: dict[str, Callable[[str, int], int]] = {
    "cednet": cednet_layer_id,
    "cednet_small": cednet_small_layer_id,
}


def layer_lr_scale(layer_id: int, rate: float, num_layers: int) -> float:
    """``min(1, rate ** (num_layers + 1 - layer_id))`` (the ced-mmseg scale, clamped at 1)."""
    return min(1.0, float(rate) ** (num_layers + 1 - layer_id))


def no_weight_decay(name: str, param: Any) -> bool:
    """The constructor's no-decay set: 1-D parameters, ``*.bias``, ``pos_embed`` / ``cls_token``."""
    return param.ndim == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")


def build_layer_decay_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    rate: float,
    num_layers: int,
    rule: str,
) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise lr decay and the official no-decay set.

    One group per (layer id, decay / no decay), as the constructor builds
    them. Each group has ``lr`` = ``lr * scale``, ``weight_decay``, and for
    inspection ``names``, ``layer_id``, ``lr_mult`` (the scale), ``decay_mult``
    (0 or 1) and ``custom_key`` (None), the keys of
    :func:`msfusion.engine.optim.build_param_groups`. Groups are ordered from
    the highest layer id down, so group 0 (the one the trainer logs) is a
    scale-1 head group. Frozen parameters are left out.

    Raises:
        ValueError: unknown ``rule``, or bad ``rate`` / ``num_layers``.
    """
    if rule not in LAYER_ID_RULES:
        raise ValueError(f"unknown layer-decay rule {rule!r}; choose one of {sorted(LAYER_ID_RULES)}")
    if not rate > 0:
        raise ValueError(f"layer-decay rate must be positive, got {rate!r}")
    if int(num_layers) < 1:
        raise ValueError(f"layer-decay num_layers must be a positive integer, got {num_layers!r}")
    layer_id_of = LAYER_ID_RULES[rule]
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer_id = layer_id_of(name, num_layers)
        no_decay = no_weight_decay(name, param)
        scale = layer_lr_scale(layer_id, rate, num_layers)
        group = groups.setdefault(
            (layer_id, no_decay),
            {
                "params": [],
                "names": [],
                "lr": lr * scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_mult": scale,
                "decay_mult": 0.0 if no_decay else 1.0,
                "custom_key": None,
                "layer_id": layer_id,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups, key=lambda k: (-k[0], k[1]))]
