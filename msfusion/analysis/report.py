"""One model's measured size beside its paper's figures (for ``msfusion models`` and the README)."""

from __future__ import annotations

from typing import Any

import torch

from msfusion.analysis.complexity import count_macs, count_params
from msfusion.registry import create_model, model_kind, paper_figures

__all__ = ["model_report"]


def model_report(
    name: str, input_size: tuple[int, int] | None = None, num_classes: int | None = None, rules: str | None = None
) -> dict[str, Any]:
    """Params and MACs of ``name`` built on the meta device, with the published numbers.

    The input size and counting rules default to those the paper used for the
    variant (``PaperFigures``), so measured and published figures compare.
    """
    paper = paper_figures(name)
    chw = paper.input_size if paper else (3, 224, 224)
    if input_size is not None:
        chw = (chw[0], *input_size)
    rules = rules or (paper.macs_rules if paper else "torchprofile")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    same_setting = input_size is None and num_classes is None
    params = count_params(model)
    counted = model
    if model_kind(name) == "detector":
        from msfusion.models.meta_arch.detector import complexity_view

        counted = complexity_view(model)
    macs = count_macs(counted, (1, *chw), rules=rules)
    return {
        "model": name,
        "input_size": [1, *chw],
        "params": params,
        "params_m": params / 1e6,
        "macs": macs,
        "gmacs": macs / 1e9,
        "rules": rules,
        "unit": "multiply-adds",
        "paper_params_m": paper.params_m if paper and same_setting else None,
        "paper_gmacs": paper.gmacs if paper and same_setting else None,
        "source": paper.source if paper else "",
        # Where the paper prints other figures than the released code gives (CEDNet Table 9), both are kept.
        "printed_params_m": (paper.extra.get("printed_params_m") if paper and same_setting else None),
        "printed_gmacs": (paper.extra.get("printed_gmacs") if paper and same_setting else None),
    }
