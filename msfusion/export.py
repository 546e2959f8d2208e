"""ONNX export of any msfusion model, checked against onnxruntime.

``export_onnx`` writes a graph whose batch, height and width are dynamic
where the model allows it, then runs it with onnxruntime on random inputs of
the export size and of a second, different size (height + 37, width - 21,
batch 2: not a multiple of 32, so the segmentors' internal pad and crop are
exercised), and reports the largest absolute difference from PyTorch (fp32;
the check fails above ``atol``, 1e-4 by default, times the largest output
magnitude when that exceeds 1, since float32 rounding grows with it). Segmentors map images
(B, 3, H, W) to logits (B, K, H, W); classifiers to (B, K).

Exporters, tried in this order with ``exporter="auto"``, the first whose
graph passes the check being kept (the report names it):

1. ``torch.export`` (the dynamo exporter, ``dynamo=True``, opset 18 at
   least) with automatic dynamic dimensions (``Dim.AUTO``): it exports
   dynamic H and W where the model's shape arithmetic allows and specialises
   where it does not; a graph that specialised fails the second-size check
   and the next exporter is tried.
2. The TorchScript exporter (``dynamo=False``, opset 17) with dynamic batch,
   height and width. The segmentors pad with integer shape arithmetic, which
   the tracer keeps as shape operators, so H and W stay dynamic.
3. The TorchScript exporter at the fixed export shape (batch, height and
   width), for models whose Python code turns sizes into constants while
   tracing (``max()`` of a size, a reshape to a Python int); their graph
   runs at that one shape only. The report then says ``dynamic_axes: []``
   and, in ``notes``, why the dynamic exporters were not kept.

Determinism: the SegNeXt head's NMF draws its bases from a fixed,
non-persistent buffer in eval mode, so exported graphs are comparable.

``onnx``, ``onnxruntime`` and ``onnxscript`` are the ``[export]`` extra
(``pip install "msfusion[export]"``); without them export raises an
``ImportError`` that says so. ``torch.onnx.export(dynamo=...)`` exists from
torch 2.5; on older torch the TorchScript exporter is called without it.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx", "check_onnx", "require_export_deps", "DEFAULT_OPSET", "EXPORTERS"]

DEFAULT_OPSET = 17
EXPORTERS = ("auto", "dynamo", "torchscript", "torchscript_static")
_DYNAMO_MIN_OPSET = 18


def require_export_deps() -> None:
    """``ImportError`` naming the ``[export]`` extra when onnx / onnxruntime / onnxscript are missing."""
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f'ONNX export needs {", ".join(missing)}; install them with: pip install "msfusion[export]" '
            "(or pip install onnx onnxruntime onnxscript)"
        )


def check_onnx(
    model: nn.Module, path: str | Path, sizes: Sequence[tuple[int, int, int, int]], seed: int = 0
) -> dict[str, Any]:
    """Max |PyTorch - onnxruntime| over random inputs of each (B, C, H, W) size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    scale = 0.0
    model.eval()
    for size in sizes:
        x = torch.randn(*size, generator=generator)
        with torch.no_grad():
            expected = model(x).float().numpy()
        got = session.run(None, {input_name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ValueError(f"ONNX output shape {got.shape} differs from PyTorch {expected.shape} for input {size}")
        diffs["x".join(map(str, size))] = float(np.abs(got - expected).max())
        scale = max(scale, float(np.abs(expected).max()))
    # Float32 rounding grows with the outputs' magnitude; the tolerance is relative above 1.
    diffs["_scale"] = max(scale, 1.0)
    return diffs


def _output_axes(model: nn.Module, x: torch.Tensor) -> dict[int, str]:
    with torch.no_grad():
        out = model(x)
    return {0: "batch", 2: "height", 3: "width"} if out.dim() == 4 else {0: "batch"}


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool = True) -> None:
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": _output_axes(model, x)} if dynamic else {}
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch >= 2.5 takes the choice; older torch only has this exporter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are expected here
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            **kwargs,
        )


