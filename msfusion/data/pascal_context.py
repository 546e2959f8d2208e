"""Pascal Context, 59 classes (mmseg's ``PascalContextDataset59``).

Layout as mmseg's ``tools/dataset_converters/pascal_context.py`` produces it
inside VOC 2010: ``SegmentationClassContext`` PNGs hold 0 (background) and
the 59 classes as 1..59. The 59-class benchmark drops background with
``reduce_zero_label``: 0 -> 255 (ignored), ``v -> v - 1``.
"""

from __future__ import annotations

from pathlib import Path

from msfusion.data.class_names import PASCAL_CONTEXT_59_CLASSES, pascal_colormap
from msfusion.data.label_maps import reduce_zero_label_table
from msfusion.data.layout import DatasetLayout
from msfusion.data.registry import register_dataset
from msfusion.data.segmentation import PublicSegmentationDataset, SamplePaths

LAYOUT = DatasetLayout(
    "Pascal Context",
    """
  <root>/VOCdevkit/VOC2010/        (or <root>/VOC2010, or <root> itself)
    JPEGImages/<id>.jpg
    SegmentationClassContext/<id>.png      0 = background, 1..59 = classes
    ImageSets/SegmentationContext/{train,val}.txt""",
)


@register_dataset("pascal_context", task="segmentation")
class PascalContextDataset(PublicSegmentationDataset):
    """Pascal Context 59 classes, background ignored.

    ``root`` is ``VOC2010`` or one of its parents; ``split`` is ``"train"`` or
    ``"val"`` (a file in ``ImageSets/SegmentationContext``). The other
    arguments are :class:`~msfusion.data.segmentation.PublicSegmentationDataset`'s.
    """

    CLASSES = PASCAL_CONTEXT_59_CLASSES
    PALETTE = pascal_colormap(len(PASCAL_CONTEXT_59_CLASSES) + 1)[1:]

    @classmethod
    def find_samples(cls, root: str | Path, split: str) -> tuple[Path, str, list[SamplePaths]]:
        root = LAYOUT.find_root(root, "JPEGImages", ["VOC2010", "VOCdevkit/VOC2010"])
        ids = LAYOUT.read_split_file(root / "ImageSets" / "SegmentationContext" / f"{split}.txt")
        image_dir = LAYOUT.require_dir(root / "JPEGImages")
        label_dir = LAYOUT.require_dir(root / "SegmentationClassContext")
        images = [image_dir / f"{sample_id}.jpg" for sample_id in ids]
        labels = [label_dir / f"{sample_id}.png" for sample_id in ids]
        LAYOUT.require_files(images, "image files")
        LAYOUT.require_files(labels)
        table = reduce_zero_label_table(len(PASCAL_CONTEXT_59_CLASSES))
        return root, split, [SamplePaths(image, label, table) for image, label in zip(images, labels, strict=True)]
