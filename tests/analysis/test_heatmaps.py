"""FINE Fig. 8 heatmaps (``msfusion.analysis.heatmaps``): each model reads the image as it expects, and the maps
land on the image through the model's own resize and padding.

The known answer: a backbone whose features are the local brightness, and an FPN whose lateral convs average
their inputs with positive weights, so F_low and F_high are brightest where the image is. One white square on
a black image must light up that square in the overlay, for a segmentor (normalised input, padded inside) and
for a torchvision detector (0-1 input, resized, normalised and padded by its ``GeneralizedRCNNTransform``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msfusion import build_detector, build_segmentor
from msfusion.analysis.heatmaps import capture_fine_maps, fine_heatmap, model_input, save_fine_heatmaps

STRIDES = (4, 8, 16, 32)
IMAGENET_MEAN_01 = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD_01 = torch.tensor([0.229, 0.224, 0.225])
# A 100x200 image with a white 40x50 square at rows 50-90, columns 130-180 (bottom right: a map that is
# cropped at its top-left, or stretched over the padding, misses it).
SQUARE = (slice(50, 90), slice(130, 180))
# The ImageNet mean colour normalises to ~0, the value both models pad with: only the square stands out.
MEAN_COLOUR = (124, 116, 104)


def _image(background: tuple[int, int, int] = MEAN_COLOUR) -> np.ndarray:
    image = np.empty((100, 200, 3), np.uint8)
    image[:] = background
    image[SQUARE] = 255
    return image


class _Brightness(nn.Module):
    """Features: the mean brightness of the network input over s x s cells, at strides 4-32; keeps its input."""

    def __init__(self, chs: int = 4) -> None:
        super().__init__()
        self.chs = chs
        self.gain = nn.Parameter(torch.ones(()))
        self.feature_info = [dict(chs=chs, reduction=s, module=f"s{s}") for s in STRIDES]
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.seen = x.detach().clone()
        g = x.mean(1, keepdim=True) * self.gain
        return [F.avg_pool2d(g, s).expand(-1, self.chs, -1, -1) for s in STRIDES]


def _positive_laterals(neck: nn.Module) -> None:
    with torch.no_grad():
        for conv in neck.lateral_convs.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.fill_(1.0 / conv.weight[0].numel())
                if conv.bias is not None:
                    conv.bias.zero_()


def _segmentor() -> nn.Module:
    torch.manual_seed(0)
    model = build_segmentor(
        _Brightness(), neck="fpn", head="semantic_fpn", num_classes=2,
        neck_kwargs=dict(out_chs=16, fine=True), head_kwargs=dict(channels=8, norm="bn"),
    )  # fmt: skip
    _positive_laterals(model.neck)
    return model


def _detector() -> nn.Module:
    torch.manual_seed(0)
    model = build_detector(
        "retinanet", backbone=_Brightness(), fine=True, num_classes=2, min_size=150, max_size=400,
        neck_kwargs=dict(out_chs=16),
    )  # fmt: skip
    _positive_laterals(model.backbone.neck)
    return model


def _assert_on_square(heat: np.ndarray) -> None:
    """The overlay is hot on the square and cold away from it; its hot part's centre is the square's."""
    square = np.zeros(heat.shape, bool)
    square[SQUARE] = True
    hot = heat > 0.5
    iou = (hot & square).sum() / (hot | square).sum()
    rows, cols = np.nonzero(hot)
    assert iou > 0.6, f"hot region overlaps the square by IoU {iou:.2f}"
    assert abs(rows.mean() - 69.5) < 3 and abs(cols.mean() - 154.5) < 3, (rows.mean(), cols.mean())
    assert heat[SQUARE].mean() > 0.6 and heat[:40, :110].max() < 0.05


@pytest.mark.parametrize("kind", ["segmentor", "detector"])
def test_heatmap_lights_up_the_bright_square(kind, tmp_path):
    model = _segmentor() if kind == "segmentor" else _detector()
    image = _image()
    maps = capture_fine_maps(model, image)
    assert int(maps["low_stride"]) == 16 and int(maps["high_stride"]) == 32
    assert maps["image_size"].tolist() == [100, 200]
    for name in ("low", "high"):
        heat = fine_heatmap(maps, name)
        assert heat.shape == (100, 200)
        _assert_on_square(heat)
    png = save_fine_heatmaps([image], [maps], tmp_path / f"{kind}.png", title=kind)
    assert png.stat().st_size > 1000


def test_each_model_reads_its_own_input():
    black = (0 - IMAGENET_MEAN_01) / IMAGENET_STD_01  # a black pixel, normalised once
    # Segmentor: the ImageNet-normalised image at its own size; the model pads it to 128x224 (bottom/right).
    model = _segmentor()
    inputs, size = model_input(model, _image((0, 0, 0)))
    assert inputs.shape == (1, 3, 100, 200) and size == (100, 200)
    capture_fine_maps(model, _image((0, 0, 0)))
    seen = model.backbone.seen
    assert seen.shape == (1, 3, 128, 224)
    torch.testing.assert_close(seen[0, :, 5, 5], black)
    assert float(seen[0, :, 110:, :].abs().max()) == 0
    # Detector: the 0-1 image; its transform normalises once, resizes 100x200 -> 150x300, pads to 160x320.
    model = _detector()
    inputs, size = model_input(model, _image((0, 0, 0)))
    assert isinstance(inputs, list) and float(inputs[0].max()) == 1.0 and size == (150, 300)
    maps = capture_fine_maps(model, _image((0, 0, 0)))
    seen = model.backbone.backbone.seen
    assert seen.shape == (1, 3, 160, 320) and maps["input_size"].tolist() == [150, 300]
    torch.testing.assert_close(seen[0, :, 5, 5], black)
    torch.testing.assert_close(seen[0, :, 100, 230], (1 - IMAGENET_MEAN_01) / IMAGENET_STD_01)  # in the square
    assert float(seen[0, :, 152:, :].abs().max()) == 0


def test_bad_requests_name_what_the_model_has():
    model = _segmentor()
    with pytest.raises(
        ValueError,
        match=r"has no FINE layer 'neck\.fine'; its FINE layers are 'neck\.aligns\.1' \(F_low stride 8\), "
        r"'neck\.aligns\.2' \(F_low stride 16\)",
    ):
        capture_fine_maps(model, _image(), layer="neck.fine")
    with pytest.raises(ValueError, match=r"no FINE module with F_low at stride 4; its FINE layers are 'neck"):
        capture_fine_maps(model, _image(), low_stride=4)
    maps = capture_fine_maps(model, _image(), layer="neck.aligns.1")
    assert int(maps["low_stride"]) == 8
    normalised = (torch.from_numpy(_image()).permute(2, 0, 1) / 255 - IMAGENET_MEAN_01[:, None, None]) / 0.226
    with pytest.raises(ValueError, match="not normalised"):
        capture_fine_maps(model, normalised)
    with pytest.raises(ValueError, match="were captured from a 100x200 image"):
        save_fine_heatmaps([_image()[:50]], [maps], "unused.png")


def test_cli_unknown_layer_lists_the_names(tmp_path, capsys):
    from PIL import Image

    from msfusion.cli import main

    path = tmp_path / "img.png"
    Image.fromarray(_image()).save(path)
    args = ["heatmap", "test_semantic_fpn_fine", "--image", str(path), "--out", str(tmp_path), "--layer", "nope"]
    assert main(args) == 2
    assert "its FINE layers are 'neck.aligns.1' (F_low stride 8)" in capsys.readouterr().err
