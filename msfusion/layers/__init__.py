"""Shared building blocks. timm's layers are used directly, never copied."""

from timm.layers import DropPath, LayerNorm2d, trunc_normal_

from msfusion.layers.conv_norm_act import ConvNormAct, init_conv_fan_out, make_act, make_norm
from msfusion.layers.features import (
    FeatureInfo,
    check_feature_info,
    check_image_batch,
    indices_for_strides,
    is_channels_last,
    resize_to,
)

__all__ = [
    "ConvNormAct",
    "DropPath",
    "FeatureInfo",
    "check_feature_info",
    "indices_for_strides",
    "init_conv_fan_out",
    "is_channels_last",
    "LayerNorm2d",
    "check_image_batch",
    "make_act",
    "make_norm",
    "resize_to",
    "trunc_normal_",
]