def _export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    from torch.export import Dim

    auto = getattr(Dim, "AUTO", None)
    if auto is None:
        raise RuntimeError("this torch has no Dim.AUTO (torch >= 2.6 needed for automatic dynamic shapes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x,),
            input_names=["images"],
            output_names=["logits"],
            # By position: forward's argument is called ``images``, ``x``, ... depending on the model.
            dynamic_shapes=({0: auto, 2: auto, 3: auto},),
            opset_version=max(opset, _DYNAMO_MIN_OPSET),
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))


def _first_line(err: BaseException) -> str:
    """The exporter's reason in one line: the innermost cause (torch.export wraps it), colour codes removed."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    # Exporter errors run to hundreds of lines (whole graphs); the first real line names the operation.
    line = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("%")), "")
    return f"{type(err).__name__}: {line[:400]}"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] = (1, 3, 512, 512),
    opset: int = DEFAULT_OPSET,
    *,
    exporter: str = "auto",
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export ``model`` (images (B, 3, H, W) -> logits) to ONNX and check it with onnxruntime.

    Args:
        model: a segmentor or classifier (put in eval mode; fp32 on the CPU for the check).
        path: the ``.onnx`` file to write (atomically).
        input_size: (B, C, H, W) of the example input.
        opset: ONNX opset version (the dynamo exporter uses at least 18).
        exporter: "dynamo", "torchscript" (dynamic H and W),
            "torchscript_static" (fixed H and W), or "auto" (in that order,
            the first whose graph passes the check).
        atol: largest accepted difference from PyTorch.

    Returns:
        ``{"path", "exporter", "opset", "input_size", "max_abs_diff",
        "diff_per_size", "atol", "dynamic_axes", "notes"}``; ``notes`` says
        why earlier exporters were not kept.

    Raises:
        ImportError: the ``[export]`` extra is not installed.
        ValueError: no exporter produced a graph within ``atol``; the message
            gives each exporter's reason (the operation it could not export).
    """
    from msfusion.checkpoint import atomic_write

    require_export_deps()
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    model = model.eval().float().cpu()
    b, c, h, w = (int(v) for v in input_size)
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(0))
    other = (b + 1, c, h + 37, max(w - 21, 33))
    candidates = ["dynamo", "torchscript", "torchscript_static"] if exporter == "auto" else [exporter]
    failures: list[str] = []
    for name in candidates:
        if name == "dynamo":
            export, sizes, axes = _export_dynamo, [(b, c, h, w), other], ["batch", "height", "width"]
        elif name == "torchscript":
            export, sizes, axes = _export_torchscript, [(b, c, h, w), other], ["batch", "height", "width"]
        else:

            def export(m, xx, p, o):
                return _export_torchscript(m, xx, p, o, dynamic=False)

            sizes, axes = [(b, c, h, w), (b, c, h, w)], []  # two random inputs of the one size
        try:
            atomic_write(path, lambda tmp, export=export: export(model, x, Path(tmp), opset))
            diffs = check_onnx(model, path, sizes)
        except Exception as err:  # exporters and onnxruntime raise many types; try the next exporter
            failures.append(f"{name}: {_first_line(err)}")
            continue
        scale = diffs.pop("_scale", 1.0)
        worst = max(diffs.values())
        if worst <= atol * scale:
            return {
                "path": str(path),
                "exporter": name,
                "opset": max(opset, _DYNAMO_MIN_OPSET) if name == "dynamo" else opset,
                "input_size": [b, c, h, w],
                "max_abs_diff": worst,
                "diff_per_size": diffs,
                "atol": atol * scale,
                "dynamic_axes": axes,
                "notes": failures,
            }
        failures.append(f"{name}: max difference {worst:.3g} > {atol * scale:.3g} ({diffs})")
    path.unlink(missing_ok=True)
    raise ValueError(
        f"ONNX export of {type(model).__name__} failed the onnxruntime check with every exporter tried:\n  "
        + "\n  ".join(failures)
    )
