"""Cityscapes fine annotations, 19 train classes.

Layout of the official download (``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip``). Labels are read from ``*_gtFine_labelTrainIds.png``
when present (produced by cityscapesScripts' ``createTrainIdLabelImgs`` or
mmseg's converter), else from ``*_gtFine_labelIds.png`` mapped to train ids
with the cityscapesScripts table (SegNeXt's Cityscapes configs evaluate the 19
classes); every other label id is ignored (255).
"""

from __future__ import annotations

from pathlib import Path

from msfusion.data.class_names import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    CITYSCAPES_NUM_LABEL_IDS,
    CITYSCAPES_PALETTE,
)
from msfusion.data.label_maps import identity_table, table_from_mapping
from msfusion.data.layout import DatasetLayout
from msfusion.data.registry import register_dataset
from msfusion.data.segmentation import PublicSegmentationDataset, SamplePaths

LAYOUT = DatasetLayout(
    "Cityscapes",
    """
  <root>/
    leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<name>_gtFine_labelIds.png
        (or <name>_gtFine_labelTrainIds.png, used when present)""",
)
_IMAGE_SUFFIX = "_leftImg8bit.png"

LABEL_ID_TABLE = table_from_mapping(
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    ignored=set(range(CITYSCAPES_NUM_LABEL_IDS)) - set(CITYSCAPES_LABEL_TO_TRAIN_ID),
)
TRAIN_ID_TABLE = identity_table(len(CITYSCAPES_CLASSES))


@register_dataset("cityscapes", task="segmentation")
class CityscapesDataset(PublicSegmentationDataset):
    """Cityscapes ``gtFine``, label ids mapped to the 19 train ids.

    ``root`` holds ``leftImg8bit/`` and ``gtFine/``; ``split`` is ``"train"``,
    ``"val"`` or ``"test"``. The other arguments are
    :class:`~msfusion.data.segmentation.PublicSegmentationDataset`'s.
    """

    CLASSES = CITYSCAPES_CLASSES
    PALETTE = CITYSCAPES_PALETTE

    @classmethod
    def find_samples(cls, root: str | Path, split: str) -> tuple[Path, str, list[SamplePaths]]:
        root = LAYOUT.find_root(root, "leftImg8bit", ["cityscapes"])
        images = LAYOUT.list_images(root / "leftImg8bit" / split, f"*{_IMAGE_SUFFIX}", recursive=True)
        label_root = LAYOUT.require_dir(root / "gtFine" / split)
        samples, expected = [], []
        for image in images:
            city = image.parent.name
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            train_ids = label_root / city / f"{stem}_gtFine_labelTrainIds.png"
            label_ids = label_root / city / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                samples.append(SamplePaths(image, train_ids, TRAIN_ID_TABLE))
            else:
                samples.append(SamplePaths(image, label_ids, LABEL_ID_TABLE))
                expected.append(label_ids)
        LAYOUT.require_files(expected)
        return root, split, samples
