"""Meta-architectures: one file per architecture (classifier, segmentor, UperNet, the detectors).

``build_detector(arch, ...)`` (``msfusion.models.meta_arch.detector``) looks
``arch`` up in ``DETECTOR_ARCHS``. Importing this package imports every module
in it, so each registers itself: a new torchvision-style detector is one new
file here, a ``TorchvisionArch`` subclass registered with
``DETECTOR_ARCHS.register`` (README "Add your own"), and no other edit.
"""

import importlib
import pkgutil

# Imported only when used: ``detr`` needs transformers (the msfusion[detr] extra), ``yolo`` ultralytics
# (AGPL-3.0: a program that imports it is a combined work). ``external`` registers both archs lazily.
_ON_DEMAND = frozenset({"detr", "yolo"})

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _ON_DEMAND:
        importlib.import_module(f"{__name__}.{_module.name}")
