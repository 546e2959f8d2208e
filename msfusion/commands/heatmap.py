"""``msfusion heatmap MODEL --image PATH [PATH ...] --out DIR``: FINE activation heatmaps (FINE Fig. 8).

Writes ``fine_heatmaps.png``: one row per image with the image and, over it,
F_high, F_low, the modulation map M and the aligned F_low of one FINE fusion
stage (default the l = 3 stage, F_low at stride 16; ``--layer`` picks one by
name). Each model reads the image as it expects (a detector normalises,
resizes and pads it itself, a segmentor gets it normalised), and the maps are
mapped back to the image through that resize and padding. See
``msfusion.analysis.heatmaps``.
"""

from __future__ import annotations

import argparse

from msfusion.commands import add_analysis_args, build_analysis_model
from msfusion.commands.erf import load_normalised_image

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "FINE activation heatmaps: F_high, F_low, M, aligned F_low (FINE Fig. 8)"
DESCRIPTION = (
    "Run a model containing FINE on each image and draw, for one fusion stage, the channel-mean "
    "activations of F_high, F_low, the modulation map M and the aligned F_low over the image, as one PNG grid."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_analysis_args(p, "registered model name containing FINE (e.g. semantic_fpn_r50_fine, retinanet_r50_fpn_fine)")
    p.add_argument("--low-stride", type=int, default=None, help="FINE stage by its F_low stride (default 16)")
    p.add_argument("--layer", default=None, help="FINE stage by module name (an unknown name lists the names)")


def run(args: argparse.Namespace) -> int:
    from msfusion.analysis.heatmaps import capture_fine_maps, save_fine_heatmaps, select_fine_layer

    model = build_analysis_model(args)
    layer, _ = select_fine_layer(model, low_stride=args.low_stride, layer=args.layer)
    images, maps = [], []
    for path in args.image:
        image, _ = load_normalised_image(path, args.size)  # the model normalises as it expects (capture_fine_maps)
        m = capture_fine_maps(model, image, layer=layer)
        images.append(image)
        maps.append(m)
        h, w = m["input_size"].tolist()
        print(
            f"{path}: FINE layer {layer!r}, F_low stride {int(m['low_stride'])}, F_high stride "
            f"{int(m['high_stride'])}, network input {h}x{w} (+ padding); "
            f"M mean {float(m['modulation'].mean()):+.3f}, range [{float(m['modulation'].min()):+.3f}, "
            f"{float(m['modulation'].max()):+.3f}]"
        )
    out = save_fine_heatmaps(images, maps, args.out / "fine_heatmaps.png", title=f"{args.model}: FINE activations")
    print(f"wrote {out}")
    return 0
