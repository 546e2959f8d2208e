"""COCO-Stuff 164k, 171 classes (80 things + 91 stuff).

Layout as mmseg's ``tools/dataset_converters/coco_stuff164k.py`` leaves it:
``annotations/<split>/<stem>_labelTrainIds.png`` with train ids 0..170 and
255 = unlabeled. If only the raw ``<stem>.png`` labels of the official
download exist (0-based COCO ids 0..181), they are mapped on the fly with the
same table as that converter, so the conversion step is optional.
"""

from __future__ import annotations

from pathlib import Path

from msfusion.data.class_names import (
    COCO_STUFF_CLASSES,
    COCO_STUFF_NUM_RAW_IDS,
    COCO_STUFF_UNUSED_IDS,
    pascal_colormap,
)
from msfusion.data.label_maps import identity_table, table_from_mapping
from msfusion.data.layout import DatasetLayout
from msfusion.data.registry import register_dataset
from msfusion.data.segmentation import PublicSegmentationDataset, SamplePaths

LAYOUT = DatasetLayout(
    "COCO-Stuff 164k",
    """
  <root>/
    images/{train2017,val2017}/<stem>.jpg
    annotations/{train2017,val2017}/<stem>_labelTrainIds.png   (mmseg conversion)
        or annotations/{train2017,val2017}/<stem>.png            (raw COCO ids 0..181)""",
)
_SPLITS = {"train": "train2017", "val": "val2017", "train2017": "train2017",
           "val2017": "val2017"}  # fmt: skip

RAW_ID_TABLE = table_from_mapping(
    {
        raw: train_id
        for train_id, raw in enumerate(r for r in range(COCO_STUFF_NUM_RAW_IDS) if r not in COCO_STUFF_UNUSED_IDS)
    }
)
TRAIN_ID_TABLE = identity_table(len(COCO_STUFF_CLASSES))


@register_dataset("coco_stuff", task="segmentation")
class COCOStuffDataset(PublicSegmentationDataset):
    """COCO-Stuff 164k semantic segmentation, 171 classes.

    ``root`` holds ``images/`` and ``annotations/``; ``split`` is ``"train"`` /
    ``"train2017"`` or ``"val"`` / ``"val2017"``. The other arguments are
    :class:`~msfusion.data.segmentation.PublicSegmentationDataset`'s.
    """

    CLASSES = COCO_STUFF_CLASSES
    PALETTE = pascal_colormap(len(COCO_STUFF_CLASSES) + 1)[1:]

    @classmethod
    def find_samples(cls, root: str | Path, split: str) -> tuple[Path, str, list[SamplePaths]]:
        root, folder, images, label_dir = LAYOUT.images_and_annotations(root, split, _SPLITS, ["coco_stuff164k"])
        samples, expected = [], []
        for image in images:
            converted = label_dir / f"{image.stem}_labelTrainIds.png"
            if converted.is_file():
                samples.append(SamplePaths(image, converted, TRAIN_ID_TABLE))
            else:
                raw = label_dir / f"{image.stem}.png"
                samples.append(SamplePaths(image, raw, RAW_ID_TABLE))
                expected.append(raw)
        LAYOUT.require_files(expected)
        return root, folder, samples
