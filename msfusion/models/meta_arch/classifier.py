"""The classifier: backbone -> [add-on] -> pooled linear head -> class logits.

The classification composition of the feature contract (the counterpart of
``build_segmentor``): any feature backbone (ours or any timm model through
``create_model(name, features_only=True)``), an optional add-on such as MSCSA
in its classification form (MSCSA, arXiv 2308.05872, Fig. 4), and a head that
global-average-pools the coarsest map and applies a linear classifier, the
head of ResNet, ConvNeXt's pooled features and timm's ``ClassifierHead``.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from msfusion.layers import check_image_batch
from msfusion.models.chain import FeatureChain, build_chain, records_call
from msfusion.registry import model_entrypoint

__all__ = ["ClassifierHead", "Classifier", "build_classifier"]


class ClassifierHead(nn.Module):
    """Global average pooling of one map, optional norm and dropout, then a linear layer.

    Input (B, C, h, w); output (B, num_classes).

    Args:
        in_chs: channels C of the pooled map.
        num_classes: classes; 0 returns the pooled (B, C) features.
        norm: ``"ln"`` puts a LayerNorm after pooling (ConvNeXt, Swin), None none.
        dropout: dropout before the linear layer.
    """

    def __init__(self, in_chs: int, num_classes: int, norm: str | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if norm not in (None, "ln"):
            raise ValueError(f"norm must be None or 'ln', got {norm!r}")
        self.norm = nn.LayerNorm(in_chs) if norm == "ln" else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.norm(x.mean(dim=(-2, -1)))))


class Classifier(FeatureChain):
    """Backbone -> [add-on] -> ``ClassifierHead`` on the coarsest map.

    ``forward(images)`` with images (B, C, H, W) float returns (B, num_classes).

    Args:
        backbone: a feature producer (list of maps finest first, ``feature_info``).
        num_classes: classes.
        addon: optional add-on with the same contract.
        head_norm: norm after pooling (see ``ClassifierHead``).
        dropout: dropout before the linear layer.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        addon: nn.Module | None = None,
        head_norm: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        if int(num_classes) < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        # Only backbones that need it (window attention) declare a divisor; the chain pads to it.
        super().__init__(backbone, addon)
        self.head = ClassifierHead(self.feature_info[-1]["chs"], num_classes, norm=head_norm, dropout=dropout)
        self.num_classes = num_classes

    def forward_head(self, feats: list[Tensor]) -> Tensor:
        return self.head(feats[-1])

    def forward(self, images: Tensor) -> Tensor:
        check_image_batch(images, self.in_chans)
        min_size = getattr(self.addon, "min_train_size", None)
        if self.training and min_size and images.shape[0] == 1 and max(images.shape[-2:]) < min_size:
            # Refused before the backbone runs: the add-on's BatchNorms would see one value per channel.
            raise ValueError(
                f"{type(self.addon).__name__} cannot train at batch 1 on a {images.shape[-2]}x{images.shape[-1]} "
                f"input: its pooled 1/{self.addon.pool_stride} map's coarsest K/V copy would be 1x1 and BatchNorm "
                f"cannot train on one value per channel. At batch 1 use inputs of at least {min_size} pixels on "
                "one side, or a batch of 2 or more."
            )
        return self.forward_head(self.forward_features(self.pad(images)))


@records_call("build_classifier")
def build_classifier(
    backbone: str | nn.Module,
    *,
    num_classes: int,
    addon: str | nn.Module | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    addon_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Classifier:
    """Compose a classifier: backbone -> [add-on] -> pooled linear head.

    ``backbone`` and ``addon`` are registered names (kwargs in ``*_kwargs``)
    or modules; a backbone name is built with ``create_model(name,
    features_only=True)``, so any timm model works::

        # ResNet-50 + MSCSA with Table 7's ResNet-50 row: the model of resnet50_mscsa
        # (MSCSA, arXiv 2308.05872, Table 6: 4.1 -> 4.6 GFLOPs at 224x224)
        mf.build_classifier("resnet50", addon="mscsa", num_classes=1000)

    An add-on given by name that has a classification form (its builder takes
    ``mode``, as MSCSA's: Fig. 4 of arXiv 2308.05872) is built in that form
    unless ``addon_kwargs`` says otherwise. MSCSA reads the backbone's maps at
    strides 4-32 (never ResNet's stride-2 stem) and takes its configuration
    from the backbone (``msfusion.models.addons.mscsa.mscsa_config``); the
    ``model_cfg`` records the resolved settings.

    ``**kwargs`` go to ``Classifier`` (``head_norm``, ``dropout``).
    """
    # An add-on with a classification form (its builder takes ``mode``: MSCSA, Fig. 4) is built in it.
    classification = (
        isinstance(addon, str) and "mode" in inspect.signature(model_entrypoint(addon, kind="addon")).parameters
    )
    backbone, addon, _, _ = build_chain(
        backbone,
        addon,
        backbone_kwargs=backbone_kwargs,
        addon_kwargs=addon_kwargs,
        addon_defaults={"mode": "classification"} if classification else None,
    )
    return Classifier(backbone, num_classes, addon=addon, **kwargs)
