"""Pascal VOC 2012 segmentation, 21 classes (background included).

Layout of the VOC 2012 devkit. Labels are the palette PNGs of
``SegmentationClass`` read as palette indices (0..20, 255 = object borders,
ignored). With ``aug=True`` the training split follows mmseg's ``voc12aug``
config: the ids of ``train.txt`` with ``SegmentationClass`` labels plus the
ids of ``aug.txt`` with ``SegmentationClassAug`` labels (the SBD masks that
mmseg's ``voc_aug.py`` converter writes).
"""

from __future__ import annotations

from pathlib import Path

from msfusion.data.class_names import VOC_CLASSES, pascal_colormap
from msfusion.data.label_maps import identity_table
from msfusion.data.layout import DatasetLayout
from msfusion.data.registry import register_dataset
from msfusion.data.segmentation import BadFilePolicy, FileSegmentationDataset, SamplePaths
from msfusion.data.segmentation_transforms import Transform

LAYOUT = DatasetLayout(
    "Pascal VOC 2012",
    """
  <root>/VOCdevkit/VOC2012/        (or <root>/VOC2012, or <root> itself)
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png     palette PNGs, indices 0..20, 255 = ignore
    ImageSets/Segmentation/{train,val}.txt
    SegmentationClassAug/<id>.png  and ImageSets/Segmentation/aug.txt  (aug=True)""",
)


@register_dataset("voc", task="segmentation")
class VOCSegmentationDataset(FileSegmentationDataset):
    """Pascal VOC 2012 semantic segmentation.

    Args:
        root: ``VOC2012`` or one of its parents.
        split: Name of a split file in ``ImageSets/Segmentation``, e.g. ``"train"``.
        aug: Add the SBD-augmented ids of ``aug.txt`` (``SegmentationClassAug``).
        transforms: ``(sample, rng) -> sample``; None normalises only.
        on_bad_file: ``"raise"`` or ``"skip"`` bad samples.
        aug_seed: Seed for reproducible augmentation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        aug: bool = False,
        transforms: Transform | None = None,
        on_bad_file: BadFilePolicy = "raise",
        aug_seed: int | None = None,
    ) -> None:
        root = LAYOUT.find_root(root, "JPEGImages", ["VOC2012", "VOCdevkit/VOC2012"])
        split_dir = root / "ImageSets" / "Segmentation"
        image_dir = LAYOUT.require_dir(root / "JPEGImages")
        pairs = [(i, "SegmentationClass") for i in LAYOUT.read_split_file(split_dir / f"{split}.txt")]
        if aug:
            seen = {sample_id for sample_id, _ in pairs}
            aug_ids = LAYOUT.read_split_file(split_dir / "aug.txt")
            pairs += [(i, "SegmentationClassAug") for i in aug_ids if i not in seen]
        for folder in {folder for _, folder in pairs}:
            LAYOUT.require_dir(root / folder)
        images = [image_dir / f"{sample_id}.jpg" for sample_id, _ in pairs]
        labels = [root / folder / f"{sample_id}.png" for sample_id, folder in pairs]
        LAYOUT.require_files(images, "image files")
        LAYOUT.require_files(labels)
        table = identity_table(len(VOC_CLASSES))
        samples = [SamplePaths(image, label, table) for image, label in zip(images, labels, strict=True)]
        palette = pascal_colormap(len(VOC_CLASSES))
        super().__init__(samples, VOC_CLASSES, palette, transforms, on_bad_file, aug_seed)
        self.root = root
        self.split = split
