"""The "time for feature fusion" of a network (CEDNet, arXiv 2302.06052, Sec. 1 and Fig. 1).

The paper defines it as "the ratio of the parameters of the sub-network before
the first fusion module to the whole network"; a smaller ratio is an earlier
fusion. Its figures: 91.7% for FPN on ConvNeXt-S, 2.7% for HRNet.

Precisely, here: a parameter is *before the first multi-scale fusion* when the
module owning it only ever sees features computed from one resolution path,
i.e. it runs before any operation that combines maps of two different
resolutions (an add / concatenation / attention between levels). The sub-network
is given as module-name prefixes (``before``); the ratio is

    fusion_time = params(modules under ``before``) / params(model)

with shared parameters counted once. What "the whole network" is, is whatever
module is passed: backbone + neck for Fig. 1, or a full segmentor / detector.

Presets (``first_fusion_prefixes``), used when ``before`` is None:

- a backbone followed by a neck or a head (FPN, UperNet, SegNeXt, any
  ``Segmentor`` or torchvision ``BackboneWithFPN``): the whole backbone
  (``backbone``, or ``backbone.body``), since the first fusion is in the
  neck / head;
- CEDNet (found anywhere in the model): the stem and stride-4 blocks
  (``stem``, ``stages.0``) and the first stage's encoder (``stages.1.0``); the
  first stage's decoder (``stages.1.1``, Fig. 2) is the first fusion. A one-stage
  CEDNet without a decoder fuses only after the backbone: the whole backbone;
- timm HRNet: the stem, stage 1 (``layer1``), ``transition1`` and the branches
  of the first stage-2 module (``stage2.0.branches``); its ``fuse_layers`` are
  the first fusion (HRNet, Wang et al. 2019, exchange units).

Measured (meta device, no weights): ConvNeXt-S (timm, 49.45 M) with a RetinaNet
FPN (C3-C5, 256 channels, P6 from C5 and P7; 4.47 M) gives 91.70%, the paper's
91.7%. With a Mask R-CNN FPN (C2-C5, max-pool P6; 2.73 M) it would be 94.8%,
so the paper's "entire FPN" is the RetinaNet neck. See ``tests/analysis/test_analysis_fusion_time.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

__all__ = [
    "FusionTime",
    "fusion_time",
    "fusion_split",
    "first_fusion_prefixes",
    "HRNET_BEFORE_FUSION",
]

# timm ``HighResolutionNet``: everything up to the first exchange unit.
HRNET_BEFORE_FUSION = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2.0.branches")


@dataclass(frozen=True)
class FusionTime:
    """Parameters before the first multi-scale fusion and in the whole network.

    Attributes:
        before_params: parameters of the modules under ``before``.
        total_params: parameters of the whole model.
        before: the module-name prefixes that were counted.
    """

    before_params: int
    total_params: int
    before: tuple[str, ...]

    @property
    def ratio(self) -> float:
        """``before_params / total_params`` (the paper's percentage / 100)."""
        return self.before_params / self.total_params if self.total_params else 0.0


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _cednet_prefixes(model: nn.Module) -> list[str]:
    stages = getattr(model, "stages", None)
    first_stage_has_decoder = stages is not None and len(stages) > 1 and len(stages[1]) > 1
    if not first_stage_has_decoder:
        return [""]
    return ["stem", "stages.0", "stages.1.0"]


def _is_cednet(module: nn.Module) -> bool:
    from msfusion.models.backbones.cednet import CEDNet

    return isinstance(module, CEDNet)


def _is_hrnet(module: nn.Module) -> bool:
    return type(module).__name__ in ("HighResolutionNet", "HighResolutionNetFeatures") and hasattr(
        module, "transition1"
    )


def _backbone_prefixes(backbone: nn.Module) -> list[str] | None:
    """Prefixes inside a backbone-like module, or None if it holds no known fusion."""
    if _is_cednet(backbone):
        return _cednet_prefixes(backbone)
    if _is_hrnet(backbone):
        return list(HRNET_BEFORE_FUSION)
    inner = getattr(backbone, "model", None)  # msfusion's TimmFeatures adapter
    if isinstance(inner, nn.Module):
        found = _backbone_prefixes(inner)
        if found is not None:
            return [_join("model", p) for p in found]
    return None


def first_fusion_prefixes(model: nn.Module) -> list[str]:
    """Module-name prefixes of the sub-network before the first multi-scale fusion.

    Args:
        model: a CEDNet or HRNet backbone, or any model with a ``backbone``
            attribute (segmentors, torchvision detectors, ``BackboneWithFPN``).

    Returns:
        Prefixes for ``fusion_time(model, before=...)``; ``""`` means the whole
        module.

    Raises:
        ValueError: the model has no known fusion point; pass ``before``.
    """
    own = _backbone_prefixes(model)
    if own is not None:
        return own
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        # torchvision ``BackboneWithFPN``: ``body`` is the classification network.
        body = getattr(backbone, "body", None)
        if isinstance(body, nn.Module) and hasattr(backbone, "fpn"):
            inner = _backbone_prefixes(body)
            return [_join("backbone.body", p) for p in inner] if inner else ["backbone.body"]
        inner = _backbone_prefixes(backbone)
        return [_join("backbone", p) for p in inner] if inner else ["backbone"]
    body = getattr(model, "body", None)
    if isinstance(body, nn.Module) and hasattr(model, "fpn"):
        return ["body"]
    raise ValueError(
        f"cannot tell where the first multi-scale fusion of {type(model).__name__} is. "
        "Pass the modules before it, e.g. fusion_time(model, before=['backbone']) for a "
        "backbone followed by an FPN."
    )


def fusion_split(model: nn.Module, before: Sequence[str] | None = None) -> FusionTime:
    """Parameters before the first multi-scale fusion, and in the whole model.

    Args:
        model: the whole network (e.g. backbone + FPN for Fig. 1, or a segmentor).
        before: module-name prefixes (as in ``model.named_modules()``) of the
            sub-network before the first fusion; None uses the presets of
            ``first_fusion_prefixes``.

    Raises:
        ValueError: a prefix names no parameter of the model.
    """
    if isinstance(before, str):
        raise ValueError(f"before must be a list of module prefixes, e.g. [{before!r}]")
    prefixes = tuple(first_fusion_prefixes(model) if before is None else before)
    params = list(model.named_parameters())  # shared parameters appear once
    unknown = [p for p in prefixes if not any(_under(n, p) for n, _ in params)]
    if unknown:
        children = [n for n, _ in model.named_children()]
        raise ValueError(f"no parameters under {unknown}; the model's top-level modules are {children}")
    total = sum(p.numel() for _, p in params)
    part = sum(p.numel() for n, p in params if any(_under(n, pre) for pre in prefixes))
    return FusionTime(before_params=part, total_params=total, before=prefixes)


def fusion_time(model: nn.Module, before: Sequence[str] | None = None) -> float:
    """The time for feature fusion (CEDNet Sec. 1): a ratio in [0, 1], smaller is earlier.

    Args:
        model: the whole network. Build large models on the meta device
            (``with torch.device("meta"): ...``): only parameter shapes are read.
        before: module-name prefixes of the sub-network before the first
            fusion; None uses the presets (see the module docstring).

    Example:
        >>> import timm, torch
        >>> from torch import nn
        >>> from torchvision.ops import FeaturePyramidNetwork
        >>> from torchvision.ops.feature_pyramid_network import LastLevelP6P7
        >>> with torch.device("meta"):
        ...     net = nn.ModuleDict(dict(
        ...         backbone=timm.create_model("convnext_small", features_only=True, out_indices=(1, 2, 3)),
        ...         fpn=FeaturePyramidNetwork([192, 384, 768], 256, LastLevelP6P7(768, 256))))
        >>> round(fusion_time(net, before=["backbone"]), 3)
        0.917
    """
    return fusion_split(model, before).ratio
