"""Expectation-maximisation attention, the "EMA" context module of SegNeXt Table 5.

Paper: "Expectation-Maximization Attention Networks for Semantic Segmentation",
Li et al., ICCV 2019 (arXiv 1907.13426), Sec. 3.2-3.3 and Fig. 2: the EM
attention unit (EMAU) is a 1x1 conv, T iterations of EM over K bases (E-step:
responsibilities ``Z = softmax(X^T mu)``; M-step: ``mu = X Z_norm``,
L2-normalised over channels), the low-rank reconstruction ``mu Z^T``, ReLU, a
1x1 conv + norm, the residual and ReLU. The bases are a buffer updated by a
moving average during training (Sec. 3.3: "EMA" of the bases).

Details from the official code (XiaLiPKU/EMANet ``network.py``, ``settings.py``,
``train.py``): K = 64, T = 3 stages, bases drawn from N(0, 2/K) and L2-normalised,
``Z`` column-normalised with ``1e-6 + sum``, L2 norm as ``x / (1e-6 + ||x||)``,
moving average ``mu <- 0.9 mu + 0.1 mean_batch(mu_new)`` after every training
step, EM iterations without gradient.

Deviation (gradient only; the forward values are the official ones): the
official code computes every E- and M-step without gradient, so its first conv
receives no gradient at all (mmseg's EMAHead freezes a conv for the same
reason). Here the last E-step keeps its gradient, so ``conv1`` learns through
the responsibilities while the bases stay constants, as in the paper's
derivation. ``em_grad=False`` restores the official no-gradient EM.

Place in SegNeXt (Table 5, "SegNeXt-B w/ EMA"): the EMAU replaces the
Hamburger of the LightHamHead (the EMAU is itself a "Hamburger" with EM as the
matrix decomposition), with the head's GN in place of EMANet's BN. SegNeXt-B
then counts 27.64 M / 33.27 GMACs at 512x512 against the published
27.4 M / 32.3 G: the EMAU has the Hamburger's 2C^2 parameters, while the
published figures fit one 1x1 conv less (27.37 M / 32.2 G), a variant EMANet
does not describe; we keep EMANet's unit.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers import ConvNormAct

__all__ = ["EMAUnit"]


def _l2_normalise(x: Tensor, dim: int) -> Tensor:
    return x / (1e-6 + x.norm(dim=dim, keepdim=True))


class EMAUnit(nn.Module):
    """The EM attention unit (EMANet Fig. 2): (B, C, H, W) -> (B, C, H, W).

    Args:
        chs: channels C.
        num_bases: K, the number of bases (64).
        num_stages: T, EM iterations (3).
        em_momentum: fraction of the running bases kept at each training step (0.9).
        norm: norm after ``conv2`` ("gn": the LightHamHead's GN(32); EMANet uses BN).
        em_grad: let gradient flow through the last E-step (see the module docstring).
    """

    def __init__(
        self,
        chs: int,
        num_bases: int = 64,
        num_stages: int = 3,
        em_momentum: float = 0.9,
        norm: str | None = "gn",
        em_grad: bool = True,
    ) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        self.num_stages = num_stages
        self.em_momentum = em_momentum
        self.em_grad = em_grad
        bases = torch.randn(1, chs, num_bases) * math.sqrt(2.0 / num_bases)
        # Persistent: the running bases are learned state, saved with the weights.
        self.register_buffer("bases", _l2_normalise(bases, dim=1))
        self.conv1 = nn.Conv2d(chs, chs, 1)
        self.conv2 = ConvNormAct(chs, chs, 1, norm=norm, act=None)
        for conv in (self.conv1, self.conv2.conv):
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / conv.out_channels))
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def expectation_maximisation(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """T EM iterations from the running bases.

        Args:
            feats: (B, C, N) features after ``conv1``.

        Returns:
            bases (B, C, K), L2-normalised over C, and responsibilities (B, N, K)
            from the last E-step.
        """
        bases = self.bases.expand(feats.shape[0], -1, -1).to(feats.dtype)
        resp = feats.new_empty(0)
        for stage in range(self.num_stages):
            keep_grad = self.em_grad and stage == self.num_stages - 1 and torch.is_grad_enabled()
            with torch.set_grad_enabled(keep_grad):
                resp = torch.softmax(torch.bmm(feats.transpose(1, 2), bases), dim=2)
            with torch.no_grad():
                resp_norm = resp / (1e-6 + resp.sum(dim=1, keepdim=True))
                bases = _l2_normalise(torch.bmm(feats, resp_norm), dim=1)
        return bases, resp

    @torch.no_grad()
    def _update_running_bases(self, bases: Tensor) -> None:
        mean = bases.mean(dim=0, keepdim=True).to(self.bases.dtype)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # EMANet averages over the whole (DataParallel) batch; across processes likewise.
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        # A new tensor, not an in-place update: autograd may still hold the old bases.
        self.bases = self.em_momentum * self.bases + (1.0 - self.em_momentum) * mean

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        feats = self.conv1(x).flatten(2)
        bases, resp = self.expectation_maximisation(feats)
        if self.training:
            self._update_running_bases(bases)
        recon = torch.bmm(bases, resp.transpose(1, 2)).reshape(b, c, h, w)
        return F.relu(x + self.conv2(F.relu(recon)))
