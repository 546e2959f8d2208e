"""Layer-wise learning-rate decay: ced-mmseg's and ced-mmdet's ``LearningRateDecayOptimizerConstructor``.

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
  detection copy of the constructor gives the heads weight decay 1e-4
  instead: see "Detectors" below.)
- mmcv ``custom_keys`` play no part (the constructor replaces the default
  one), so a recipe with layer decay must leave ``optim.custom_keys`` empty.

Detectors (``ced-mmdet/mmdet/core/optimizers/layer_decay_optimizer_constructor.py``,
same commit, the RetinaNet / Mask R-CNN / Cascade CEDNet configs): the same
rules, applied to the names inside the model's feature chain, so a detector's
``backbone.backbone.stages.k`` counts as ``backbone.stages.k``; CEDNet's
pyramid (the chain's ``neck`` here, convs inside the official backbone) gets
id ``num_layers + 1`` and the configured weight decay, as there. Every
parameter outside the chain (the detection heads) gets lr scale 1 and the
weight decay ``head_weight_decay`` (1e-4 in those configs), 1-D parameters
and biases included: the official constructor sets that decay on the heads'
groups whatever their kind. ``head_weight_decay: null`` keeps the
segmentation behaviour above.
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
    "chain_relative_names",
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
    head_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise lr decay and the official no-decay set.

    Layer ids come from each parameter's name inside the model's feature
    chain (:func:`chain_relative_names`). ``head_weight_decay``: the weight
    decay of every parameter outside the chain's backbone, add-on and neck
    (ced-mmdet's detection heads: 1e-4); None treats them as the rest
    (ced-mmseg). One group per (layer id, decay / no decay, head), as the
    constructor builds them. Each group has ``lr`` = ``lr * scale``,
    ``weight_decay``, and for inspection ``names``, ``layer_id``, ``lr_mult``
    (the scale), ``decay_mult`` (its weight decay over the configured one: 0
    or 1 but for the heads) and ``custom_key`` (None), the keys of
    :func:`msfusion.engine.optim.build_param_groups`. Groups are ordered from
    the highest layer id down, so group 0 (the one the trainer logs) has
    scale 1. Frozen parameters are left out.

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
    groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
    relative_names = chain_relative_names(model)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        relative, in_chain = relative_names[name]
        head = head_weight_decay is not None and not in_chain
        layer_id = num_layers + 1 if head else layer_id_of(relative, num_layers)
        no_decay = no_weight_decay(relative, param) and not head
        scale = layer_lr_scale(layer_id, rate, num_layers)
        decay = float(head_weight_decay) if head else (0.0 if no_decay else weight_decay)
        group = groups.setdefault(
            (layer_id, no_decay, head),
            {
                "params": [],
                "names": [],
                "lr": lr * scale,
                "weight_decay": decay,
                "lr_mult": scale,
                "decay_mult": decay / weight_decay if weight_decay else (0.0 if no_decay else 1.0),
                "custom_key": None,
                "layer_id": layer_id,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups, key=lambda k: (-k[0], k[2], k[1]))]


def chain_relative_names(model: nn.Module) -> dict[str, tuple[str, bool]]:
    """Each parameter name -> (its name inside the model's feature chain, whether it lies in the chain's parts).

    The layer rules read names as a segmentor has them (``backbone.stages.k``);
    a detector holds its chain one level down (``backbone.backbone.stages.k``).
    A model without a :class:`~msfusion.models.chain.FeatureChain` keeps its
    names, and all of its parameters count as in the chain.
    """
    from msfusion.models.chain import FeatureChain

    prefix = next((f"{n}." if n else "" for n, m in model.named_modules() if isinstance(m, FeatureChain)), None)
    names: dict[str, tuple[str, bool]] = {}
    for name, _ in model.named_parameters():
        if prefix is None:
            names[name] = (name, True)
        elif name.startswith(prefix):
            relative = name[len(prefix) :]
            names[name] = (relative, relative.split(".", 1)[0] in ("backbone", "addon", "neck"))
        else:
            names[name] = (name, False)
    return names
