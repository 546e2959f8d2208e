"""CEDNet's detection pyramid: the neck of the official CEDNet detectors.

Paper: "CEDNet: A Cascade Encoder-Decoder Network for Dense Prediction", Zhang,
Li, Tang, Li, Hu (arXiv 2302.06052), Sec. 3.1 and Table 2(b)-(d). The cascade
has already fused the scales ("no extra feature fusion modules are required
after the CEDNet backbone", Sec. 3.1), so this neck only brings the last
stage's maps to the detection heads' width and adds the levels a detector reads
beyond 1/32, as the released ced-mmdet detector wrappers (zhanggang001/CEDNet,
``CEDNetWrapper`` and ``CEDNetWrapperTwoStage``) do:

- ``levels="p3p7"`` (RetinaNet): ``P_l = LN(Conv1x1(c_l))`` for c3, c4, c5
  (strides 8, 16, 32), then P6 and P7 by ``LN(Conv3x3/2(.))`` on the previous
  level (strides 64, 128).
- ``levels="p2p6"`` (Mask R-CNN, Cascade Mask R-CNN): P3-P5 as above and one
  stride-2 level P6, plus ``P2 = Conv3x3(LN(Up2x(P3) + LN(Conv1x1(c2))))`` on
  the stem's stride-4 map (the only top-down step; its norms are LayerNorm
  whatever ``norm`` is, as in the released wrapper).

Every level has ``out_chs`` (256) channels. Layer names are the released
wrapper's (``reduce_convs``, ``add_blocks``, ``reduce_c2``, ``merge_c2``), so
its checkpoints' pyramid keys load after their ``backbone.`` prefix
(``checkpoint_filter_fn``). In msfusion 0.1.0 these layers lived inside the
CEDNet backbone (``create_model("cednet_next_t", pyramid="p3p7")``); a
detector's checkpoint saved then holds them under the backbone's name, which
``upgrade_state_dict`` maps here, and ``build_detector`` still takes
``backbone_kwargs=dict(pyramid=..., pyramid_chs=...)`` with ``neck=None``
(``create_backbone_with_pyramid``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from msfusion.layers import FeatureInfo, LayerNorm2d, check_feature_info, indices_for_strides
from msfusion.layers.features import select_features
from msfusion.models.backbones.cednet_blocks import NORMS, init_weights, make_norm2d
from msfusion.registry import create_model, register_model

__all__ = ["CEDNetPyramid", "LEVELS", "checkpoint_filter_fn", "create_backbone_with_pyramid"]

# The level sets of the released wrappers: (input strides, number of stride-2 levels after c5).
LEVELS = {"p3p7": ((8, 16, 32), 2), "p2p6": ((4, 8, 16, 32), 1)}
# The released wrapper's layer names: the keys this neck owns in an official checkpoint.
LAYER_PREFIXES = ("reduce_convs.", "add_blocks.", "reduce_c2.", "merge_c2.")
# msfusion 0.1.0's spelling of this neck, as arguments of the CEDNet backbone.
BACKBONE_ARGS = ("pyramid", "pyramid_chs")


class CEDNetPyramid(nn.Module):
    """The detection pyramid of the official CEDNet detectors (module doc).

    ``forward(features)`` takes the backbone's maps finest first (the list its
    ``feature_info`` describes; the neck reads the strides 8, 16, 32, and 4 for
    ``"p2p6"``) and returns the levels selected by ``out_indices``, each
    (B, out_chs, ceil(H/s), ceil(W/s)) for the input size H x W: strides 8 to
    128 for ``"p3p7"``, 4 to 64 for ``"p2p6"``.

    Args:
        feature_info: the producer's ``feature_info`` (a CEDNet backbone's
            ``[c2, c3, c4, c5]``).
        levels: ``"p3p7"`` (one-stage detectors) or ``"p2p6"`` (two-stage).
        out_chs: channels of every level (256 in the released detectors).
        norm: norm after the 1x1 and the stride-2 convs, ``"ln"`` or ``"bn"``;
            the released wrappers use the backbone's norm.
        out_indices: which levels to return (all by default).

    Attributes:
        feature_info: one ``{"chs", "reduction", "module"}`` per returned level.
        out_channels: ``out_chs`` (torchvision detectors read it).
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        levels: str = "p3p7",
        out_chs: int = 256,
        norm: str = "ln",
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if levels not in LEVELS:
            raise ValueError(f"CEDNetPyramid: levels must be one of {tuple(LEVELS)}, got {levels!r}")
        if norm not in NORMS:
            raise ValueError(f"CEDNetPyramid: norm must be one of {NORMS}, got {norm!r}")
        if int(out_chs) < 1:
            raise ValueError(f"CEDNetPyramid: out_chs must be positive, got {out_chs}")
        info = check_feature_info(feature_info, "the features given to CEDNetPyramid")
        strides, num_add = LEVELS[levels]
        self.in_index = indices_for_strides(info, strides, "CEDNetPyramid")
        self.num_inputs = len(info)
        self.levels = levels
        self.out_chs = self.out_channels = int(out_chs)
        in_chs = [info[i]["chs"] for i in self.in_index]

        self.reduce_convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, self.out_chs, 1), make_norm2d(norm, self.out_chs)) for c in in_chs[-3:]
        )
        self.add_blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(self.out_chs, self.out_chs, 3, stride=2, padding=1), make_norm2d(norm, self.out_chs)
            )
            for _ in range(num_add)
        )
        modules = [f"reduce_convs.{i}" for i in range(3)] + [f"add_blocks.{j}" for j in range(num_add)]
        if levels == "p2p6":
            self.upsample_p3 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.reduce_c2 = nn.Sequential(nn.Conv2d(in_chs[0], self.out_chs, 1), LayerNorm2d(self.out_chs, eps=1e-6))
            self.merge_c2 = nn.Sequential(
                LayerNorm2d(self.out_chs, eps=1e-6), nn.Conv2d(self.out_chs, self.out_chs, 3, padding=1)
            )
            modules.insert(0, "merge_c2")
        self.apply(init_weights)
        first = strides[0]
        every = [dict(chs=self.out_chs, reduction=first * 2**k, module=m) for k, m in enumerate(modules)]
        self.out_indices, self.feature_info = select_features(every, out_indices)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """The producer's maps (finest first) -> the selected levels (B, out_chs, ceil(H/s), ceil(W/s))."""
        if len(features) != self.num_inputs:
            raise ValueError(
                f"CEDNetPyramid was built on {self.num_inputs} feature maps (the feature_info it was given), got "
                f"{len(features)}; feed it the maps of the backbone whose feature_info built it, finest first"
            )
        inputs = [features[i] for i in self.in_index]
        feats = [conv(c) for conv, c in zip(self.reduce_convs, inputs[-3:], strict=True)]
        for block in self.add_blocks:
            feats.append(block(feats[-1]))
        if self.levels == "p2p6":
            c2 = inputs[0]
            # 2 * ceil(H/8) may exceed ceil(H/4) by one: crop, as the padded network does before its crop.
            up = self.upsample_p3(feats[0])[..., : c2.shape[-2], : c2.shape[-1]]
            feats.insert(0, self.merge_c2(up + self.reduce_c2(c2)))
        return [feats[i] for i in self.out_indices]

    def checkpoint_filter_fn(self, state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
        return checkpoint_filter_fn(state_dict)

    def upgrade_state_dict(self, state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
        """msfusion 0.1.0 keys of this pyramid (inside the backbone beside it) -> this neck's keys.

        In a chain (``prefix`` = ``<chain>.neck.``) the pyramid's layers were
        saved as ``<chain>.backbone.reduce_convs.*`` (and ``add_blocks``,
        ``reduce_c2``, ``merge_c2``); they move to ``<chain>.neck.*``. Keys
        already in this neck's place are left as they are.
        """
        if not prefix.endswith("neck."):
            return state_dict
        old = prefix.removesuffix("neck.") + "backbone."
        moved = {}
        for key, value in state_dict.items():
            rest = key.removeprefix(old)
            if rest != key and rest.startswith(LAYER_PREFIXES) and prefix + rest not in state_dict:
                key = prefix + rest
            moved[key] = value
        return moved


def checkpoint_filter_fn(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """An official ced-mmdet detector checkpoint -> this neck's keys (its pyramid layers only)."""
    from msfusion.convert.cednet import from_official

    return {k: v for k, v in from_official(dict(state_dict)).items() if k.startswith(LAYER_PREFIXES)}


def create_backbone_with_pyramid(
    name: str,
    backbone_kwargs: Mapping[str, Any] | None,
    neck: str | nn.Module | None,
    neck_kwargs: Mapping[str, Any] | None,
) -> tuple[nn.Module, str | nn.Module | None, dict[str, Any] | None]:
    """``create_model(name, features_only=True, **backbone_kwargs)`` and the arguments of this neck.

    This neck by name (``neck="cednet_pyramid"``) takes the backbone's norm
    unless ``neck_kwargs`` gives one, as the released wrappers do (BatchNorm
    for CEDNet-R50). msfusion 0.1.0 built the pyramid inside the CEDNet
    backbone: ``build_detector(arch, backbone="cednet_next_t", neck=None,
    backbone_kwargs=dict(pyramid="p3p7", pyramid_chs=256))``. Those backbone
    arguments still work: they become ``neck="cednet_pyramid"`` with
    ``levels=pyramid, out_chs=pyramid_chs`` (and ``out_indices``, which
    selected pyramid levels then), the same layers as before; with a preset
    that names this neck already they override its levels and width.

    Returns:
        ``(backbone, neck, neck_kwargs)``.

    Raises:
        ValueError: the pyramid arguments come with another neck (the pyramid
            was the neck).
    """
    backbone_kwargs = dict(backbone_kwargs or {})
    neck_kwargs = None if neck_kwargs is None else dict(neck_kwargs)
    # ``pyramid_chs`` alone is also the timm adapter's argument (ViTDet's simple pyramid).
    legacy_keys = BACKBONE_ARGS if neck == "cednet_pyramid" or "pyramid" in backbone_kwargs else ()
    legacy = {k: backbone_kwargs.pop(k) for k in legacy_keys if k in backbone_kwargs}
    if legacy and neck is not None and neck != "cednet_pyramid":
        raise ValueError(
            f"backbone_kwargs {legacy} describe CEDNet's detection pyramid, which msfusion 0.1.0 built inside "
            f"the backbone; no other neck ({neck!r}) can follow it. Pass neck=None with them, or "
            "neck='cednet_pyramid', neck_kwargs=dict(levels=..., out_chs=...) instead"
        )
    if legacy:
        neck, neck_kwargs = "cednet_pyramid", dict(neck_kwargs or {})
        renamed = {"pyramid": "levels", "pyramid_chs": "out_chs"}
        neck_kwargs.update({renamed[k]: v for k, v in legacy.items()})
        if "out_indices" in backbone_kwargs:  # it selected the pyramid's levels
            neck_kwargs["out_indices"] = backbone_kwargs.pop("out_indices")
    backbone = create_model(name, features_only=True, **backbone_kwargs)
    if neck == "cednet_pyramid":
        neck_kwargs = {"norm": getattr(backbone, "norm_type", "ln"), **(neck_kwargs or {})}
    return backbone, neck, neck_kwargs


@register_model(kind="neck")
def cednet_pyramid(feature_info: Sequence[FeatureInfo], **kwargs: Any) -> CEDNetPyramid:
    """CEDNet's detection pyramid (arXiv 2302.06052, Table 2): P3-P7 (``levels="p3p7"``) or P2-P6, 256 channels."""
    return CEDNetPyramid(feature_info, **kwargs)
