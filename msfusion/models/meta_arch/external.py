"""The detectors other libraries build: the DETR family (transformers) and YOLO (ultralytics), imported lazily.

``build_detector(arch, ...)`` with ``arch`` one of ``EXTERNAL_ARCHS`` lands
here (``build_external_detector``, registered in ``DETECTOR_ARCHS``): the DETR
archs import ``msfusion.models.meta_arch.detr`` (Hugging Face transformers,
the optional extra ``pip install "msfusion[detr]"``) only when called, so
``import msfusion`` works without it. ``arch="yolo"`` with ``backbone`` a
YOLO variant (``"yolov8s"``) builds ultralytics' model (AGPL-3.0, the
optional extra ``msfusion[ultralytics]``; ``msfusion.models.meta_arch.yolo``)
for the same engine. ``num_classes`` counts the background (torchvision's
convention): the detectors have ``num_classes - 1`` labels.

The papers' registered DETR and YOLO models live with their paper under
``msfusion.models.presets`` (RT-DETR and YOLO with FINE: ``fine``; Deformable
DETR + MSCSA: ``mscsa``; on CEDNet: ``cednet``; the baselines: ``baselines``).
"""

from __future__ import annotations

import functools
from dataclasses import fields
from typing import Any

from torch import nn

from msfusion.models.meta_arch.detector import DETECTOR_ARCHS, DetectorArgs
from msfusion.registry import register_builder

__all__ = ["DETR_ARCHS", "EXTERNAL_ARCHS", "build_external_detector"]

DETR_ARCHS = ("deformable_detr", "rt_detr", "rt_detr_v2")
# build_detector's archs built by other libraries: transformers' DETRs and ultralytics' YOLO (backbone = variant).
EXTERNAL_ARCHS = (*DETR_ARCHS, "yolo")
# build_detector's arguments that only torchvision's detectors use: a DETR accepts them at their defaults only.
_TORCHVISION_ONLY = ("neck", "neck_kwargs", "roi_strides", "representation", "mask_chs", "head_convs")
# Input settings that build_detector and build_detr share, passed on only when the user changed them.
_INPUT = ("min_size", "max_size", "image_mean", "image_std")


def _import_detr():
    # Raises ImportError naming the extra (pip install "msfusion[detr]") when transformers is missing.
    from msfusion.models.meta_arch import detr

    return detr


def build_external_detector(arch: str, args: DetectorArgs) -> nn.Module:
    """``build_detector``'s arguments for a DETR arch or ``"yolo"`` -> ``build_detr`` / ``build_yolo_detector``.

    Arguments that only torchvision's detectors use must keep their defaults
    (a DETR has no FPN neck or RoI heads); ``min_size``, ``max_size``,
    ``image_mean`` and ``image_std`` override the arch's reference input
    pipeline when changed.
    """
    changed = args.changed()
    for key in _TORCHVISION_ONLY:
        if key in changed and not (key == "neck" and changed[key] is None):
            raise ValueError(
                f"{key}={changed[key]!r} sets a part of torchvision's detectors; {arch} has no FPN neck or RoI heads "
                "(its encoder fuses the levels): leave it out"
            )
    # Input settings pass only when changed (the arch has its own reference pipeline); the rest always.
    given = {f.name: getattr(args, f.name) for f in fields(args) if f.name != "extra"}
    out = {k: v for k, v in given.items() if k not in _TORCHVISION_ONLY and (k not in _INPUT or k in changed)}
    extra = dict(args.extra)
    if arch == "yolo":
        # ultralytics' YOLO carries its own backbone and PAN: the variant is named as the backbone.
        from msfusion.models.meta_arch.yolo import VARIANTS  # no ultralytics import at module level

        if not isinstance(out.get("backbone"), str):
            raise ValueError(
                f"arch 'yolo' takes an ultralytics variant as its backbone (it has its own backbone and PAN), "
                f"got {type(out.get('backbone')).__name__}; choose one of {list(VARIANTS)}"
            )
        own = {"backbone", "num_classes", "fine"}
        bad = sorted(k for k in changed if k not in own)
        if bad:
            raise ValueError(f"{bad} do not apply to YOLO (its backbone and PAN are ultralytics'): leave them out")
        from msfusion.models.meta_arch.yolo import build_yolo_detector

        return build_yolo_detector(out["backbone"], num_classes=out["num_classes"], fine=args.fine, **extra)
    return _import_detr().build_detr(arch, **out, **extra)


def _build_yolo_detector(**kwargs: Any) -> nn.Module:
    # Checkpoints name this builder; ultralytics (AGPL-3.0) is imported only here.
    from msfusion.models.meta_arch.yolo import build_yolo_detector

    return build_yolo_detector(**kwargs)


register_builder("build_yolo_detector", _build_yolo_detector)
# ``build_detector(arch, ...)`` finds these archs in DETECTOR_ARCHS; transformers and ultralytics load on first use.
for _arch in EXTERNAL_ARCHS:
    DETECTOR_ARCHS.register(_arch, functools.partial(build_external_detector, _arch))
