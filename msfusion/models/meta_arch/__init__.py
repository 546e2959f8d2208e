"""Detection meta-architectures: one file per architecture, each registered in ``DETECTOR_ARCHS``.

``build_detector(arch, ...)`` (``msfusion.models.meta_arch.detector``) looks ``arch`` up
in ``DETECTOR_ARCHS``; importing this package registers the torchvision-style
architectures (R-CNN, dense, cascade). A new torchvision-style detector is one
new file here: a ``TorchvisionArch`` subclass registered with
``DETECTOR_ARCHS.register`` (README "Add your own").
"""

import importlib

for _module in ("rcnn", "dense", "cascade"):
    importlib.import_module(f"{__name__}.{_module}")
