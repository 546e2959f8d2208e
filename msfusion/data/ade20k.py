"""ADE20K (MIT SceneParsing, ``ADEChallengeData2016``), 150 classes.

Layout and label convention as in mmsegmentation's ``ADE20KDataset``, which
SegNeXt trains with (its ADE20K configs set ``reduce_zero_label=True``): raw
label 0 ("other") is ignored (255) and labels 1..150 become train ids 0..149.
"""

from __future__ import annotations

from pathlib import Path

from msfusion.data.class_names import ADE20K_CLASSES, pascal_colormap
from msfusion.data.label_maps import reduce_zero_label_table
from msfusion.data.layout import DatasetLayout
from msfusion.data.registry import register_dataset
from msfusion.data.segmentation import PublicSegmentationDataset, SamplePaths

LAYOUT = DatasetLayout(
    "ADE20K",
    """
  <root>/ADEChallengeData2016/     (or <root> itself)
    images/training/*.jpg          images/validation/*.jpg
    annotations/training/*.png     annotations/validation/*.png  (same stems)""",
)
_SPLITS = {"train": "training", "val": "validation", "training": "training",
           "validation": "validation"}  # fmt: skip


@register_dataset("ade20k", task="segmentation")
class ADE20KDataset(PublicSegmentationDataset):
    """ADE20K scene parsing, 150 classes, raw label 0 ignored.

    ``root`` is ``ADEChallengeData2016`` or its parent folder; ``split`` is
    ``"train"`` / ``"training"`` or ``"val"`` / ``"validation"``. The other
    arguments are :class:`~msfusion.data.segmentation.PublicSegmentationDataset`'s.
    """

    CLASSES = ADE20K_CLASSES
    PALETTE = pascal_colormap(len(ADE20K_CLASSES) + 1)[1:]

    @classmethod
    def find_samples(cls, root: str | Path, split: str) -> tuple[Path, str, list[SamplePaths]]:
        root, folder, images, label_dir = LAYOUT.images_and_annotations(root, split, _SPLITS, ["ADEChallengeData2016"])
        labels = [label_dir / f"{image.stem}.png" for image in images]
        LAYOUT.require_files(labels)
        table = reduce_zero_label_table(len(ADE20K_CLASSES))
        return root, folder, [SamplePaths(image, label, table) for image, label in zip(images, labels, strict=True)]
