"""The generic folder format: your own images and label PNGs plus a class list.

Layout (split sub-folders, or flat folders used for every split)::

    root/
      classes.yaml            names: [background, cat, ...]
                              palette: [[0, 0, 0], [255, 0, 0], ...]   (optional)
      images/<split>/*.jpg|png
      masks/<split>/<same stem>.png

Masks hold train ids ``0..K-1`` with 255 = ignore, as 'L' or 'P' PNGs. When
``classes.yaml`` gives a palette, RGB masks drawn in those colours are
decoded too. Masks stored otherwise are mapped with ``value_map`` (raw value
-> train id, e.g. ``{0: 0, 255: 1}`` for a foreground stored as 255) or
``reduce_zero_label`` (mmsegmentation's option: raw 0 is ignored, ``v -> v - 1``).
Every image stem must be unique (``a.png`` and ``a.jpg`` would share one
mask), and training checks the labels of each split before it starts. This module also writes the format (:func:`write_folder_sample`,
:func:`write_classes_yaml`), used by ``ShapesDataset.write_to_folder``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from msfusion.data.class_names import pascal_colormap
from msfusion.data.label_maps import IGNORE_INDEX, identity_table, reduce_zero_label_table, table_from_mapping
from msfusion.data.layout import DatasetLayout
from msfusion.data.registry import register_dataset
from msfusion.data.segmentation import BadFilePolicy, FileSegmentationDataset, SamplePaths
from msfusion.data.segmentation_transforms import Transform
from msfusion.structured_files import read_mapping

LAYOUT = DatasetLayout(
    "folder dataset",
    """
  <root>/
    classes.yaml              names: [...], optional palette: [[r, g, b], ...]
    images/<split>/*.jpg|png  (or images/*.jpg|png for a single split)
    masks/<split>/<stem>.png  (or masks/<stem>.png)""",
)


def read_classes_yaml(path: Path) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Read ``names`` and the optional ``palette`` from a ``classes.yaml``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Malformed content, naming the file and the problem.
    """
    LAYOUT.require_file(path)
    content = read_mapping(path, "classes.yaml")
    names = content.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} must contain 'names:' with a non-empty list of class names")
    palette = content.get("palette")
    if palette is None:
        return names, None
    valid = isinstance(palette, list) and all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v < 256 for v in c) for c in palette
    )
    if not valid or len(palette) != len(names):
        raise ValueError(f"{path}: 'palette' must list one [r, g, b] (0-255) per class ({len(names)} classes)")
    return names, [tuple(color) for color in palette]


def write_classes_yaml(root: str | Path, names: Sequence[str], palette: Sequence[Sequence[int]]) -> None:
    """Write ``root/classes.yaml`` with ``names`` and ``palette``."""
    content = {"names": list(names), "palette": [[int(v) for v in c] for c in palette]}
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "classes.yaml").write_text(yaml.safe_dump(content, sort_keys=False))


def write_folder_sample(root: str | Path, split: str, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    """Write one image (PNG) and its mask (single-channel PNG) in the folder layout."""
    for folder, array in (("images", image), ("masks", mask)):
        out_dir = Path(root) / folder / split
        out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array)).save(out_dir / f"{stem}.png")


def _require_unique_stems(images: Sequence[Path]) -> None:
    by_stem: dict[str, list[Path]] = {}
    for image in images:
        by_stem.setdefault(image.stem, []).append(image)
    clashes = [paths for paths in by_stem.values() if len(paths) > 1]
    if clashes:
        shown = "; ".join(" and ".join(str(p) for p in paths) for paths in clashes[:3])
        raise ValueError(
            f"folder dataset: {len(clashes)} image name(s) share a stem and would share one mask: {shown}. "
            "Rename or remove one image of each pair."
        )


def _label_table(num_classes: int, value_map: Mapping[int, int] | None, reduce_zero_label: bool) -> np.ndarray:
    if value_map is not None and reduce_zero_label:
        raise ValueError("folder dataset: give value_map or reduce_zero_label, not both")
    if reduce_zero_label:
        return reduce_zero_label_table(num_classes)
    if value_map is None:
        return identity_table(num_classes)
    if not isinstance(value_map, Mapping) or not value_map:
        raise ValueError(f"folder dataset: value_map must map raw mask values to train ids, got {value_map!r}")
    for raw, train_id in value_map.items():
        if not isinstance(raw, int) or not 0 <= raw < 256:
            raise ValueError(f"folder dataset: value_map key {raw!r} is not a mask value in 0..255")
        if not isinstance(train_id, int) or not (0 <= train_id < num_classes or train_id == IGNORE_INDEX):
            raise ValueError(
                f"folder dataset: value_map[{raw}] = {train_id!r} is not a train id in 0..{num_classes - 1} "
                f"or {IGNORE_INDEX} (ignore)"
            )
    return table_from_mapping(value_map)


@register_dataset("folder", task="segmentation")
class FolderDataset(FileSegmentationDataset):
    """Images and masks in the generic folder layout (see the module doc).

    Args:
        root: The folder holding ``classes.yaml``, ``images/`` and ``masks/``.
        split: Sub-folder name, e.g. ``"train"``; ignored by a flat layout.
        transforms: ``(sample, rng) -> sample``; None normalises only.
        on_bad_file: ``"raise"`` or ``"skip"`` bad samples.
        aug_seed: Seed for reproducible augmentation.
        value_map: Raw mask value -> train id (0..K-1, or 255 to ignore); values not listed are errors.
        reduce_zero_label: Raw 0 -> ignore and ``v -> v - 1`` (masks with 0 = "other").
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        on_bad_file: BadFilePolicy = "raise",
        aug_seed: int | None = None,
        value_map: Mapping[int, int] | None = None,
        reduce_zero_label: bool = False,
    ) -> None:
        root = LAYOUT.find_root(root, "classes.yaml")
        names, palette = read_classes_yaml(root / "classes.yaml")
        image_dir = LAYOUT.require_dir(root / "images")
        mask_dir = LAYOUT.require_dir(root / "masks")
        if (image_dir / split).is_dir():
            image_dir = image_dir / split
            mask_dir = LAYOUT.require_dir(mask_dir / split)
        elif any(p.is_dir() for p in image_dir.iterdir()):
            found = sorted(p.name for p in image_dir.iterdir() if p.is_dir())
            raise FileNotFoundError(
                f"folder dataset: missing folder {image_dir / split} (split {split!r}); "
                f"splits found: {found}\nExpected layout:\n{LAYOUT.tree}"
            )
        images = LAYOUT.list_images(image_dir)
        _require_unique_stems(images)
        labels = [mask_dir / f"{image.stem}.png" for image in images]
        LAYOUT.require_files(labels)
        table = _label_table(len(names), value_map, reduce_zero_label)
        samples = [SamplePaths(image, label, table) for image, label in zip(images, labels, strict=True)]
        has_unique_palette = palette is not None and len(set(palette)) == len(palette)
        super().__init__(
            samples,
            names,
            palette or pascal_colormap(len(names)),
            transforms,
            on_bad_file,
            aug_seed,
            label_colors=palette if has_unique_palette else None,
        )
        self.root = root
        self.split = split
