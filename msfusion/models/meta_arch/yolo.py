"""YOLOv8-S / YOLOv10-S / YOLO12-S from ultralytics with FINE in the PAN's top-down fusions.

LICENCE: ultralytics is AGPL-3.0. This module imports it only when called
(the optional extra ``pip install "msfusion[ultralytics]"``); a program that
uses it is a combined work under the AGPL-3.0. msfusion's own code stays
Apache-2.0 and ships no ultralytics code or model YAMLs: the networks are
built from the YAMLs of the installed package.

Paper: "Context-Guided Semantic Alignment for Feature Fusion Networks", Lee
et al., arXiv 2606.14005, Table 1 ("PAN" rows: YOLOv8-S 11.2 M -> 12.3 M,
YOLOv10-S 8.1 M -> 9.0 M, YOLOv12-S 9.1 M -> 10.5 M with FINE) and App. C
(Eq. 10): YOLO necks keep the backbone's channels per level, so F_high is
projected to F_low's channels by a 1x1 convolution before the attention.

Where FINE goes: ultralytics' PAN top-down step is ``Upsample(x2, nearest)``
of the coarser map, then ``Concat([Up(F_high), F_low])``, then a C2f-style
block. ``add_fine`` replaces each such ``Concat`` (a two-input concat right
after an ``nn.Upsample``) by ``FineConcat``, which computes ``cat([Up(F_high),
FINE(F_low, F_high)])`` with F_high recovered exactly as every second pixel
of the nearest x2 upsampling (Eq. 3). Channel counts are unchanged, so the
following blocks are untouched; ``fine=False`` changes nothing.

What FINE adds (measured): +493,440 parameters to YOLOv8-S and to YOLOv10-S
alike (the same channels at both fusion points), +0.72 GFLOPs at 640. Table
1's +1.1 M / +1.0 G for YOLOv8-S is the authors' earlier FINE
(``fine={"preset": "earlier"}``: +1,152,288, +1.02 G); its +0.9 M for
YOLOv10-S cannot come from the same module as YOLOv8-S's +1.1 M.

Which models the installed package provides: ``yolov8s`` (the paper's
YOLOv8-S, 11,166,560 parameters), ``yolov10s`` (8,128,272 with the
training-time one-to-many head, the 8.1 M the paper lists) and ``yolo12s``
(9,284,096). The paper's YOLOv12-S (9.1 M, 19.4 G) is the "turbo" YOLOv12
of the authors' fork (sunsmarterjie/yolov12, 9,127,424 parameters), which
is published as a package named ``ultralytics`` itself and cannot be
installed next to it; ``yolo12s`` is the closest model on PyPI.

Counts (GFLOPs = 2 x multiply-adds at 640): ``yolo12s`` counts 23.4 here,
as ultralytics' own ``model.info()`` does (23.3 fused). The turbo network
differs in three places (stride-2 stem convolutions grouped in 2 and 4,
area attention's positional convolution 5x5 instead of 7x7); rebuilt from
ultralytics' modules it has the fork's 9,127,424 parameters and counts 21.5,
or 19.5 with convolutions and linear layers only (no attention products), as
the fork's older counter did: Table 1's 19.4.

Training keeps FINE: ultralytics' trainer rebuilds the network from its
YAML (``DetectionTrainer.get_model``), so ``fine_trainer(options)`` returns a
trainer class whose ``get_model`` builds from the YAML, adds FINE, then loads
the weights: ``YOLO(model).train(data=..., trainer=fine_trainer({}))``.
Checkpoints pickle the module, so msfusion must be importable to load them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from msfusion.models.align.fine import FINE

__all__ = [
    "VARIANTS",
    "FineConcat",
    "YoloComplexity",
    "YoloDetector",
    "add_fine",
    "build_yolo",
    "build_yolo_detector",
    "fine_trainer",
    "top_down_concats",
]

# Our names -> the installed package's model YAMLs (scale letter in the name).
VARIANTS = {
    "yolov8s": "yolov8s.yaml",
    "yolov10s": "yolov10s.yaml",
    "yolo12s": "yolo12s.yaml",
    "yolov8n": "yolov8n.yaml",
}
_NOT_ON_PYPI = {
    "yolov12s": "the paper's YOLOv12-S is YOLOv12-turbo from the authors' fork (sunsmarterjie/yolov12, itself "
    "packaged as 'ultralytics'); the installed package provides 'yolo12s' (ultralytics' YOLO12-S), use that"
}


def _import_ultralytics():
    import PIL.Image

    # Importing ultralytics replaces PIL.Image.open process-wide with a version that, on an image
    # it cannot identify, tries to pip-install a HEIF plugin; msfusion's readers must keep PIL's
    # own error, so the original function is put back.
    pil_open = PIL.Image.open
    try:
        import ultralytics  # noqa: F401
        from ultralytics.nn.modules import Concat
        from ultralytics.nn.tasks import DetectionModel
    except ImportError as err:
        raise ImportError(
            f"{err}. The YOLO detectors need ultralytics (AGPL-3.0), an optional extra: "
            'pip install "msfusion[ultralytics]"'
        ) from err
    finally:
        PIL.Image.open = pil_open
    return DetectionModel, Concat


class FineConcat(nn.Module):
    """``cat([Up(F_high), FINE(F_low, F_high)])`` in place of a PAN top-down ``Concat`` (module doc).

    Args:
        fine: the FINE module (F_low's channels, F_high's as ``high_chs``).
        concat: the replaced ultralytics ``Concat``; its routing attributes are kept.
    """

    def __init__(self, fine: FINE, concat: nn.Module) -> None:
        super().__init__()
        self.fine = fine
        self.d = getattr(concat, "d", 1)
        # ultralytics routes layer inputs by these attributes (from-indices, position, type name, params).
        for attr in ("f", "i", "type", "np"):
            if hasattr(concat, attr):
                setattr(self, attr, getattr(concat, attr))

    def forward(self, x: list[Tensor]) -> Tensor:
        """[Up(F_high) (B, C_h, H, W), F_low (B, C_l, H, W)] -> (B, C_h + C_l, H, W)."""
        up_high, low = x
        high = up_high[..., ::2, ::2]  # exact inverse of nearest x2 upsampling
        return torch.cat([up_high, self.fine(low, high)], dim=self.d)


def top_down_concats(model: nn.Module) -> list[int]:
    """Indices of the two-input ``Concat`` layers fed by an ``nn.Upsample`` (the PAN's top-down fusions)."""
    _, concat = _import_ultralytics()
    layers = model.model
    return [
        i
        for i, layer in enumerate(layers)
        if isinstance(layer, concat)
        and isinstance(getattr(layer, "f", None), list)
        and len(layer.f) == 2
        and layer.f[0] == -1
        and i > 0
        and isinstance(layers[i - 1], nn.Upsample)
    ]


@torch.no_grad()
def _concat_inputs(model: nn.Module, indices: list[int], size: int = 64) -> dict[int, tuple[tuple, tuple]]:
    # One forward of a small image to read each top-down concat's input shapes (channels, strides).
    shapes: dict[int, tuple[tuple, tuple]] = {}
    hooks = [
        model.model[i].register_forward_pre_hook(
            lambda m, args, i=i: shapes.__setitem__(i, (tuple(args[0][0].shape), tuple(args[0][1].shape)))
        )
        for i in indices
    ]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        model(torch.zeros(1, model.yaml.get("channels", 3), size, size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def add_fine(model: nn.Module, **options: Any) -> nn.Module:
    """Put FINE at every top-down fusion of an ultralytics ``DetectionModel``'s PAN (in place).

    Args:
        model: an ultralytics detection model.
        **options: FINE keyword arguments (attention, modulation, ratio, kernel, ...).

    Returns:
        The same model, with ``msfusion_fine`` recording the options.
    """
    indices = top_down_concats(model)
    if not indices:
        raise ValueError(f"{type(model).__name__} has no Upsample -> Concat top-down fusion to put FINE at")
    size = 64
    shapes = _concat_inputs(model, indices, size)
    for i in indices:
        up_shape, low_shape = shapes[i]
        low_stride = size // low_shape[-1]
        fine = FINE(low_shape[1], low_stride, 2 * low_stride, high_chs=up_shape[1], **options)
        model.model[i] = FineConcat(fine.to(next(model.parameters()).device), model.model[i])
    model.msfusion_fine = dict(options)
    return model


def build_yolo(variant: str, *, num_classes: int = 80, fine: bool | dict[str, Any] = False) -> nn.Module:
    """An ultralytics ``DetectionModel`` built from the installed package's YAML, optionally with FINE.

    Args:
        variant: one of ``VARIANTS`` (the paper's ``"yolov8s"``, ``"yolov10s"``, ``"yolo12s"``; ``"yolov8n"``
            for small runs and tests).
        num_classes: object classes (ultralytics' ``nc``: no background class).
        fine: FINE at the PAN's top-down fusions (True or FINE's kwargs).
    """
    if not isinstance(variant, str):
        raise ValueError(
            f"the YOLO variant is named by a string (one of {list(VARIANTS)}), got a {type(variant).__name__}"
        )
    if variant in _NOT_ON_PYPI:
        raise ValueError(f"{variant!r}: {_NOT_ON_PYPI[variant]}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown YOLO variant {variant!r}; the installed ultralytics provides {list(VARIANTS)}")
    if torch.empty(0).device.type == "meta":
        # ultralytics initialises the head's biases from the values of its strides, which meta tensors lack:
        # build on the CPU, then move. The strides stay real numbers (eval mode builds the anchors from them).
        with torch.device("cpu"):
            model = build_yolo(variant, num_classes=num_classes, fine=fine)
        head = model.model[-1]
        stride = head.stride.clone()
        model = model.to("meta")
        head.stride = model.stride = stride
        return model
    detection_model, _ = _import_ultralytics()
    try:
        model = detection_model(VARIANTS[variant], nc=num_classes, verbose=False)
    except FileNotFoundError as err:
        raise ValueError(f"the installed ultralytics does not provide {VARIANTS[variant]} ({err})") from err
    if fine:
        add_fine(model, **({} if fine is True else dict(fine)))
    return model


def fine_trainer(options: dict[str, Any] | None = None) -> type:
    """An ultralytics ``DetectionTrainer`` subclass whose models carry FINE (module doc)."""
    _import_ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.tasks import DetectionModel

    fine_options = dict(options or {})

    class FineDetectionTrainer(DetectionTrainer):
        def get_model(self, cfg=None, weights=None, verbose=True):
            model = DetectionModel(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=False)
            model = self.set_model_names_for_load(model) if hasattr(self, "set_model_names_for_load") else model
            add_fine(model, **fine_options)
            if weights:
                model.load(weights)  # after the surgery, so FINE's weights in a checkpoint are loaded too
            return model

    return FineDetectionTrainer


class YoloDetector(nn.Module):
    """An ultralytics detection model behind torchvision's detection interface (msfusion's detection engine).

    Training: ``model(images, targets)`` (lists of (3, H, W) [0, 1] images and
    dicts with ``boxes`` xyxy pixels, ``labels`` 1..num_classes-1) returns
    ultralytics' loss terms (box, cls, dfl; each multiplied by the batch size,
    as ultralytics' trainer sums them). Inference: ``model(images)`` returns
    ``boxes`` / ``labels`` / ``scores`` per image in input pixels, after
    ultralytics' NMS (or its end-to-end selection for YOLOv10).

    Args:
        yolo: an ultralytics ``DetectionModel`` (with or without FINE).
        num_classes: classes including the background (``yolo`` has ``num_classes - 1``).
        image_size: every image is resized to this square (multiple of 32).
        conf_thresh, iou_thresh, max_det: post-processing (ultralytics' validation defaults 0.001 / 0.7).
    """

    def __init__(
        self,
        yolo: nn.Module,
        num_classes: int,
        *,
        image_size: int = 640,
        conf_thresh: float = 0.001,
        iou_thresh: float = 0.7,
        max_det: int = 100,
    ) -> None:
        super().__init__()
        from ultralytics.cfg import get_cfg

        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (YOLO's largest stride), got {image_size}")
        self.yolo = yolo
        self.yolo.args = get_cfg()  # ultralytics' default loss gains (box 7.5, cls 0.5, dfl 1.5)
        self.num_classes = num_classes
        self.image_size = image_size
        self.conf_thresh = conf_thresh
        self.iou_thresh = iou_thresh
        self.max_det = max_det

    def _resize(self, images) -> tuple[Tensor, list[tuple[float, float]]]:
        s = self.image_size
        batch, scales = [], []
        for image in images:
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"YoloDetector expects (3, H, W) images, got {tuple(image.shape)}")
            h, w = image.shape[-2:]
            batch.append(nn.functional.interpolate(image[None], size=(s, s), mode="bilinear", align_corners=False)[0])
            scales.append((s / h, s / w))
        return torch.stack(batch), scales

    def forward(self, images, targets=None):
        batch, scales = self._resize(images)
        s = self.image_size
        if self.training:
            if targets is None:
                raise ValueError("YoloDetector in training mode needs targets (boxes xyxy in pixels, labels 1..K)")
            index, cls, boxes = [], [], []
            for i, (t, (sy, sx)) in enumerate(zip(targets, scales, strict=True)):
                b = t["boxes"].float() * t["boxes"].new_tensor([sx, sy, sx, sy]) / s
                boxes.append(torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                                          b[:, 3] - b[:, 1]], dim=1))  # fmt: skip
                cls.append(t["labels"].float()[:, None] - 1)
                index.append(torch.full((len(b),), float(i), device=b.device))
            loss, _ = self.yolo.loss({"img": batch, "batch_idx": torch.cat(index), "cls": torch.cat(cls),
                                      "bboxes": torch.cat(boxes)})  # fmt: skip
            names = ("loss_box", "loss_cls", "loss_dfl") if loss.numel() == 3 else None
            return {names[i] if names else f"loss_{i}": v for i, v in enumerate(loss.flatten())}
        from ultralytics.utils import nms

        preds = self.yolo(batch)
        outs = nms.non_max_suppression(
            preds, self.conf_thresh, self.iou_thresh, multi_label=True, max_det=self.max_det,
            end2end=bool(getattr(self.yolo, "end2end", False)),
        )  # fmt: skip
        results = []
        for out, (sy, sx), image in zip(outs, scales, images, strict=True):
            boxes = out[:, :4] / out.new_tensor([sx, sy, sx, sy])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.shape[-1])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.shape[-2])
            results.append({"boxes": boxes, "scores": out[:, 4], "labels": out[:, 5].long() + 1})
        return results


