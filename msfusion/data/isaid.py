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

from msfusion.data.base import BadFilePolicy, FileSegmentationDataset, SamplePaths
from msfusion.data.class_names import ISAID_CLASSES, ISAID_PALETTE
from msfusion.data.label_maps import identity_table
from msfusion.data.layout import DatasetLayout
from msfusion.data.transforms import Transform

LAYOUT = DatasetLayout(
    "iSAID",
    """
  <root>/
    img_dir/{train,val}/<name>.png
    ann_dir/{train,val}/<name>_instance_color_RGB.png   class indices 0..15""",
)
_LABEL_SUFFIX = "_instance_color_RGB.png"


class ISAIDDataset(FileSegmentationDataset):
    """iSAID patches in the mmseg layout.

    Args:
        root: Folder holding ``img_dir/`` and ``ann_dir/``.
        split: ``"train"`` or ``"val"``.
        transforms: ``(sample, rng) -> sample``; None normalises only.
        on_bad_file: ``"raise"`` or ``"skip"`` bad samples.
        aug_seed: Seed for reproducible augmentation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        on_bad_file: BadFilePolicy = "raise",
        aug_seed: int | None = None,
    ) -> None:
        root = LAYOUT.find_root(root, "img_dir", ["iSAID"])
        images = [
            p for p in LAYOUT.list_images(root / "img_dir" / split, "*.png") if not p.name.endswith(_LABEL_SUFFIX)
        ]
        label_dir = LAYOUT.require_dir(root / "ann_dir" / split)
        labels = [label_dir / f"{image.stem}{_LABEL_SUFFIX}" for image in images]
        LAYOUT.require_files(labels)
        table = identity_table(len(ISAID_CLASSES))
        samples = [SamplePaths(image, label, table) for image, label in zip(images, labels, strict=True)]
        super().__init__(
            samples,
            ISAID_CLASSES,
            ISAID_PALETTE,
            transforms,
            on_bad_file,
            aug_seed,
            label_colors=ISAID_PALETTE,
        )
        self.root = root
        self.split = split
