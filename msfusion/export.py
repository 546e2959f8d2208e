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

Detectors (``export_onnx`` recognises them) go through routes of their own,
each graph checked with onnxruntime against PyTorch on two image sizes:
boxes, scores and labels (and masks, and Panoptic FPN's semantic map) must
agree detection by detection. The detection sets are matched by label and
box, so an order that differs only between equal scores passes; a detection
present on one side only passes only when its score ties the lowest score kept
(a cut-off tie, common with random weights, whose scores are often equal).

- torchvision R-CNN (Faster, Mask, Cascade), RetinaNet, FCOS and Panoptic
  FPN, as torchvision's own ONNX tests export them (a list of one image): the
  TorchScript exporter, input ``image`` (3, H, W) in [0, 1] with H and W
  dynamic (the detector's resize, normalisation and padding are in the
  graph), outputs ``boxes`` (D, 4) xyxy in input pixels, ``scores`` (D,),
  ``labels`` (D,) int64, ``masks`` (D, 1, H, W) for mask models and
  ``semantic`` (H, W) for Panoptic FPN, D dynamic. Panoptic FPN's merge is a
  Python loop over segments: run ``panoptic_merge`` on these outputs.
  torchvision traces its resize scale in float32 where PyTorch works in
  float64: at some image sizes the graph resizes one pixel differently and
  the boxes move by about a pixel (measured: a tiny FCOS exported at 96x80
  matches at 64x80, 72x72, 59x133 and 200x150, not at 59x101 or 43x101);
  images already at the detector's test size (short side ``min_size``) are
  not resized and match.
- RT-DETR(v2): the same input and outputs; the graph resizes every image to
  the detector's square, so H and W are dynamic and D is ``num_top``. Its
  check needs onnxruntime 1.29 or later, Deformable DETR's 1.25
  (``DETECTOR_MIN_ONNXRUNTIME``; an older one is refused before exporting).
- Deformable DETR keeps the aspect ratio, and transformers' deformable
  attention turns the feature-map sizes into constants while tracing: the
  dynamic graph fails the second size and the fixed-shape one is kept
  (``dynamic_axes`` lists only the detection count).
- YOLO: ultralytics' own exporter (``format="onnx", dynamic=True,
  nms=True``), as ultralytics deploys it: input ``images`` (1, 3, H, W) in
  [0, 1], H and W multiples of 32 (no resize in the graph: resize or
  letterbox to the detector's ``image_size`` first), output (1, max_det, 6)
  rows ``x1, y1, x2, y2, score, class`` (class 0-based, i.e. msfusion's label
  - 1; one class per box; unused rows are zeros). The PyTorch side of the
  check is ultralytics' ``non_max_suppression`` with the same settings.

Every exporter's own output (tracer warnings, graphs printed on failure,
ultralytics' log) goes to ``<output>.log`` beside the ``.onnx`` file, never to
the terminal: file descriptors 1 and 2 are redirected while it runs. A
failure raises ``ValueError`` with one line per route tried and the log path.

Determinism: the SegNeXt head's NMF draws its bases from a fixed,
non-persistent buffer in eval mode, so exported graphs are comparable.

``onnx``, ``onnxruntime`` and ``onnxscript`` are the ``[export]`` extra
(``pip install "msfusion[export]"``); without them export raises an
``ImportError`` that says so. ``torch.onnx.export(dynamo=...)`` exists from
torch 2.5; on older torch the TorchScript exporter is called without it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import inspect
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "export_onnx",
    "check_onnx",
    "check_detections",
    "detector_family",
    "require_export_deps",
    "DEFAULT_OPSET",
    "EXPORTERS",
    "DETECTOR_DYNAMIC",
    "DETECTOR_MIN_ONNXRUNTIME",
    "require_onnxruntime_for",
]

