"""``msfusion gradmap MODEL --image PATH [PATH ...] --out DIR``: input-gradient maps (CEDNet App. B).

For each image: ``<stem>_gradmap.png`` (image, |d loss / d input| map, overlay;
Fig. 4) and ``<stem>_gradmap.npy`` (the raw (H, W) float32 map); for all
images: ``area_curve.png`` and ``area_curve.json`` (area of the important region
against the normalised threshold, per image and averaged; Fig. 5). See
``msfusion.analysis.input_gradient`` for the definitions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from msfusion.commands import add_analysis_args, build_analysis_model
from msfusion.commands.erf import load_normalised_image

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "input-gradient maps and important-region areas (CEDNet Appendix B)"
DESCRIPTION = (
    "Back-propagate the loss of a segmentor or classifier to the input image and write the "
    "map of |d loss / d input| (PNG + .npy) and the area of the important region (pixels whose "
    "max-normalised gradient exceeds t) against t (PNG + JSON)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_analysis_args(p, "registered model name (msfusion models)")
    p.add_argument(
        "--target",
        nargs="+",
        type=Path,
        default=None,
        help="label PNG(s) of class indices, one per image (segmentors; 255 = ignore). "
        "Default: the model's own prediction",
    )
    p.add_argument("--target-class", type=int, default=None, help="class index for a classifier's loss")
    p.add_argument("--thresholds", type=int, default=101, help="number of thresholds in [0, 1] (default 101)")


def _load_target(path: Path, shape: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    from msfusion.data.image_io import read_label

    label = read_label(path)
    if label.shape != shape:
        label = np.asarray(Image.fromarray(label.astype(np.uint8)).resize((shape[1], shape[0]), Image.NEAREST))
    return torch.from_numpy(label.astype(np.int64))


def run(args: argparse.Namespace) -> int:
    from msfusion.analysis.input_gradient import (
        important_region_area,
        input_gradient_map,
        save_area_curve,
        save_gradient_map_figure,
    )

    if args.target is not None and len(args.target) != len(args.image):
        raise ValueError(f"give one --target per --image ({len(args.image)} images, {len(args.target)} targets)")
    if args.thresholds < 2:
        raise ValueError("--thresholds must be at least 2")
    for path in args.image:
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")

    model = build_analysis_model(args)
    device = torch.device(args.device)
    thresholds = np.linspace(0.0, 1.0, args.thresholds).round(6).tolist()

    args.out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[float]] = {}
    records = []
    for i, path in enumerate(args.image):
        image, x = load_normalised_image(path, args.size)
        x = x.to(device)
        target = None
        if args.target is not None:
            target = _load_target(args.target[i], image.shape[:2])
        elif args.target_class is not None:
            target = torch.tensor(args.target_class)
        grad_map = input_gradient_map(model, x, target).cpu()
        stem = path.stem if list(args.image).count(path) == 1 else f"{path.stem}_{i}"
        np.save(args.out / f"{stem}_gradmap.npy", grad_map.numpy().astype(np.float32))
        figure = save_gradient_map_figure(
            image, grad_map, args.out / f"{stem}_gradmap.png", title=f"{args.model}: {path.name}"
        )
        areas = important_region_area(grad_map, thresholds)
        curves[stem] = areas
        records.append(
            dict(
                image=str(path),
                gradmap_png=figure.name,
                max_gradient=float(grad_map.max()),
                area=areas,
            )
        )
        print(f"{path}: max |grad| {float(grad_map.max()):.3e}, area at t=0.1: {areas[_nearest(thresholds, 0.1)]:.4f}")

    mean_area = np.mean([r["area"] for r in records], axis=0).tolist()
    if len(records) > 1:
        curves["mean"] = mean_area
    save_area_curve(
        thresholds,
        curves,
        args.out / "area_curve.png",
        title=f"{args.model}: important-region area",
    )
    summary = dict(
        model=args.model,
        checkpoint=str(args.checkpoint) if args.checkpoint else None,
        loss_target="labels" if args.target else ("class" if args.target_class is not None else "prediction"),
        threshold_normalisation="max",
        thresholds=thresholds,
        mean_area=mean_area,
        images=records,
    )
    (args.out / "area_curve.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(records)} map(s), area_curve.png and area_curve.json to {args.out}")
    return 0


def _nearest(values: list[float], x: float) -> int:
    return min(range(len(values)), key=lambda i: abs(values[i] - x))
