"""``msfusion export MODEL|--checkpoint PATH --onnx OUT``: ONNX checked by onnxruntime, detectors included.

The exporters' own output (tracer warnings, graphs printed on failure) goes to
``OUT.log`` beside the ``.onnx`` file; the terminal gets the report, or a
short reason per route tried and the log's path.
"""

from __future__ import annotations

import argparse
import json

from msfusion.commands.flops import parse_size
from msfusion.export import EXPORTERS

HELP = "export a model (segmentor, classifier, detector) to ONNX, checked by onnxruntime"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a registered model name (random weights), or use --checkpoint")
    p.add_argument(
        "--checkpoint",
        help="a .safetensors checkpoint of ours (the model is rebuilt from its .json)",
    )
    p.add_argument("--onnx", required=True, help="output .onnx file (the exporters' log goes to OUT.log)")
    p.add_argument("--num-classes", type=int, help="class count for a model given by name")
    p.add_argument(
        "--input",
        type=parse_size,
        default=(512, 512),
        help="example input HxW or N (N x N); H and W stay dynamic where the model allows (a detector's image: "
        "it resizes it as in PyTorch; YOLO uses its own image_size). Default 512x512",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17; the dynamo exporter uses >= 18)")
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="auto",
        help="auto: segmentors and classifiers try torch.export (dynamo), then TorchScript with dynamic H/W, then "
        "TorchScript at the fixed input shape; detectors try TorchScript dynamic, then fixed (YOLO: ultralytics' "
        "exporter); the first whose graph passes the onnxruntime check is kept",
    )


def run(args: argparse.Namespace) -> int:
    import msfusion
    from msfusion.export import export_onnx, require_export_deps

    if bool(args.model) == bool(args.checkpoint):
        raise ValueError("give either a model name or --checkpoint PATH (not both)")
    if args.checkpoint:
        from msfusion.commands import checkpoint_file

        model = msfusion.load_model(checkpoint_file(args.checkpoint))
    else:
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        model = msfusion.create_model(args.model, **kwargs)
    height, width = args.input
    try:
        require_export_deps()
    except ImportError as err:
        raise ValueError(str(err)) from err
    report = export_onnx(model, args.onnx, (1, 3, height, width), args.opset, exporter=args.exporter)
    print(json.dumps(report, indent=2))
    print(f"max |PyTorch - onnxruntime| = {report['max_abs_diff']:.2e} (fp32, {report['exporter']} exporter)")
    if "dynamic" in report:  # a detector: what stays dynamic, in words
        print(f"dynamic: {report['dynamic']}")
    else:
        print(f"dynamic axes: {', '.join(report['dynamic_axes']) or 'none (fixed input shape)'}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"exporter log: {report['log']}")
    return 0
