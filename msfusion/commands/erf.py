"""``msfusion erf MODEL --image PATH [PATH ...] --out DIR``: effective receptive fields (FINE Fig. 6, App. F).

Writes ``erf_stages.json`` (ERF sigma per backbone stage and image, E[sigma]
per stage, ratios between adjacent stages: Eq. 11-13), ``erf_stages.png``
(the first image's ERF per stage with the fitted sigma) and, per image,
``<stem>_erf_tokens.png`` (the ERFs of FINE's sampled F_high and F_low tokens
at r = 1, 2, 4: Fig. 6). See ``msfusion.analysis.erf`` for the definitions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from msfusion.commands import add_analysis_args

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run", "load_normalised_image", "parse_kwargs"]


def parse_kwargs(items: list[str] | None) -> dict[str, object]:
    """``["key=value", ...]`` -> dict, values parsed as YAML scalars (``zero_init_last=false``)."""
    import yaml

    out: dict[str, object] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set {item!r} must look like key=value")
        key, text = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(text)
    return out


def load_normalised_image(path: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, Tensor]:
    """An RGB image (H, W, 3) uint8 and its ImageNet-normalised (3, H, W) float tensor."""
    from PIL import Image

    from msfusion.data.image_io import read_image
    from msfusion.data.segmentation_transforms import IMAGENET_MEAN, IMAGENET_STD

    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    image = read_image(path)
    if size is not None:
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = (torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) - mean) / std
    return image, x


HELP = "effective receptive fields per stage and of FINE's sampled tokens (FINE Fig. 6, App. F)"
DESCRIPTION = (
    "Gradient ERF of a feature location (FINE Eq. 11), its Gaussian sigma (Eq. 12) per backbone "
    "stage averaged over the images, the ratio between adjacent stages (Eq. 13), and the ERFs of the "
    "Alignment-Aware Token Sampling tokens at several sampling ratios r (Fig. 6), as JSON and PNG."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_analysis_args(
        p, "a backbone (registered or any timm name), or a segmentor whose backbone is used", num_classes=False
    )
    p.add_argument("--strides", type=int, nargs="+", default=None, help="stages to measure (default: stride >= 4)")
    p.add_argument("--ratios", type=int, nargs="+", default=[1, 2, 4], help="sampling ratios r (default 1 2 4)")
    p.add_argument("--low-stride", type=int, default=8, help="F_low stride of the token figure (default 8)")
    p.add_argument("--high-stride", type=int, default=16, help="F_high stride of the token figure (default 16)")
    p.add_argument("--kernel", type=int, default=None, help="base kernel k (default FINE's: 32 // high stride)")
    p.add_argument(
        "--set",
        dest="kwargs",
        nargs="*",
        default=None,
        metavar="KEY=VALUE",
        help="model keyword arguments, e.g. zero_init_last=false (a random timm ResNet has zeroed residual "
        "branches, so its ERF is that of the stem alone)",
    )


def build_backbone(name: str, kwargs: dict[str, object], checkpoint: Path | None) -> nn.Module:
    """A features-only backbone by name; a segmentor name gives its backbone (after loading weights)."""
    import msfusion as mf
    from msfusion.registry import is_model

    if is_model(name) and mf.model_kind(name) == "segmentor":
        model = mf.create_model(name, **kwargs)
        if checkpoint is not None:
            mf.load_checkpoint(model, checkpoint)
        return model.backbone
    backbone = mf.create_model(name, features_only=True, **kwargs)
    if checkpoint is not None:
        mf.load_checkpoint(backbone, checkpoint)
    return backbone


def run(args: argparse.Namespace) -> int:
    from msfusion.analysis.erf import (
        sampled_token_erfs,
        save_sampled_token_erf_figure,
        save_stage_erf_figure,
        stage_sigmas,
    )

    if any(r < 1 for r in args.ratios):
        raise ValueError(f"--ratios must be positive integers, got {args.ratios}")
    backbone = build_backbone(args.model, parse_kwargs(args.kwargs), args.checkpoint)
    device = torch.device(args.device)
    backbone.to(device).eval()
    loaded = [load_normalised_image(path, args.size) for path in args.image]
    tensors = [x.to(device) for _, x in loaded]
    args.out.mkdir(parents=True, exist_ok=True)

    stages = stage_sigmas(backbone, tensors, args.strides)
    maps = [g.cpu() for g in stages.pop("maps")]
    save_stage_erf_figure(
        maps,
        stages["strides"],
        [sigma[0] for sigma in stages["sigma"]],
        args.out / "erf_stages.png",
        title=f"{args.model}: ERF per stage ({args.image[0].name})",
    )
    token_pngs = []
    for i, (path, x) in enumerate(zip(args.image, tensors, strict=True)):
        result = sampled_token_erfs(
            backbone,
            x,
            low_stride=args.low_stride,
            high_stride=args.high_stride,
            ratios=args.ratios,
            kernel=args.kernel,
        )
        stem = path.stem if list(args.image).count(path) == 1 else f"{path.stem}_{i}"
        png = save_sampled_token_erf_figure(
            result, args.out / f"{stem}_erf_tokens.png", title=f"{args.model}: AATS token ERFs ({path.name})"
        )
        token_pngs.append(png.name)
    summary = dict(
        model=args.model,
        checkpoint=str(args.checkpoint) if args.checkpoint else None,
        images=[str(p) for p in args.image],
        **stages,
        token_figures=token_pngs,
    )
    (args.out / "erf_stages.json").write_text(json.dumps(summary, indent=2))
    print("stride  E[sigma] (px)")
    for s, sigma in zip(stages["strides"], stages["mean_sigma"], strict=True):
        print(f"{s:>6}  {sigma:10.2f}")
    ratios = ", ".join(f"{r:.2f}" for r in stages["ratios"])
    print(f"ratios between adjacent stages: {ratios} (mean {stages['mean_ratio']:.2f}; stride ratio 2)")
    print(f"wrote erf_stages.json, erf_stages.png and {len(token_pngs)} token figure(s) to {args.out}")
    return 0
