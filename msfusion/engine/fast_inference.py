"""Inference-only rewrites that keep a model's float32 outputs (within 1e-4 of eager).

``optimize_for_inference(model)`` returns an evaluation-mode copy of a model
that computes the same function faster on CPUs (and GPUs); the model passed in
is left untouched, so it still trains, saves and loads as before.

Paper: "SegNeXt: Rethinking Convolutional Attention Design for Semantic
Segmentation", Guo et al., NeurIPS 2022 (arXiv 2209.08575): the MSCAN block
of Sec. 3.1 / Fig. 2a is what the block rewrite folds; the Hamburger head of
Sec. 3.2 / Fig. 3c and the final upsample are what compilation fuses.

The rewrites, each an exact algebraic identity up to float32 rounding:

- **Batch-norm folding.** In evaluation mode a BatchNorm is a per-channel
  affine map ``s * x + t``. After a convolution it folds into the
  convolution's weights and bias (the stem and patch embeddings of MSCAN,
  SegNeXt Sec. 3.1; any ``Conv2d -> BatchNorm2d`` pair of an ``nn.Sequential``
  or a conv-norm-act block). The MSCAN block (SegNeXt Fig. 2a) applies its
  BatchNorms *before* 1x1 convolutions, as pre-norms: ``x + l1 * Attn(BN1(x))``
  and ``x + l2 * FFN(BN2(x))``, with the attention's inner shortcut adding
  ``BN1(x)`` back. Each pre-norm folds into the following 1x1 convolution
  (``proj_1``, ``fc1``), each layer scale ``l`` into the last 1x1 convolution
  of its branch (``proj_2``, ``fc2``), and the inner shortcut becomes a
  per-channel scale of the block input: ``(1 + l1 * s1) * x + l1 * t1``. Around
  its activations and MSCA, a block then makes 2 element-wise passes over its
  feature map instead of 7 (two norms, two scales, three additions).
- **Channels-last memory format.** Depthwise convolutions (MSCA's 5x5 and
  strip convolutions, 1x7 ... 21x1) run several times faster on NHWC data
  in oneDNN than on NCHW data, and so does the final bilinear upsample of
  the logits to the input size (vectorised over classes).
- **Freed memory kept for reuse** (glibc, Linux). A 512x512 logit map of
  150 classes is 157 MB; glibc returns every block over 32 MB to the kernel
  when it is freed, so each call page-faults its output in afresh, which
  costs as much as the upsample itself. ``keep_freed_memory()`` makes glibc
  keep freed blocks for the next call, as PyTorch's CUDA caching allocator
  does on GPUs. It is process-wide: the process keeps its peak memory.
- **torch.compile** (optional, ``compile=True``): inductor with weight
  freezing, which fuses the remaining element-wise work (GELU, the attention
  product, the NMF updates of the Hamburger head, the final bilinear
  upsample) into generated kernels and pre-packs the convolution weights. It
  compiles once per input size, so it pays for a fixed size (benchmarks, a
  camera stream), not for images of many sizes.

Nothing trades accuracy: reduced precision is not one of these rewrites.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from msfusion.layers import ConvNormAct
from msfusion.models.backbones.mscan import MSCABlock, OverlapPatchEmbed

__all__ = ["FoldedMSCABlock", "fold_batch_norms", "keep_freed_memory", "optimize_for_inference"]

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The evaluation-mode BatchNorm as ``s * x + t``: (s, t), each (C,)."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError(f"{bn} tracks no running statistics, so it has no fixed evaluation-mode affine map to fold")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _conv_after_affine(conv: nn.Conv2d, scale: Tensor, shift: Tensor) -> nn.Conv2d:
    """A 1x1 convolution equal to ``conv(scale * x + shift)`` (exact: a 1x1 conv has no padding)."""
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError(f"only a dense 1x1 convolution absorbs a preceding affine map exactly, got {conv}")
    fused = copy.deepcopy(conv)
    w = conv.weight  # (out, in, 1, 1)
    bias = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
    fused.weight = nn.Parameter(w * scale[None, :, None, None], requires_grad=False)
    fused.bias = nn.Parameter(bias + (w[:, :, 0, 0] @ shift), requires_grad=False)
    return fused


def _conv_scaled(conv: nn.Conv2d, scale: Tensor, extra_bias: Tensor | None = None) -> nn.Conv2d:
    """A convolution equal to ``scale * (conv(x) + extra_bias)``, per output channel."""
    fused = copy.deepcopy(conv)
    bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    if extra_bias is not None:
        bias = bias + extra_bias
    fused.weight = nn.Parameter(conv.weight * scale[:, None, None, None], requires_grad=False)
    fused.bias = nn.Parameter(bias * scale, requires_grad=False)
    return fused


class FoldedMSCABlock(nn.Module):
    """An evaluation-mode MSCAN block with its BatchNorms and layer scales folded away.

    Computes exactly what ``MSCABlock`` computes in evaluation mode (DropPath and
    Dropout are identities there), (B, C, H, W) -> (B, C, H, W):

        x = (1 + l1 * s1) * x + proj_2'(MSCA(GELU(proj_1'(x))))
        x = x + fc2'(GELU(DW3x3(fc1'(x))))

    where ``proj_1'``/``fc1'`` absorb the pre-norms ``BN(x) = s * x + t`` and
    ``proj_2'``/``fc2'`` absorb the layer scales ``l`` (and ``l1 * t1``, the
    shift the inner shortcut carries).
    """

    def __init__(self, block: MSCABlock) -> None:
        super().__init__()
        s1, t1 = _bn_affine(block.norm1)
        s2, t2 = _bn_affine(block.norm2)
        l1, l2 = block.layer_scale_1.detach(), block.layer_scale_2.detach()
        attn, mlp = block.attn, block.mlp
        self.proj_1 = _conv_after_affine(attn.proj_1, s1, t1)
        self.activation = copy.deepcopy(attn.activation)
        self.spatial_gating_unit = copy.deepcopy(attn.spatial_gating_unit)
        self.proj_2 = _conv_scaled(attn.proj_2, l1, extra_bias=t1)
        self.register_buffer("shortcut_scale", (1 + l1 * s1)[:, None, None].clone())
        self.fc1 = _conv_after_affine(mlp.fc1, s2, t2)
        self.dwconv = copy.deepcopy(mlp.dwconv)
        self.act = copy.deepcopy(mlp.act)
        self.fc2 = _conv_scaled(mlp.fc2, l2)

    def forward(self, x: Tensor) -> Tensor:
        attn = self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))
        x = torch.addcmul(attn, x, self.shortcut_scale)
        return x + self.fc2(self.act(self.dwconv(self.fc1(x))))


def _fuse(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = fuse_conv_bn_eval(conv, bn)
    fused.requires_grad_(False)
    return fused


@torch.no_grad()
def fold_batch_norms(module: nn.Module) -> int:
    """Fold every evaluation-mode BatchNorm this module's structure allows, in place.

    Folds ``MSCABlock`` (pre-norms and layer scales, see ``FoldedMSCABlock``),
    ``OverlapPatchEmbed`` (conv -> BN), ``ConvNormAct`` with a BatchNorm, and
    consecutive ``Conv2d -> BatchNorm2d`` children of an ``nn.Sequential``.
    Call it on a module in evaluation mode whose copy you keep for training:
    the folded module has no BatchNorm statistics left to train.

    Returns:
        The number of BatchNorm layers folded.
    """
    folded = 0
    for name, child in list(module.named_children()):
        if isinstance(child, MSCABlock):
            setattr(module, name, FoldedMSCABlock(child))
            folded += 2
            continue
        if isinstance(child, OverlapPatchEmbed) and isinstance(child.norm, nn.BatchNorm2d):
            child.proj, child.norm = _fuse(child.proj, child.norm), nn.Identity()
            folded += 1
            continue
        if isinstance(child, ConvNormAct) and child.norm_name == "bn" and type(child.bn) is nn.BatchNorm2d:
            child.conv = _fuse(child.conv, child.bn)
            child.bn, child.norm_name = nn.Identity(), None
            folded += 1
        elif isinstance(child, nn.Sequential):
            folded += _fold_sequential(child)
        folded += fold_batch_norms(child)
    return folded


def _fold_sequential(seq: nn.Sequential) -> int:
    keys = list(seq._modules)
    folded = 0
    for a, b in zip(keys, keys[1:], strict=False):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and conv.out_channels == bn.num_features:
            seq._modules[a], seq._modules[b] = _fuse(conv, bn), nn.Identity()
            folded += 1
    return folded


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Let glibc keep freed memory for reuse instead of returning it (process-wide).

    Large tensors are then served from already-mapped pages: no page faults
    per call (``M_MMAP_MAX=0``), and up to ``trim_threshold`` bytes of free
    memory at the top of the heap stay mapped (``M_TRIM_THRESHOLD``).

    Returns:
        True when applied; False where the C library is not glibc (nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))


def _no_grad_forward(forward: Callable[..., Any], channels_last: bool, freeze: bool = False) -> Callable[..., Any]:
    inductor_config = importlib.import_module("torch._inductor.config") if freeze else None

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        # Inductor reads ``freezing`` when it compiles, which happens inside a call (first call per
        # input size), so the setting is patched in around every call rather than passed to compile.
        freezing = inductor_config.patch(freezing=True) if inductor_config else contextlib.nullcontext()
        with torch.no_grad(), freezing:
            if channels_last and args and isinstance(args[0], Tensor) and args[0].dim() == 4:
                args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
            return forward(*args, **kwargs)

    return run


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    fold_bn: bool = True,
    compile: bool | str = False,
    freeze_weights: bool = True,
    keep_memory: bool = True,
) -> nn.Module:
    """An evaluation-mode copy of ``model`` that computes the same outputs faster.

    The copy runs without autograd (its forward is wrapped in ``torch.no_grad``)
    and has frozen weights; ``model`` itself is not modified, so keep it for
    training, ``state_dict`` and checkpoints. Outputs equal eager float32 within
    1e-4 (float32 rounding of the folded weights and of reordered sums).

    Args:
        model: any module; SegNeXt/MSCAN get the block rewrite, every model
            gets conv -> BN folding where its structure allows, channels-last
            and compilation.
        channels_last: NHWC memory format for weights and inputs.
        fold_bn: fold BatchNorms and layer scales (see ``fold_batch_norms``).
        compile: ``torch.compile`` the forward: True for inductor, or the name
            of another ``torch.compile`` backend. The first call per input size
            compiles (tens of seconds on a CPU).
        freeze_weights: with ``compile``, let inductor treat the weights as
            constants (folding and pre-packing them).
        keep_memory: call ``keep_freed_memory()`` (process-wide, glibc only),
            so large outputs reuse mapped pages instead of page-faulting.

    Returns:
        The optimised copy (same class as ``model``, same call signature).

    Example::

        fast = mf.optimize_for_inference(model)         # fold + channels-last
        fast = mf.optimize_for_inference(model, compile=True)  # + inductor, fixed sizes
        logits = fast(images)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"optimize_for_inference takes an nn.Module, got {type(model).__name__}")
    if not isinstance(compile, (bool, str)):
        raise ValueError(f"compile must be True, False or a torch.compile backend name, got {compile!r}")
    fast = copy.deepcopy(model).eval()
    fast.requires_grad_(False)
    if fold_bn:
        fold_batch_norms(fast)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    forward = fast.forward
    if compile:
        forward = torch.compile(forward, backend="inductor" if compile is True else compile)
    # An instance attribute: ``fast(x)``, and methods that call ``self(x)`` (sliding-window and
    # multi-scale inference), all run the optimised forward.
    inductor = compile is True or compile == "inductor"
    fast.forward = _no_grad_forward(forward, channels_last, freeze=inductor and freeze_weights)
    kept = keep_freed_memory() if keep_memory else False
    fast.inference_optimizations = dict(
        channels_last=channels_last, fold_bn=fold_bn, compile=compile if compile else False, keep_freed_memory=kept
    )
    return fast
