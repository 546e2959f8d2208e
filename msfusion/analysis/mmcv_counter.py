"""Multiply-adds with mmcv's ``get_model_complexity_info`` rules (mmcv 1.x ``flops_counter``).

CEDNet (official ``models/cednet.py`` and ``ced-mmseg/tools/get_flops.py``) and
TopFormer report this counter's "FLOPs", which are multiply-adds (mmcv's
``flops_to_string`` docstring: "a multiply-add counts as one FLOP"). The counter puts forward hooks on modules whose type
is *exactly* one of a fixed set (subclasses are not counted) and adds:

- ``nn.Conv1d/2d/3d``: output positions x kernel area x in_chs x out_chs / groups,
  plus one per output element when the conv has a bias;
- ``nn.ConvTranspose1d/2d/3d``: input positions x kernel area x in_chs x out_chs / groups
  (+ bias per output element);
- ``nn.Linear``: input elements x output features (no bias term);
- ``nn.BatchNorm1d/2d/3d``, ``nn.GroupNorm``, ``nn.InstanceNorm1d/2d/3d``,
  ``nn.LayerNorm``: input elements, doubled when affine;
- ``nn.ReLU``, ``PReLU``, ``ELU``, ``LeakyReLU``, ``ReLU6``: output elements;
- max / average / adaptive pooling: input elements;
- ``nn.Upsample``: elements of the first sample of the output.

Not counted: GELU, Hardswish, sigmoid, softmax, matmul / attention products,
``F.interpolate``, element-wise ops, and every other module class, including
timm's ``LayerNorm2d`` / ``LayerNorm`` (subclasses of ``nn.LayerNorm``, counted
like CEDNet's own LayerNorm class, i.e. not at all). The total is divided by the
batch size, as mmcv does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["count_macs_mmcv", "MMCV_RULES"]


def _conv(module: nn.Module, inputs: tuple, output: Tensor) -> int:
    batch = output.shape[0]
    kernel = math.prod(module.kernel_size)
    per_position = kernel * module.in_channels * (module.out_channels // module.groups)
    macs = per_position * batch * math.prod(output.shape[2:])
    if module.bias is not None:
        macs += output.numel()
    return macs


def _deconv(module: nn.Module, inputs: tuple, output: Tensor) -> int:
    x = inputs[0]
    kernel = math.prod(module.kernel_size)
    per_position = kernel * module.in_channels * (module.out_channels // module.groups)
    macs = per_position * x.shape[0] * math.prod(x.shape[2:])
    if module.bias is not None:
        macs += output.numel()
    return macs


def _linear(module: nn.Module, inputs: tuple, output: Tensor) -> int:
    return inputs[0].numel() * output.shape[-1]


def _norm(module: nn.Module, inputs: tuple, output: Tensor) -> int:
    affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
    return inputs[0].numel() * (2 if affine else 1)


def _per_output(module: nn.Module, inputs: tuple, output: Tensor) -> int:
    return output.numel()


def _per_input(module: nn.Module, inputs: tuple, output: Tensor) -> int:
    return inputs[0].numel()


def _upsample(module: nn.Module, inputs: tuple, output: Tensor) -> int:
    # mmcv reads ``output[0]``: the first sample of the batch.
    return output[0].numel()


MMCV_RULES: dict[type, Callable[[nn.Module, tuple, Tensor], int]] = {
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    nn.ConvTranspose1d: _deconv,
    nn.ConvTranspose2d: _deconv,
    nn.ConvTranspose3d: _deconv,
    nn.Linear: _linear,
    nn.BatchNorm1d: _norm,
    nn.BatchNorm2d: _norm,
    nn.BatchNorm3d: _norm,
    nn.SyncBatchNorm: _norm,
    nn.GroupNorm: _norm,
    nn.InstanceNorm1d: _norm,
    nn.InstanceNorm2d: _norm,
    nn.InstanceNorm3d: _norm,
    nn.LayerNorm: _norm,
    nn.ReLU: _per_output,
    nn.PReLU: _per_output,
    nn.ELU: _per_output,
    nn.LeakyReLU: _per_output,
    nn.ReLU6: _per_output,
    nn.MaxPool1d: _per_input,
    nn.MaxPool2d: _per_input,
    nn.MaxPool3d: _per_input,
    nn.AvgPool1d: _per_input,
    nn.AvgPool2d: _per_input,
    nn.AvgPool3d: _per_input,
    nn.AdaptiveMaxPool1d: _per_input,
    nn.AdaptiveMaxPool2d: _per_input,
    nn.AdaptiveMaxPool3d: _per_input,
    nn.AdaptiveAvgPool1d: _per_input,
    nn.AdaptiveAvgPool2d: _per_input,
    nn.AdaptiveAvgPool3d: _per_input,
    nn.Upsample: _upsample,
}


def count_macs_mmcv(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 224, 224),
    *,
    by_type: dict[str, int] | None = None,
) -> int:
    """Multiply-adds of one eval-mode forward pass, counted with mmcv's rules.

    The model runs on the meta device (a model with real weights is copied
    there first and left untouched), so even CEDNet-NeXt-B counts in about a
    second.

    Args:
        model: a module taking one (B, C, H, W) tensor.
        input_size: the input shape (B, C, H, W); mmcv's own default is B = 1.
        by_type: if given, filled with the MACs per module class name.

    Returns:
        MACs per sample (mmcv divides by the batch size).
    """
    target = _to_meta(model)
    totals: dict[str, int] = {}

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        rule = MMCV_RULES[type(module)]
        name = type(module).__name__
        totals[name] = totals.get(name, 0) + int(rule(module, inputs, output))

    handles = [m.register_forward_hook(hook) for m in target.modules() if type(m) in MMCV_RULES]
    was_training = target.training
    target.eval()
    try:
        with torch.no_grad():
            target(torch.zeros(tuple(input_size), device="meta"))
    finally:
        target.train(was_training)
        for h in handles:
            h.remove()
    if by_type is not None:
        by_type.update(totals)
    return sum(totals.values()) // int(input_size[0])


def _to_meta(model: nn.Module) -> nn.Module:
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "meta" for t in tensors):
        return model
    # Deep-copy with every parameter and buffer replaced by a meta tensor, so no
    # weight memory is duplicated.
    memo: dict[int, object] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for b in module.buffers(recurse=False):
            memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)