DEFAULT_OPSET = 17
EXPORTERS = ("auto", "dynamo", "torchscript", "torchscript_static", "ultralytics")
# What stays dynamic in each detector family's graph (module doc), as the report and the README state it.
DETECTOR_DYNAMIC = {
    "torchvision": "image height and width (resized in the graph as in PyTorch), detection count; one image per call",
    "panoptic_fpn": "image height and width, detection count; one image per call; panoptic_merge runs outside",
    "rt_detr": "image height and width (resized in the graph to the detector's square); num_top detections",
    "deformable_detr": "detection count only: fixed image size (transformers' deformable attention traces the "
    "feature-map sizes as constants)",
    "yolo": "image height and width (multiples of 32, no resize in the graph); one image per call; max_det rows",
}
# The oldest onnxruntime whose run of a family's graph matches PyTorch (measured with torch 2.6 and
# transformers 5.24, the lower bounds; the [export] extra itself allows 1.18 for the other families).
DETECTOR_MIN_ONNXRUNTIME = {
    "rt_detr": ((1, 29), "earlier versions have no float64 Cos kernel, which RT-DETR's position embedding uses"),
    "deformable_detr": ((1, 25), "with earlier versions the graph's detections differ from PyTorch's"),
}
_OUTPUT_NAMES = ("boxes", "scores", "labels", "masks", "semantic")
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
    # Tracer warnings about shape arithmetic are expected: export_onnx sends them to the log.
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


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Send everything written to file descriptors 1 and 2 (C++ and Python alike) to ``log`` (appended)."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "a", encoding="utf-8") as file:
        try:
            os.dup2(file.fileno(), 1)
            os.dup2(file.fileno(), 2)
            # Python-level streams too: a test runner may have replaced sys.stdout by an object of its own.
            with contextlib.redirect_stdout(file), contextlib.redirect_stderr(file), warnings.catch_warnings():
                warnings.simplefilter("default")  # tracer warnings once per place, into the log
                # Written here, not through a test runner's or logger's own warning hook.
                warnings.showwarning = lambda message, category, filename, lineno, f=None, line=None: file.write(
                    warnings.formatwarning(message, category, filename, lineno, line)
                )
                yield
        finally:
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def require_onnxruntime_for(family: str) -> None:
    """``ValueError`` before exporting when the installed onnxruntime cannot check ``family``'s graph."""
    if family not in DETECTOR_MIN_ONNXRUNTIME:
        return
    import onnxruntime as ort

    (major, minor), why = DETECTOR_MIN_ONNXRUNTIME[family]
    found = tuple(int(part) for part in re.findall(r"\d+", ort.__version__)[:2])
    if found < (major, minor):
        raise ValueError(
            f"checking an exported {family} detector needs onnxruntime >= {major}.{minor}, found {ort.__version__}: "
            f"{why}. Upgrade it: pip install -U 'onnxruntime>={major}.{minor}' (Python >= 3.11, as the [detr] extra)"
        )


