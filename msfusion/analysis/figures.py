"""The display scale every gradient-map figure shares (figures are written by ``engine.visualize.save_figure``).

The gradient maps of the ERF (FINE Sec. 5.3.2, App. F) and input-gradient
(CEDNet App. B) figures are heavy-tailed: a few pixels hold most of the
gradient, so they are shown on a colour scale that saturates at a high
percentile.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["clip_for_display"]


def clip_for_display(grad_map: Tensor | np.ndarray, clip_percentile: float = 99.5) -> np.ndarray:
    """A non-negative map scaled to [0, 1] for display, saturating at a percentile.

    Args:
        grad_map: (H, W) map, e.g. ``|d y / d x|``.
        clip_percentile: values at or above this percentile of the map show at
            full brightness; where that percentile is 0 (a map with few
            non-zero pixels), the maximum is used instead.

    Returns:
        (H, W) array in [0, 1], the dtype of ``grad_map``.
    """
    g = grad_map.detach().cpu().numpy() if isinstance(grad_map, Tensor) else np.asarray(grad_map)
    top = float(np.percentile(g, clip_percentile)) if g.size else 0.0
    if top <= 0:
        top = float(g.max()) or 1.0
    return np.clip(g / top, 0.0, 1.0)
