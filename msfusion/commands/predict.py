"""``msfusion predict --checkpoint PATH IMAGES|DIR --out DIR``: colour masks, overlays, label PNGs.

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


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="segment images and write PNG masks and overlays")
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
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    p.add_argument(
        "--fast",
        action="store_true",
        help="segmentation and detection: run an inference-optimised copy (BatchNorm folding, channels-last; "
        "same outputs within 1e-4, see msfusion.optimize_for_inference)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    p.set_defaults(func=run)
    return p


def _refuse_options(task: str, args: argparse.Namespace) -> None:
    """Options a detection or panoptic checkpoint would otherwise ignore silently."""
    if task == "detection":
        why = {
            "--slide": "sliding windows are a segmentation test: a detector resizes each whole image itself (its "
            "min_size / max_size), and windows would cut objects apart",
            "--resize": "a detector resizes each image itself to its test size (its min_size / max_size, or "
            "image_size for RT-DETR); to test at another size, build the model with other values",
        }
    elif task == "panoptic":
        why = {
            "--tta": "the panoptic merge has no test-time augmentation",
            "--slide": "Panoptic FPN resizes each whole image itself",
            "--resize": "Panoptic FPN resizes each image itself (its min_size / max_size)",
            "--fast": "not implemented for panoptic models",
        }
    else:
        return
    given = {"--tta": args.tta, "--slide": args.slide, "--resize": args.resize is not None, "--fast": args.fast}
    for option, reason in why.items():
        if given[option]:
            raise ValueError(f"{option} is not available for a {task} checkpoint: {reason}. Run without {option}.")


def run(args: argparse.Namespace) -> int:
    from msfusion.checkpoint import read_metadata
    from msfusion.commands import checkpoint_file, int_pair, output_folder
    from msfusion.engine.checkpointing import check_finite_weights
    from msfusion.engine.evaluator import check_slide_window
    from msfusion.engine.predictor import predict_files
    from msfusion.registry import load_model

    # Every option is checked before the model is loaded, so a typo fails at once.
    checkpoint_file(args.checkpoint)
    output_folder(args.out)
    slide = None
    if args.slide:
        crop, stride = int_pair(args.slide, "--slide", "512,341 (crop,stride)")
        check_slide_window((crop, crop), (stride, stride))
        slide = {"mode": "slide", "crop_size": [crop, crop], "stride": [stride, stride]}
    resize = "recipe"
    if args.resize is not None:
        resize = None if args.resize.lower() == "none" else int_pair(args.resize, "--resize", "2048,512 or none")
    meta = read_metadata(args.checkpoint)
    _refuse_options(meta.get("task", "segmentation"), args)
    model = load_model(args.checkpoint)
    check_finite_weights(model, args.checkpoint)
    model = model.to(args.device).eval()
    if args.fast:
        from msfusion.engine.fast_inference import optimize_for_inference

        model = optimize_for_inference(model)
    if meta.get("task") == "panoptic":
        from msfusion.engine.panoptic import predict_panoptic_files

        written = predict_panoptic_files(
            model, args.inputs, args.out, classes=meta.get("classes"), palette=meta.get("palette") or None,
            device=args.device, on_bad_file="skip" if args.skip_bad else "raise", progress=not args.no_progress,
        )  # fmt: skip
        print(f"wrote {len(written)} panoptic PNGs with a legend (and id PNGs, segment JSONs) to {args.out}")
        return 0
    if meta.get("task") == "detection":
        from msfusion.engine.detection import predict_detection_files

        written = predict_detection_files(
            model, args.inputs, args.out, classes=meta.get("classes"), palette=meta.get("palette") or None,
            device=args.device, on_bad_file="skip" if args.skip_bad else "raise", progress=not args.no_progress,
            tta=args.tta,
        )  # fmt: skip
        print(f"wrote {len(written)} PNGs with boxes, masks, class names and scores (and JSONs) to {args.out}")
        return 0
    recipe = meta.get("config") or {}
    eval_cfg = dict(recipe.get("eval") or {})
    if args.tta:
        eval_cfg["tta"] = True
    if slide:
        eval_cfg.update(slide)
    if resize == "recipe":
        resize = (recipe.get("data") or {}).get("eval_scale")
    written = predict_files(
        model,
        args.inputs,
        args.out,
        classes=meta.get("classes"),
        palette=meta.get("palette"),
        eval_cfg=eval_cfg,
        resize=resize,
        device=args.device,
        on_bad_file="skip" if args.skip_bad else "raise",
        progress=not args.no_progress,
    )
    print(f"wrote {len(written)} x 3 PNGs (label, color, overlay) to {args.out}")
    return 0
