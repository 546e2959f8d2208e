"""Alignment: what a neck does to the finer map before each top-down fusion step.

``hook`` holds the hook ``align(low, high) -> low`` that the FPN and PAN necks
call (``IdentityAlign`` by default), its registry ``ALIGNS`` and
``build_align``; ``fine`` holds FINE (Lee, Lee and Kang, arXiv 2606.14005), an
alignment module registered there as ``"fine"``. Alignment sits below the
necks: a neck imports the hook, the hook imports no neck.
"""

from msfusion.models.align.hook import ALIGNS, IdentityAlign, align_per_level, build_align, register_align

__all__ = ["ALIGNS", "IdentityAlign", "align_per_level", "build_align", "register_align"]