def detector_family(model: nn.Module) -> str | None:
    """The export route's family of a detector (a key of ``DETECTOR_DYNAMIC``), or None for other models."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    # The DETR / YOLO modules import optional extras; a model of theirs means they are loaded already.
    detr, yolo = sys.modules.get("msfusion.models.meta_arch.detr"), sys.modules.get("msfusion.models.meta_arch.yolo")
    if detr is not None and isinstance(model, detr.DetrDetector):
        return "deformable_detr" if model.arch == "deformable_detr" else "rt_detr"
    if yolo is not None and isinstance(model, yolo.YoloDetector):
        return "yolo"
    if type(model).__name__ == "PanopticFPN":
        return "panoptic_fpn"
    if isinstance(model, (GeneralizedRCNN, RetinaNet, FCOS)):
        return "torchvision"
    return None


class _DetectionOutputs(nn.Module):
    """One image (3, H, W) in [0, 1] -> a detector's tensors for it, in ``names`` order (boxes, scores, ...)."""

    def __init__(self, detector: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.detector = detector
        self.names = tuple(names)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.detector([image])[0]
        return tuple(out[name] for name in self.names)


def _as_detections(names: Sequence[str], arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.asarray(a) for name, a in zip(names, arrays, strict=True)}


def check_detections(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], atol: float = 1e-4) -> dict[str, Any]:
    """Match onnxruntime's detections to PyTorch's and measure the largest difference.

    Detections are paired greedily, best PyTorch score first, with the
    unpaired onnxruntime detection of the same label nearest in box and score;
    a pair counts when boxes and score differ by at most ``atol`` times the
    largest box coordinate (at least 1). Masks (D, 1, H, W) and the semantic
    map (H, W) are compared on the pairs / pixel by pixel.

    Args:
        expected, got: ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,),
            optionally ``masks`` and ``semantic``.
        atol: the tolerance, relative above a box magnitude of 1.

    Returns:
        ``{"detections", "matched", "cutoff_ties", "max_abs_diff", "ok"}`` (and
        ``"semantic_differing"``, the fraction of pixels whose label differs);
        ``ok`` is False when a detection has no partner and its score does not
        tie the lowest score kept, or a paired mask differs by more than ``atol``.
    """
    e_boxes, g_boxes = expected["boxes"].reshape(-1, 4), got["boxes"].reshape(-1, 4)
    e_scores, g_scores = expected["scores"].reshape(-1), got["scores"].reshape(-1)
    e_labels, g_labels = expected["labels"].reshape(-1), got["labels"].reshape(-1)
    scale = max(1.0, float(np.abs(e_boxes).max(initial=0.0)))
    tol = atol * scale
    used = np.zeros(len(g_scores), dtype=bool)
    pairs, worst = [], 0.0
    for i in np.argsort(-e_scores, kind="stable"):
        candidates = np.flatnonzero(~used & (g_labels == e_labels[i]))
        if candidates.size == 0:
            continue
        diff = np.maximum(np.abs(g_boxes[candidates] - e_boxes[i]).max(1), np.abs(g_scores[candidates] - e_scores[i]))
        if diff.min() <= tol:
            j = candidates[diff.argmin()]
            used[j] = True
            pairs.append((i, j))
            worst = max(worst, float(diff.min()))
    mask_ok = True
    if "masks" in expected and pairs:
        e_idx, g_idx = (list(t) for t in zip(*pairs, strict=True))
        mask_diff = float(np.abs(expected["masks"][e_idx] - got["masks"][g_idx]).max())
        worst = max(worst, mask_diff)
        mask_ok = mask_diff <= atol
    # Unpaired detections pass only as ties at the score cut-off (topk / threshold picking among equal scores).
    kept = np.concatenate([e_scores, g_scores])
    cutoff = float(kept.min()) if kept.size else 0.0
    unpaired = np.concatenate([np.delete(e_scores, [i for i, _ in pairs]), g_scores[~used]])
    ties = int(np.sum(np.abs(unpaired - cutoff) <= atol))
    report: dict[str, Any] = {
        "detections": [len(e_scores), len(g_scores)],
        "matched": len(pairs),
        "cutoff_ties": ties,
        "max_abs_diff": worst,
        "ok": ties == len(unpaired) and mask_ok,
    }
    if "semantic" in expected:
        same_shape = expected["semantic"].shape == got["semantic"].shape
        differing = float(np.mean(expected["semantic"] != got["semantic"])) if same_shape else 1.0
        report["semantic_differing"] = differing
        # An argmax may flip where two logits are equal to float32 rounding: allow 0.1 % of the pixels.
        report["ok"] = report["ok"] and differing <= 1e-3
    return report


def _summary(name: str, checks: dict[str, dict[str, Any]]) -> str:
    parts = [
        f"{size}: {c['matched']} of {c['detections'][0]} PyTorch / {c['detections'][1]} ONNX detections matched"
        + (f" ({c['cutoff_ties']} unmatched at a tied cut-off score)" if c["cutoff_ties"] else "")
        + (f", semantic pixels differing {c['semantic_differing']:.2%}" if "semantic_differing" in c else "")
        for size, c in checks.items()
    ]
    return f"{name}: " + "; ".join(parts)


