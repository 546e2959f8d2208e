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
    "msfusion.models.presets.segnext",
    "msfusion.models.presets.segnext_ablations",
    "msfusion.models.presets.cednet",
    "msfusion.models.meta_arch",  # every architecture file but the optional extras (its __init__)
    "msfusion.models.addons.mscsa",
    "msfusion.models.presets.mscsa",
    "msfusion.models.presets.fine",
    "msfusion.models.backbones.topformer",
    "msfusion.models.heads.topformer_head",
    "msfusion.models.presets.topformer",
    "msfusion.models.presets.baselines",
)

for _module in _MODEL_MODULES:
    importlib.import_module(_module)
