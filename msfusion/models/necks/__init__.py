"""Necks: feature pyramids that take and return ``list[Tensor]`` finest first.

``FPN`` (Lin et al., arXiv 1612.03144), ``PAN`` (Liu et al., arXiv
1803.01534) and CEDNet's detection pyramid ``CEDNetPyramid`` (Zhang et al.,
arXiv 2302.06052) are registered by name (kind ``"neck"``: ``"fpn"``,
``"pan"``, ``"cednet_pyramid"``) and built from a producer's
``feature_info``. Every top-down fusion step of FPN and PAN calls an
alignment hook ``align(low, high) -> low`` (identity by default; FINE with
``fine=True``), see ``msfusion.models.align.hook``.
"""

from msfusion.models.align.hook import ALIGNS, IdentityAlign, align_per_level, build_align, register_align
from msfusion.models.necks.cednet_pyramid import CEDNetPyramid
from msfusion.models.necks.fpn import FPN
from msfusion.models.necks.pan import PAN

__all__ = ["ALIGNS", "CEDNetPyramid", "FPN", "IdentityAlign", "PAN", "align_per_level", "build_align", "register_align"]