def _random_image(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _export_detector_torchscript(
    model: nn.Module, path: Path, size: tuple[int, int], opset: int, dynamic: bool, atol: float
) -> dict[str, Any]:
    """torchvision / DETR route: trace ``[image] -> dict`` (module doc); returns the check per size."""
    import onnxruntime as ort

    h, w = size
    example = _random_image((3, h, w), 0)
    with torch.no_grad():
        probe = model([example])[0]
    names = [n for n in _OUTPUT_NAMES if isinstance(probe.get(n), torch.Tensor)]
    wrapper = _DetectionOutputs(model, names).eval()
    axes: dict[str, dict[int, str]] = {"image": {1: "height", 2: "width"}} if dynamic else {}
    for name in names:
        if name == "semantic":
            if dynamic:
                axes[name] = {0: "height", 1: "width"}
        elif name == "masks":
            axes[name] = {0: "detections", 2: "height", 3: "width"} if dynamic else {0: "detections"}
        else:
            axes[name] = {0: "detections"}
    kwargs: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(
        wrapper, (example,), str(path), input_names=["image"], output_names=names, dynamic_axes=axes,
        opset_version=opset, **kwargs,
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # The second size turns the aspect ratio around, so the resized and padded network input differs too.
    sizes = [(h, w), (max(w - 21, 33), h + 37)] if dynamic else [(h, w), (h, w)]
    checks = {}
    for k, (hh, ww) in enumerate(sizes):
        image = _random_image((3, hh, ww), k + 1)
        with torch.no_grad():
            expected = [t.float().numpy() if t.is_floating_point() else t.numpy() for t in wrapper(image)]
        got = session.run(None, {"image": image.numpy()})
        key = f"{hh}x{ww}" if dynamic else f"{hh}x{ww}#{k + 1}"
        checks[key] = check_detections(_as_detections(names, expected), _as_detections(names, got), atol)
    return {"inputs": {"image": ["3", "height", "width"] if dynamic else [3, h, w]}, "outputs": names,
            "checks": checks, "dynamic_axes": sorted({a for ax in axes.values() for a in ax.values()})}  # fmt: skip


def _export_ultralytics(model: nn.Module, path: Path, opset: int | None, atol: float) -> dict[str, Any]:
    """YOLO route: ultralytics' exporter with NMS in the graph, checked against its ``non_max_suppression``."""
    import onnxruntime as ort
    from ultralytics.engine.exporter import Exporter
    from ultralytics.utils import nms

    s = model.image_size
    yolo = copy.deepcopy(model.yolo).eval()
    yolo.task = "detect"  # a DetectionModel built from its YAML has no task; the exporter reads it
    settings = dict(
        format="onnx", imgsz=[s, s], dynamic=True, nms=True, simplify=False, batch=1, device="cpu", half=False,
        conf=model.conf_thresh, iou=model.iou_thresh, max_det=model.max_det, opset=opset, verbose=False,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        # The exporter writes next to the model's own file: point that into a scratch folder.
        yolo.pt_path = str(Path(tmp) / "model.pt")
        written = Exporter(overrides=settings)(model=yolo)
        os.replace(written, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checks = {}
    for k, (hh, ww) in enumerate([(s, s), (s + 32, max(s - 32, 32))]):
        images = _random_image((1, 3, hh, ww), k + 1)
        with torch.no_grad():
            reference = nms.non_max_suppression(
                model.yolo(images), model.conf_thresh, model.iou_thresh, multi_label=False, max_det=model.max_det
            )[0].numpy()
        rows = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0][0]
        rows = rows[rows[:, 4] > 0]  # unused rows are zeros
        as_dict = [
            {"boxes": r[:, :4], "scores": r[:, 4], "labels": r[:, 5].astype(np.int64)} for r in (reference, rows)
        ]
        checks[f"{hh}x{ww}"] = check_detections(*as_dict, atol)
    return {"inputs": {"images": [1, 3, "height", "width"]}, "outputs": ["output0 (1, max_det, 6)"],
            "checks": checks, "dynamic_axes": ["height", "width"]}  # fmt: skip


def _log_path(path: Path) -> Path:
    return path.with_name(path.name + ".log")


def _export_detector(
    model: nn.Module, family: str, path: Path, size: tuple[int, int], opset: int | None, exporter: str, atol: float
) -> dict[str, Any]:
    """``export_onnx`` for a detector: the family's routes in order (module doc)."""
    from msfusion.checkpoint import atomic_write

    require_onnxruntime_for(family)

    if family == "yolo":
        candidates = ["ultralytics"]
    else:
        candidates = ["torchscript", "torchscript_static"]
    if exporter != "auto":
        if exporter not in candidates:
            raise ValueError(
                f"a {family} detector exports through {' or '.join(candidates)} (or auto), not {exporter!r}: "
                "torch.export cannot trace a list of images to a variable number of detections"
                if family != "yolo"
                else f"a YOLO detector exports through ultralytics' own exporter (--exporter ultralytics or auto), "
                f"not {exporter!r}"
            )
        candidates = [exporter]
    log = _log_path(path)
    log.unlink(missing_ok=True)
    model = model.eval().float().cpu()
    failures: list[str] = []
    for name in candidates:
        result: dict[str, Any] = {}

        def export(tmp: str, name: str = name, result: dict = result) -> None:
            if name == "ultralytics":
                result.update(_export_ultralytics(model, Path(tmp), opset, atol))
            else:
                dynamic = name == "torchscript"
                result.update(
                    _export_detector_torchscript(model, Path(tmp), size, opset or DEFAULT_OPSET, dynamic, atol)
                )

        try:
            with _output_to(log):
                print(f"==== msfusion export: {family} detector, route {name} ====", flush=True)
                atomic_write(path, export)
        except Exception as err:  # exporters, onnxruntime and ultralytics raise many types
            failures.append(f"{name}: {_first_line(err)}")
            continue
        checks = result["checks"]
        if all(c["ok"] for c in checks.values()):
            import onnx

            graph_opset = max((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                               if o.domain in ("", "ai.onnx")), default=opset)  # fmt: skip
            notes = list(failures)
            dynamic = DETECTOR_DYNAMIC[family]
            if name == "torchscript_static" and family != "deformable_detr":
                dynamic = "detection count only: fixed image size (the dynamic graph failed the check, see notes)"
            if all(c["matched"] == 0 for c in checks.values()):
                notes.append(
                    "no detection was compared (none above the score threshold, or only tied scores, as with "
                    "random weights): the check covers the graph's shapes only"
                )
            return {
                "path": str(path),
                "log": str(log),
                "family": family,
                "exporter": name,
                "opset": graph_opset,
                "input_size": list(size) if family != "yolo" else [model.image_size, model.image_size],
                "inputs": result["inputs"],
                "outputs": result["outputs"],
                "dynamic": dynamic,
                "dynamic_axes": result["dynamic_axes"],
                "max_abs_diff": max(c["max_abs_diff"] for c in checks.values()),
                "atol": atol,
                "checks": checks,
                "notes": notes,
            }
        failures.append(_summary(f"{name}: onnxruntime differs from PyTorch", checks))
    path.unlink(missing_ok=True)
    raise ValueError(
        f"ONNX export of the {family} detector {type(model).__name__} failed with every route tried "
        f"(full exporter output: {log}):\n  " + "\n  ".join(failures)
    )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] = (1, 3, 512, 512),
    opset: int | None = None,
    *,
    exporter: str = "auto",
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export ``model`` to ONNX and check it with onnxruntime (module doc).

    Segmentors and classifiers map images (B, 3, H, W) to logits; detectors
    (``detector_family`` is not None) take one image (3, H, W) of
    ``input_size``'s H and W and give boxes, scores, labels (masks, semantic).

    Args:
        model: a segmentor, classifier or detector (put in eval mode; fp32 on the CPU for the check).
        path: the ``.onnx`` file to write (atomically); the exporters' own
            output goes to ``<path>.log``.
        input_size: (B, C, H, W) of the example input.
        opset: ONNX opset version; None: ``DEFAULT_OPSET`` (17), the dynamo
            exporter uses at least 18, the YOLO route ultralytics' default.
        exporter: "dynamo", "torchscript" (dynamic H and W),
            "torchscript_static" (fixed H and W), "ultralytics" (YOLO), or
            "auto" (the family's routes in order, the first whose graph passes
            the check).
        atol: largest accepted difference from PyTorch.

    Returns:
        ``{"path", "log", "exporter", "opset", "input_size", "max_abs_diff",
        "atol", "dynamic_axes", "notes", ...}``: ``diff_per_size`` for
        segmentors and classifiers; ``family``, ``inputs``, ``outputs``,
        ``dynamic`` (in words) and ``checks`` (per size) for detectors.
        ``notes`` says why earlier exporters were not kept.

    Raises:
        ImportError: the ``[export]`` extra is not installed.
        ValueError: no exporter produced a graph within ``atol``; the message
            gives each exporter's reason (the operation it could not export)
            and the log's path.
    """
    from msfusion.checkpoint import atomic_write

    require_export_deps()
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    family = detector_family(model)
    if family is not None:
        size = (int(input_size[-2]), int(input_size[-1]))
        return _export_detector(model, family, path, size, opset, exporter, atol)
    if exporter == "ultralytics":
        raise ValueError("exporter 'ultralytics' exports YOLO detectors only")
    opset = opset or DEFAULT_OPSET
    log = _log_path(path)
    log.unlink(missing_ok=True)
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
            with _output_to(log):
                print(f"==== msfusion export: exporter {name} ====", flush=True)
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
                "log": str(log),
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
        f"ONNX export of {type(model).__name__} failed the onnxruntime check with every exporter tried "
        f"(full exporter output: {log}):\n  " + "\n  ".join(failures)
    )
