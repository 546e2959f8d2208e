"""The Hamburger decoder of SegNeXt: ``LightHamHead`` with NMF matrix decomposition.

Paper: SegNeXt (arXiv 2209.08575) Sec. 3.2 and Fig. 3c: features of stages 2-4
are resized to 1/8, concatenated, squeezed by a 1x1 conv, passed through a
Hamburger (Geng et al., "Is Attention Better Than Matrix Decomposition?",
ICLR 2021) and classified. Every detail the paper leaves out (NMF steps and
rank, ``inv_t`` forced to 1, gradients through all steps, fresh random bases
per call, GN(32) norms, ReLU) follows the official implementation
(mmsegmentation's ``LightHamHead``, the code the paper was released with).

Deviation by default, for reproducible and exportable inference: in eval mode
the NMF bases come from a fixed-seed generator, drawn once per module, so the
same input gives the same output on every call and in an exported graph.
``random_eval=True`` restores the official per-call draw from the global RNG
(``torch.rand((B * S, D, R))`` on the CPU, then moved to the input's device,
exactly the official call), for output comparisons with the official code.

The context module of the head is selectable (Table 5): ``"ham"`` (default),
or ``"cc"``, ``"ema"``, ``"nl"`` from ``msfusion.models.heads.context``.
The input stages are selectable by stride (Table 7): ``in_strides=(32,)`` is
the "heavy head on the last stage only" of Fig. 3b, ``(4, 8, 16, 32)`` is
"w/ stage 1"; inputs are resized to the finest selected map's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers import ConvNormAct, FeatureInfo, resize_to
from msfusion.models.heads.base import DecodeHead
from msfusion.registry import register_model

__all__ = ["NMF2D", "Hamburger", "LightHamHead"]


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of a feature map, X ~ B C^T (HamNet, Alg. 1).

    Input (B, C, H, W), non-negative; output of the same shape: the rank-R
    reconstruction. With S groups, X is viewed as (B*S, D=C/S, N=H*W).

    Official semantics (the released SegNeXt code): bases drawn uniformly and
    L2-normalised over D at every call, coefficients initialised by
    ``softmax(inv_t * X^T B)`` with ``inv_t = 1``, ``train_steps`` / ``eval_steps``
    multiplicative updates then one final coefficient update, gradients
    through every step (no one-step gradient).

    Args:
        chs: channels C.
        groups: S.
        rank: R (16 for SegNeXt-T/S, 64 for B/L in the original repo).
        train_steps: iterations in training mode (6).
        eval_steps: iterations in eval mode (7).
        inv_t: softmax temperature of the initial coefficients (official: 1).
        random_eval: draw fresh bases from the global RNG in eval mode too
            (official behaviour); otherwise use fixed bases from ``eval_seed``.
        eval_seed: seed of the fixed eval bases.
    """

    def __init__(
        self,
        chs: int,
        groups: int = 1,
        rank: int = 64,
        train_steps: int = 6,
        eval_steps: int = 7,
        inv_t: float = 1.0,
        random_eval: bool = False,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        if chs % groups:
            raise ValueError(f"NMF channels ({chs}) must be divisible by groups ({groups})")
        self.groups, self.rank = groups, rank
        self.train_steps, self.eval_steps = train_steps, eval_steps
        self.inv_t = inv_t
        self.random_eval = random_eval
        generator = torch.Generator(device="cpu").manual_seed(eval_seed)
        eval_bases = torch.rand((groups, chs // groups, rank), generator=generator, device="cpu")
        # Not persistent: official checkpoints hold no NMF state, neither do ours.
        self.register_buffer("eval_bases", F.normalize(eval_bases, dim=1), persistent=False)

    def _bases(self, batch: int, dim: int, device: torch.device) -> Tensor:
        if self.training or self.random_eval:
            # The exact official draw: global CPU RNG, shape (B*S, D, R), then moved.
            bases = torch.rand((batch * self.groups, dim, self.rank)).to(device)
            return F.normalize(bases, dim=1)
        bases = self.eval_bases.to(device)
        return bases.repeat(batch, 1, 1)

    @staticmethod
    def _update_coef(x: Tensor, bases: Tensor, coef: Tensor) -> Tensor:
        numerator = torch.bmm(x.transpose(1, 2), bases)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        return coef * numerator / (denominator + 1e-6)

    @staticmethod
    def _update_bases(x: Tensor, bases: Tensor, coef: Tensor) -> Tensor:
        numerator = torch.bmm(x, coef)
        denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
        return bases * numerator / (denominator + 1e-6)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        in_dtype = x.dtype
        # Multiplicative updates divide by small sums: run them in fp32 even under autocast.
        autocast_device = x.device.type if x.device.type in ("cuda", "xpu", "mps") else "cpu"
        with torch.autocast(device_type=autocast_device, enabled=False):
            x = x.float().reshape(b * self.groups, c // self.groups, h * w)
            bases = self._bases(b, c // self.groups, x.device)
            coef = torch.bmm(x.transpose(1, 2), bases)
            coef = F.softmax(self.inv_t * coef, dim=-1)
            for _ in range(self.train_steps if self.training else self.eval_steps):
                coef = self._update_coef(x, bases, coef)
                bases = self._update_bases(x, bases, coef)
            coef = self._update_coef(x, bases, coef)
            x = torch.bmm(bases, coef.transpose(1, 2))
        return x.reshape(b, c, h, w).to(in_dtype)


class Hamburger(nn.Module):
    """Hamburger: 1x1 "bread" (with bias), ReLU, NMF "ham", 1x1 + GN, residual, ReLU.

    (B, C, H, W) -> (B, C, H, W). Keys follow mmcv (``ham_in.conv``, ``ham_out.gn``).
    """

    def __init__(self, chs: int, norm: str = "gn", **nmf_kwargs: Any) -> None:
        super().__init__()
        self.ham_in = ConvNormAct(chs, chs, 1, norm=None, act=None)
        self.ham = NMF2D(chs, **nmf_kwargs)
        self.ham_out = ConvNormAct(chs, chs, 1, norm=norm, act=None)

    def forward(self, x: Tensor) -> Tensor:
        enjoy = F.relu(self.ham_in(x))  # NMF needs a non-negative input
        enjoy = self.ham_out(self.ham(enjoy))
        return F.relu(x + enjoy)


class LightHamHead(DecodeHead):
    """SegNeXt's decoder (Fig. 3c).

    Input: the producer's feature list. Output: logits (B, num_classes, h, w) at
    the resolution of the finest selected map (1/8 by default).

    Args:
        feature_info: the producer's ``feature_info``.
        num_classes: classes K.
        in_strides: strides read (default 8, 16, 32: MSCAN stages 2-4).
        channels: channels after ``align`` (Table 2 "decoder dimension").
        ham_channels: channels of the squeeze conv and the Hamburger.
        context: "ham" (default) or a Table 5 module: "cc", "ema", "nl".
        ham_kwargs: NMF options (``rank``, ``train_steps``, ``eval_steps``,
            ``inv_t``, ``random_eval``, ``eval_seed``, ``groups``).
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        in_strides: Sequence[int] = (8, 16, 32),
        channels: int = 256,
        ham_channels: int = 256,
        dropout: float = 0.1,
        norm: str = "gn",
        context: str = "ham",
        ham_kwargs: dict[str, Any] | None = None,
        context_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(feature_info, num_classes, in_strides, channels, dropout)
        self.squeeze = ConvNormAct(sum(self.in_channels), ham_channels, 1, norm=norm, act="relu")
        if context == "ham":
            self.hamburger: nn.Module = Hamburger(ham_channels, norm=norm, **(ham_kwargs or {}))
        else:
            from msfusion.models.heads.context import build_context_module

            self.hamburger = build_context_module(context, ham_channels, **(context_kwargs or {}))
        self.align = ConvNormAct(ham_channels, channels, 1, norm=norm, act="relu")

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        inputs = self.select(features)
        size = inputs[0].shape[-2:]
        x = torch.cat([resize_to(f, size) for f in inputs], dim=1)
        x = self.align(self.hamburger(self.squeeze(x)))
        return self.cls_seg(x)


@register_model(kind="head")
def ham(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> LightHamHead:
    """SegNeXt's LightHamHead (Fig. 3c): strides 8, 16, 32 -> logits at 1/8."""
    return LightHamHead(feature_info, num_classes, **kwargs)
