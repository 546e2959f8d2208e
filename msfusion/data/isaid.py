"""iSAID aerial-image segmentation, 16 classes (background included).

Layout of mmseg's ``tools/dataset_converters/isaid.py`` (896x896 patches with
384 px overlap): ``img_dir/<split>/<name>.png`` and
``ann_dir/<split>/<name>_instance_color_RGB.png`` holding class indices
0..15 (255 = padding, ignored). The converter stores the image patches as BMP
data under a ``.png`` name; PIL reads them by content. Unconverted iSAID
colour masks (RGB) are decoded with the iSAID colour table.
"""

from __future__ import annotations

from pathlib import Path

from msfusion.data.class_names import ISAID_CLASSES, ISAID_PALETTE
from msfusion.data.label_maps import identity_table
from msfusion.data.layout import DatasetLayout
from msfusion.data.registry import register_dataset
from msfusion.data.segmentation import PublicSegmentationDataset, SamplePaths

LAYOUT = DatasetLayout(
    "iSAID",
    """
  <root>/
    img_dir/{train,val}/<name>.png
    ann_dir/{train,val}/<name>_instance_color_RGB.png   class indices 0..15""",
)
_LABEL_SUFFIX = "_instance_color_RGB.png"


@register_dataset("isaid", task="segmentation")
class ISAIDDataset(PublicSegmentationDataset):
    """iSAID patches in the mmseg layout.

    ``root`` holds ``img_dir/`` and ``ann_dir/``; ``split`` is ``"train"`` or
    ``"val"``. The other arguments are
    :class:`~msfusion.data.segmentation.PublicSegmentationDataset`'s.
    """

    CLASSES = ISAID_CLASSES
    PALETTE = ISAID_PALETTE
    LABEL_COLORS = ISAID_PALETTE

    @classmethod
    def find_samples(cls, root: str | Path, split: str) -> tuple[Path, str, list[SamplePaths]]:
        root = LAYOUT.find_root(root, "img_dir", ["iSAID"])
        images = [
            p for p in LAYOUT.list_images(root / "img_dir" / split, "*.png") if not p.name.endswith(_LABEL_SUFFIX)
        ]
        label_dir = LAYOUT.require_dir(root / "ann_dir" / split)
        labels = [label_dir / f"{image.stem}{_LABEL_SUFFIX}" for image in images]
        LAYOUT.require_files(labels)
        table = identity_table(len(ISAID_CLASSES))
        return root, split, [SamplePaths(image, label, table) for image, label in zip(images, labels, strict=True)]