class YoloComplexity(nn.Module):
    """A YOLO detector's network forward on a resized (B, 3, S, S) batch, for ``count_macs``.

    FINE Table 1 and ultralytics count the network alone at 640 x 640 (box
    decoding included, no NMS), as "GFLOPs" = 2 x multiply-adds.
    """

    def __init__(self, detector: YoloDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor):
        return self.detector.yolo(images)


# msfusion.analysis.report counts a detector through its complexity module.
YoloDetector.complexity_module = YoloComplexity


def build_yolo_detector(
    variant: str,
    *,
    num_classes: int,
    fine: bool | dict[str, Any] = False,
    image_size: int = 640,
    conf_thresh: float = 0.001,
    iou_thresh: float = 0.7,
    max_det: int = 100,
) -> YoloDetector:
    """``build_yolo`` for msfusion's detection engine: ``num_classes`` counts the background (torchvision's)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be at least 2, got {num_classes!r}")
    model = YoloDetector(
        build_yolo(variant, num_classes=num_classes - 1, fine=fine), num_classes, image_size=image_size,
        conf_thresh=conf_thresh, iou_thresh=iou_thresh, max_det=max_det,
    )  # fmt: skip
    kwargs = dict(variant=variant, num_classes=num_classes, fine=fine, image_size=image_size, conf_thresh=conf_thresh,
                  iou_thresh=iou_thresh, max_det=max_det)  # fmt: skip
    model.model_cfg = {"builder": "build_yolo_detector", "kwargs": kwargs}
    return model
