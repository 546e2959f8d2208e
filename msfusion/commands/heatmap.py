"""``msfusion heatmap MODEL --image PATH [PATH ...] --out DIR``: FINE activation heatmaps (FINE Fig. 8).

Writes ``fine_heatmaps.png``: one row per image with the image and, over it,
F_high, F_low, the modulation map M and the aligned F_low of one FINE fusion
stage (default the l = 3 stage, F_low at stride 16). See
``msfusion.analysis.heatmaps``.
"""

from __future__ import annotations

import argparse

import torch

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    from msfusion.commands import add_analysis_args
    from msfusion.commands.flops import parse_size

    p = subparsers.add_parser(
        name,
        help="FINE activation heatmaps: F_high, F_low, M, aligned F_low (FINE Fig. 8)",
        description="Run a model containing FINE on each image and draw, for one fusion stage, the channel-mean "
        "activations of F_high, F_low, the modulation map M and the aligned F_low over the image, as one PNG grid.",
    )
    add_analysis_args(p, "registered model name containing FINE (e.g. semantic_fpn_r50_fine)")
    p.add_argument("--size", type=parse_size, default=None, help="resize images to HxW first")
    p.add_argument("--low-stride", type=int, default=None, help="FINE stage by its F_low stride (default 16)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from msfusion.analysis.heatmaps import capture_fine_maps, save_fine_heatmaps
    from msfusion.commands import build_analysis_model
    from msfusion.commands.erf import load_normalised_image

    model = build_analysis_model(args)
    device = torch.device(args.device)
    images, maps = [], []
    for path in args.image:
        image, x = load_normalised_image(path, args.size)
        m = capture_fine_maps(model, x.to(device), low_stride=args.low_stride)
        images.append(image)
        maps.append(m)
        print(
            f"{path}: FINE stage F_low stride {int(m['low_stride'])}, F_high stride {int(m['high_stride'])}; "
            f"M mean {float(m['modulation'].mean()):+.3f}, range [{float(m['modulation'].min()):+.3f}, "
            f"{float(m['modulation'].max()):+.3f}]"
        )
    out = save_fine_heatmaps(images, maps, args.out / "fine_heatmaps.png", title=f"{args.model}: FINE activations")
    print(f"wrote {out}")
    return 0
