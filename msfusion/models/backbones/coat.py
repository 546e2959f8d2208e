"""CoaT's serial stages as a feature backbone (its parallel blocks left out).

Paper: "Co-Scale Conv-Attentional Image Transformers", Xu et al., arXiv
2104.06399, Table 1 configurations (timm's ``CoaT``). The MSCSA paper
(arXiv 2308.05872, Table 6/7) puts MSCSA in place of CoaT's parallel
blocks: ``coat_tiny_mscsa`` / ``coat_small_mscsa`` in
``msfusion.models.presets.mscsa`` build on ``CoaTSerial``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models.coat import CoaT
from torch import Tensor, nn

from msfusion.layers import check_image_batch
from msfusion.layers.features import pad_to_size_constraint

__all__ = ["COAT_CONFIGS", "CoaTSerial"]

# CoaT paper (arXiv 2104.06399) Table 1 configurations, as in timm: serial part only.
COAT_CONFIGS: dict[str, dict[str, Any]] = {
    "coat_tiny": dict(embed_dims=(152, 152, 152, 152), serial_depths=(2, 2, 2, 2), num_heads=8, mlp_ratios=(4, 4, 4, 4)),
    "coat_small": dict(embed_dims=(152, 320, 320, 320), serial_depths=(2, 2, 2, 2), num_heads=8, mlp_ratios=(4, 4, 4, 4)),
}  # fmt: skip


class CoaTSerial(nn.Module):
    """CoaT's four serial stages as a feature backbone: its parallel blocks are left out.

    Built from timm's ``CoaT`` with ``parallel_depth=0``, which is CoaT with the
    parallel blocks removed. MSCSA takes their place (MSCSA paper, Table 6/7).
    ``forward`` runs the serial blocks at any input size. Each patch embedding
    pads its input to a multiple of its patch size, and the class token is
    dropped from each stage's output. Images (B, 3, H, W) give maps
    (B, C_i, ceil(H / s), ceil(W / s)) for s = 4, 8, 16, 32.

    Args:
        embed_dims, serial_depths, num_heads, mlp_ratios: CoaT's configuration.
        in_chans: input channels.
        drop_path_rate: stochastic depth of the serial blocks.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (152, 152, 152, 152),
        serial_depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: int = 8,
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.coat = CoaT(
            patch_size=4,
            in_chans=in_chans,
            embed_dims=tuple(embed_dims),
            serial_depths=tuple(serial_depths),
            parallel_depth=0,
            num_heads=num_heads,
            mlp_ratios=tuple(mlp_ratios),
            drop_path_rate=drop_path_rate,
            return_interm_layers=True,
            out_features=["x1_nocls", "x2_nocls", "x3_nocls", "x4_nocls"],
        )
        self.in_chans = in_chans
        self.feature_info = [
            dict(chs=int(c), reduction=4 * 2**i, module=f"coat.serial_blocks{i + 1}") for i, c in enumerate(embed_dims)
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        check_image_batch(x, self.in_chans)
        feats = []
        for i in range(1, 5):
            embed = getattr(self.coat, f"patch_embed{i}")
            p = embed.patch_size
            x = pad_to_size_constraint(x, p[0])  # CoaT's patches are square
            x = embed.proj(x)
            b, c, h, w = x.shape
            tokens = embed.norm(x.flatten(2).transpose(1, 2))
            cls = getattr(self.coat, f"cls_token{i}").expand(b, -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
            for block in getattr(self.coat, f"serial_blocks{i}"):
                tokens = block(tokens, size=(h, w))
            x = tokens[:, 1:].transpose(1, 2).reshape(b, c, h, w)
            feats.append(x)
        return feats
