"""``msfusion predict --checkpoint PATH IMAGES|DIR --out DIR``: what a checkpoint sees in image files, as PNG and JSON.

The checkpoint's task decides what is written: segmentation label, colour and
overlay PNGs; detection pictures with boxes, masks, names and scores (and a
JSON per image); panoptic pictures, id PNGs and segment JSONs. Options that
mean nothing for the task are refused, not ignored: detection takes ``--tta``
(horizontal flip, merged per class by NMS) and ``--fast`` but resizes each
image itself (no ``--slide`` or ``--resize``); panoptic takes none of them.
Weights holding NaN or infinite values are refused before any image is read.
"""

from __future__ import annotations

import argparse

from msfusion.commands import add_device_option, add_progress_option, checkpoint_file, int_pair, output_folder

HELP = "run a checkpoint on image files: masks, boxes or panoptic maps as PNG (and JSON)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files and/or folders of images")
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint of ours (with its .json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tta", action="store_true", help="segmentation: multi-scale + flip test; detection: flip test")
    p.add_argument("--slide", metavar="CROP,STRIDE", help="segmentation: sliding-window test, e.g. 512,341")
    p.add_argument(
        "--resize",
        metavar="LONG,SHORT",
        help="segmentation: keep-ratio test scale, e.g. 2048,512 (default: the training recipe's data.eval_scale; "
        "'none' keeps the size)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="warn and skip unreadable images instead of stopping",
    )
    add_device_option(p)
    p.add_argument(
        "--fast",
        action="store_true",
        help="segmentation and detection: run an inference-optimised copy (BatchNorm folding, channels-last; "
        "same outputs within 1e-4, see msfusion.optimize_for_inference)",
    )
    add_progress_option(p)


def run(args: argparse.Namespace) -> int:
    import msfusion as mf

    # Every option is checked before the model is loaded, so a typo fails at once.
    checkpoint_file(args.checkpoint)
    output_folder(args.out)
    slide = tuple(int_pair(args.slide, "--slide", "512,341 (crop,stride)")) if args.slide else None
    resize = "recipe"
    if args.resize is not None:
        resize = None if args.resize.lower() == "none" else tuple(int_pair(args.resize, "--resize", "2048,512 or none"))
    result = mf.predict(
        args.checkpoint,
        args.inputs,
        args.out,
        tta=args.tta,
        slide=slide,
        resize=resize,
        fast=args.fast,
        device=args.device,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
    )
    print(result.summary)
    return 0
