"""Adaptive average pooling that exports to ONNX at any input size.

PSPNet's pyramid pooling (Zhao et al., "Pyramid Scene Parsing Network", CVPR
2017, arXiv:1612.01105, Sec. 3.2), used by UperNet (Xiao et al., arXiv:1807.10221)
and SegNeXt's baselines, averages a map into ``k x k`` bins whose borders
depend on the map's size: bin ``i`` of ``n`` pixels covers
``[floor(i n / k), ceil((i + 1) n / k))``. ONNX has no adaptive pooling
operator for sizes unknown at export time, so while a graph is being traced
or exported the same bins are written as two averaging matrices,
``P_h (k, h) @ x @ P_w^T (w, k)``, built from the traced size with integer
arithmetic; eagerly, PyTorch's own ``adaptive_avg_pool2d`` runs. Both give
the same numbers (to float rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["adaptive_avg_pool2d", "AdaptiveAvgPool2d"]


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _bin_matrix(n: int | Tensor, bins: int, like: Tensor) -> Tensor:
    """(bins, n) matrix whose row i averages the pixels of adaptive bin i."""
    i = torch.arange(bins, device=like.device)
    start = (i * n) // bins
    end = ((i + 1) * n + bins - 1) // bins
    j = torch.arange(n, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool2d(x: Tensor, output_size: int | tuple[int, int]) -> Tensor:
    """(B, C, h, w) -> (B, C, oh, ow), as ``F.adaptive_avg_pool2d``, exportable with symbolic h and w."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    if not _tracing():
        return F.adaptive_avg_pool2d(x, (oh, ow))
    rows = _bin_matrix(x.shape[-2], oh, x)
    cols = _bin_matrix(x.shape[-1], ow, x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` (no parameters, same keys) that exports at any input size."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return adaptive_avg_pool2d(x, self.output_size)
