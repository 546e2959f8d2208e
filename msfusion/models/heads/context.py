"""Global-context modules for the LightHamHead's Hamburger slot, built by name.

Paper: SegNeXt (arXiv 2209.08575) Table 5 compares the Hamburger with three
attention-based context modules in the decoder of SegNeXt-B; appendix Table 2
puts MSCA there instead. Each module maps (B, C, H, W) -> (B, C, H, W):

- ``"cc"``: recurrent criss-cross attention (CCNet, arXiv 1811.11721);
- ``"ema"``: the EM attention unit (EMANet, arXiv 1907.13426);
- ``"nl"``: the embedded-Gaussian non-local block (arXiv 1711.07971);
- ``"msca"``: MSCAN's attention sub-layer with MSCA (SegNeXt appendix Table 2).

The Hamburger itself (``"ham"``) is built by ``LightHamHead``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msfusion.registry import Registry, did_you_mean

__all__ = ["CONTEXT_MODULES", "build_context_module"]

# name -> callable(chs, **kwargs), imported on demand: one small file each.
CONTEXT_MODULES = Registry("context module")
CONTEXT_MODULES.register_lazy("cc", "msfusion.models.heads.criss_cross:RecurrentCrissCrossAttention")
CONTEXT_MODULES.register_lazy("ema", "msfusion.models.heads.ema:EMAUnit")
CONTEXT_MODULES.register_lazy("nl", "msfusion.models.heads.non_local:NonLocal2d")
CONTEXT_MODULES.register_lazy("msca", "msfusion.models.heads.msca_head:MSCAContext")


def build_context_module(name: str, chs: int, **kwargs: Any) -> nn.Module:
    """Build the context module ``name`` for ``chs`` channels.

    Args:
        name: one of ``CONTEXT_MODULES`` ("cc", "ema", "nl", "msca").
        chs: channels C of the (B, C, H, W) input and output.
        **kwargs: the module's options (e.g. ``recurrence`` for "cc",
            ``num_bases`` for "ema", ``reduction`` for "nl", ``norm`` for all
            but "msca").

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in CONTEXT_MODULES:
        raise ValueError(
            f"unknown context module {name!r}; choose 'ham' (LightHamHead's default) or one of "
            f"{CONTEXT_MODULES.names()}.{did_you_mean(name, CONTEXT_MODULES.names())}"
        )
    return CONTEXT_MODULES.get(name)(chs, **kwargs)
