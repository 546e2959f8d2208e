"""Parameter and multiply-add counts, on the meta device.

``count_macs`` counts **multiply-adds** (MACs: the unit the papers call
"FLOPs"). It intercepts ATen operators with a ``TorchDispatchMode`` (the
mechanism behind ``torch.utils.flop_counter``) while the model runs on the meta
device, so no memory is allocated and SegNeXt-L at 512x512 counts in about a
second.

Two rule sets:

``rules="torchprofile"`` (default) reproduces torchprofile's ``profile_macs``,
the counter the SegNeXt authors used (SegNeXt repo README and ``tools/get_flops.py``;
the paper's SegNeXt-T/S/B/L "GFLOPs", 6.6 / 15.9 / 34.9 / 70.0 at 512x512, are
its MACs of the whole segmentor including the final logit upsample, NMF rank 64 for B/L):

- convolution: output elements x (in_chs / groups) x kernel area (no bias);
- mm / addmm / bmm / baddbmm / matmul / linear: the product of the matrix
  dimensions (attention and NMF matrix products are counted);
- element-wise ``mul``: one per output element (MSCA's attention product, layer
  scale, NMF updates);
- batch / group / layer / instance norm with an affine weight: one per output element;
- average pooling and ``mean``: one per output element;
- bilinear / bicubic upsampling: four per output element (nearest: none);
- scaled-dot-product attention: the two matrix products.
Additions, divisions, activations, softmax and data movement are free.

``rules="mmcv"`` reproduces mmcv's ``get_model_complexity_info`` (module hooks;
no GELU, no custom LayerNorm, no matmul, no functional interpolate), the counter
of the CEDNet and TopFormer papers; see ``msfusion.analysis.mmcv_counter``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_params", "count_macs", "MacCounter"]

aten = torch.ops.aten


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _out_numel(out: Any) -> int:
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.numel() if isinstance(out, Tensor) else 0


def _conv(args, kwargs, out) -> int:
    # aten.convolution(input, weight, bias, stride, padding, dilation, transposed, ...)
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    kernel = _numel(w.shape[2:])
    if transposed:
        # Weight is (in, out/groups, k...): each input element feeds out/groups x kernel outputs.
        return x.numel() * w.shape[1] * kernel
    # Weight is (out, in/groups, k...): each output element sums in/groups x kernel products.
    return _out_numel(out) * w.shape[1] * kernel


def _mm(args, kwargs, out) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * b.shape[1]


def _addmm(args, kwargs, out) -> int:
    return _mm(args[1:], kwargs, out)


def _bmm(args, kwargs, out) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _baddbmm(args, kwargs, out) -> int:
    return _bmm(args[1:], kwargs, out)


def _per_output(args, kwargs, out) -> int:
    return _out_numel(out)


def _upsample_linear(args, kwargs, out) -> int:
    return 4 * _out_numel(out)


def _norm_with_weight(weight_pos: int) -> Callable[..., int]:
    def count(args, kwargs, out) -> int:
        weight = args[weight_pos] if len(args) > weight_pos else kwargs.get("weight")
        return _out_numel(out) if weight is not None else 0

    return count


def _sdpa(args, kwargs, out) -> int:
    q, k, v = args[0], args[1], args[2]
    batch = _numel(q.shape[:-2])
    lq, d = q.shape[-2], q.shape[-1]
    lk, dv = k.shape[-2], v.shape[-1]
    return batch * lq * lk * (d + dv)


def _build_rules() -> dict[Any, Callable[..., int]]:
    rules: dict[Any, Callable[..., int]] = {}

    def add(packet_name: str, fn: Callable[..., int]) -> None:
        packet = getattr(aten, packet_name, None)
        if packet is not None:
            rules[packet] = fn

    add("convolution", _conv)
    add("mm", _mm)
    add("addmm", _addmm)
    add("bmm", _bmm)
    add("baddbmm", _baddbmm)
    add("mul", _per_output)
    add("mul_", _per_output)
    add("mean", _per_output)
    add("avg_pool2d", _per_output)
    add("_adaptive_avg_pool2d", _per_output)
    add("upsample_bilinear2d", _upsample_linear)
    add("upsample_bicubic2d", _upsample_linear)
    add("_upsample_bilinear2d_aa", _upsample_linear)
    add("native_batch_norm", _norm_with_weight(1))
    add("_native_batch_norm_legit", _norm_with_weight(1))
    add("_native_batch_norm_legit_no_training", _norm_with_weight(1))
    add("native_group_norm", _norm_with_weight(1))
    add("native_layer_norm", _norm_with_weight(2))
    add("_scaled_dot_product_flash_attention_for_cpu", _sdpa)
    add("_scaled_dot_product_efficient_attention", _sdpa)
    add("_scaled_dot_product_flash_attention", _sdpa)
    add("_scaled_dot_product_cudnn_attention", _sdpa)
    return rules


class MacCounter(TorchDispatchMode):
    """Counts multiply-adds of every ATen call made inside it (torchprofile rules)."""

    def __init__(self) -> None:
        super().__init__()
        self.rules = _build_rules()
        self.total = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = self.rules.get(func.overloadpacket)
        if rule is not None:
            macs = int(rule(args, kwargs, out))
            self.total += macs
            name = func.overloadpacket.__name__
            self.by_op[name] = self.by_op.get(name, 0) + macs
        return out


def count_macs(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 224, 224),
    *,
    rules: str = "torchprofile",
    device: str | torch.device = "meta",
) -> int:
    """Multiply-adds of one forward pass in eval mode.

    Args:
        model: any module taking one (B, C, H, W) tensor.
        input_size: the input shape.
        rules: "torchprofile" (SegNeXt's convention) or "mmcv" (CEDNet's).
        device: where to run; "meta" (default) allocates nothing. A model
            with real weights is copied to the meta device first, leaving the
            original untouched.

    Returns:
        The count in multiply-adds (divide by 1e9 for the papers' "GFLOPs").
    """
    size = tuple(input_size) if isinstance(input_size, (tuple, list)) else ()
    if len(size) != 4 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(
            f"input_size must be four positive integers (B, C, H, W), e.g. (1, 3, 512, 512), got {input_size!r}"
        )
    if rules == "mmcv":
        from msfusion.analysis.mmcv_counter import count_macs_mmcv

        return count_macs_mmcv(model, input_size)
    if rules != "torchprofile":
        raise ValueError(f"rules must be 'torchprofile' or 'mmcv', got {rules!r}")
    device = torch.device(device)
    target = _on_device(model, device)
    was_training = target.training
    target.eval()
    x = torch.zeros(tuple(input_size), device=device)
    counter = MacCounter()
    try:
        with torch.no_grad(), counter:
            target(x)
    finally:
        target.train(was_training)
    return counter.total


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    params = list(model.parameters()) + list(model.buffers())
    if all(t.device == device for t in params):
        return model
    if device.type == "meta":
        import copy

        # Deep-copy through the meta device: no weight memory is duplicated.
        memo = {id(t): torch.empty_like(t, device="meta") for t in model.buffers()}
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        return copy.deepcopy(model, memo)
    return model.to(device)
