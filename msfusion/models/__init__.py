"""Backbones, add-ons, necks, heads and the task models built from them.

Importing this package imports every model family, which registers its
variants (timm's pattern); the registry itself imports no family.
"""

import importlib

# Each module registers its variants with ``@register_model`` when imported.
_MODEL_MODULES = (
    "msfusion.models.backbones",
    "msfusion.models.backbones.mscan",
    "msfusion.models.backbones.cednet",
    "msfusion.models.necks",
    "msfusion.models.heads",
    "msfusion.models.heads.semantic_fpn",
    "msfusion.models.segnext",
    "msfusion.models.segnext_ablations",
    "msfusion.models.upernet_cednet",
    "msfusion.models.classifier",
    "msfusion.models.segmentor",
    "msfusion.models.meta_arch",
    "msfusion.models.addons.mscsa",
    "msfusion.models.mscsa_models",
    "msfusion.models.detection_presets",
    "msfusion.models.detr_presets",
    "msfusion.models.semantic_fpn_fine",
    "msfusion.models.backbones.topformer",
    "msfusion.models.heads.topformer_head",
    "msfusion.models.topformer",
    "msfusion.models.panoptic_fpn",
)

for _module in _MODEL_MODULES:
    importlib.import_module(_module)
