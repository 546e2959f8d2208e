"""ONNX export of a segmentor, checked against onnxruntime.

``export_onnx`` writes a graph with dynamic batch, height and width, then runs
it with onnxruntime on random inputs of the export size and of a second,
different size, and reports the largest absolute difference from PyTorch
(fp32; the check fails above ``atol``, 1e-4 by default).

Exporter: the TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``, opset 17 by default) is used: it passes the check at every
size (max difference about 2e-6 for SegNeXt) and takes seconds. The
segmentor pads to a multiple of 32 with integer shape arithmetic
(``Segmentor._pad``), which the tracer keeps as shape operators, so height
and width stay dynamic. If it fails or its graph does not pass
the check at a second size, the dynamo exporter (``dynamo=True``,
``torch.export`` with symbolic H and W; opset 18 at least, about 20x slower
to export) is tried. The report names the one
used. The SegNeXt head's NMF draws its bases from a fixed, non-persistent
buffer in eval mode (``msfusion.models.heads.ham``), so the exported graph is
deterministic and comparable.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx", "check_onnx", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17


def check_onnx(
    model: nn.Module, path: str | Path, sizes: Sequence[tuple[int, int, int, int]], seed: int = 0
) -> dict[str, Any]:
    """Max |PyTorch - onnxruntime| over random inputs of each (B, C, H, W) size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    model.eval()
    for size in sizes:
        x = torch.randn(*size, generator=generator)
        with torch.no_grad():
            expected = model(x).float().numpy()
        got = session.run(None, {input_name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ValueError(f"ONNX output shape {got.shape} differs from PyTorch {expected.shape} for input {size}")
        diffs["x".join(map(str, size))] = float(np.abs(got - expected).max())
    return diffs


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are expected here
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "logits": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=opset,
            dynamo=False,
        )


def _export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    from torch.export import Dim

    batch, height, width = (
        Dim("batch", min=1, max=64),
        Dim("height", min=32, max=4096),
        Dim("width", min=32, max=4096),
    )
    program = torch.onnx.export(
        model,
        (x,),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"images": {0: batch, 2: height, 3: width}},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    program.save(str(path))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] = (1, 3, 512, 512),
    opset: int = DEFAULT_OPSET,
    *,
    exporter: str = "auto",
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export ``model`` (images (B, 3, H, W) -> logits (B, K, H, W)) to ONNX and check it.

    Args:
        model: a segmentor (put in eval mode; fp32 on the CPU for the check).
        path: the ``.onnx`` file to write (atomically).
        input_size: (B, C, H, W) of the example input; H and W stay dynamic.
        opset: ONNX opset version.
        exporter: "torchscript" (``dynamo=False``), "dynamo", or "auto" (the
            first of the two whose graph passes the check).
        atol: largest accepted difference from PyTorch.

    Returns:
        ``{"path", "exporter", "opset", "input_size", "max_abs_diff",
        "diff_per_size", "atol", "dynamic_axes"}``.

    Raises:
        ValueError: no exporter produced a graph within ``atol`` at two sizes.
    """
    from msfusion.checkpoint import atomic_write

    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    path = Path(path)
    model = model.eval().float().cpu()
    b, c, h, w = (int(v) for v in input_size)
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(0))
    # A second size that is not a multiple of 32 exercises the dynamic pad/crop.
    sizes = [(b, c, h, w), (max(b, 1), c, h + 37, max(w - 21, 33))]
    candidates = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    failures = []
    for name in candidates:
        export = _export_torchscript if name == "torchscript" else _export_dynamo
        try:
            atomic_write(path, lambda tmp, export=export: export(model, x, Path(tmp), opset))
            diffs = check_onnx(model, path, sizes)
        except Exception as err:  # exporters raise many types; try the next one
            failures.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        worst = max(diffs.values())
        if worst <= atol:
            return {
                "path": str(path),
                "exporter": name,
                "opset": opset,
                "input_size": [b, c, h, w],
                "max_abs_diff": worst,
                "diff_per_size": diffs,
                "atol": atol,
                "dynamic_axes": ["batch", "height", "width"],
            }
        failures.append(f"{name}: max difference {worst:.3g} > {atol:g} ({diffs})")
    path.unlink(missing_ok=True)
    raise ValueError("ONNX export failed the onnxruntime check:\n  " + "\n  ".join(failures))
