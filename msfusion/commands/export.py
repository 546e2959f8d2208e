"""``msfusion export MODEL|--checkpoint PATH --onnx OUT``: ONNX with dynamic H/W, checked by onnxruntime."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="export a model to ONNX and check it with onnxruntime")
    p.add_argument("model", nargs="?", help="a registered model name (random weights), or use --checkpoint")
    p.add_argument(
        "--checkpoint",
        help="a .safetensors checkpoint of ours (the model is rebuilt from its .json)",
    )
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--num-classes", type=int, help="class count for a model given by name")
    p.add_argument(
        "--input",
        default="512x512",
        help="example input HxW (H and W stay dynamic), default 512x512",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import msfusion
    from msfusion.export import DEFAULT_OPSET, export_onnx

    if bool(args.model) == bool(args.checkpoint):
        raise ValueError("give either a model name or --checkpoint PATH (not both)")
    if args.checkpoint:
        from msfusion.commands import checkpoint_file

        model = msfusion.load_model(checkpoint_file(args.checkpoint))
    else:
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        model = msfusion.create_model(args.model, **kwargs)
    try:
        height, width = (int(v) for v in args.input.lower().split("x"))
    except ValueError:
        height = width = 0
    if min(height, width) < 1:
        raise ValueError(f"--input must be two positive sizes like 512x512, got {args.input!r}")
    report = export_onnx(model, args.onnx, (1, 3, height, width), args.opset or DEFAULT_OPSET, exporter=args.exporter)
    print(json.dumps(report, indent=2))
    print(f"max |PyTorch - onnxruntime| = {report['max_abs_diff']:.2e} (fp32, {report['exporter']} exporter)")
    return 0
