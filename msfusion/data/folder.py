"""The generic folder format: your own images and label PNGs plus a class list.

Layout (split sub-folders, or flat folders used for every split)::

    root/
      classes.yaml            names: [background, cat, ...]
                              palette: [[0, 0, 0], [255, 0, 0], ...]   (optional)
      images/<split>/*.jpg|png
      masks/<split>/<same stem>.png

Masks hold train ids ``0..K-1`` with 255 = ignore, as 'L' or 'P' PNGs. When
``classes.yaml`` gives a palette, RGB masks drawn in those colours are
decoded too. This module also writes the format (:func:`write_folder_sample`,
:func:`write_classes_yaml`), used by ``ShapesDataset.write_to_folder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from msfusion.data.base import BadFilePolicy, FileSegmentationDataset, SamplePaths
from msfusion.data.class_names import pascal_colormap
from msfusion.data.label_maps import identity_table
from msfusion.data.layout import DatasetLayout
from msfusion.data.transforms import Transform

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
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"cannot parse {path}: {error}") from error
    names = content.get("names") if isinstance(content, dict) else None
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


class FolderDataset(FileSegmentationDataset):
    """Images and masks in the generic folder layout (see the module doc).

    Args:
        root: The folder holding ``classes.yaml``, ``images/`` and ``masks/``.
        split: Sub-folder name, e.g. ``"train"``; ignored by a flat layout.
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
        labels = [mask_dir / f"{image.stem}.png" for image in images]
        LAYOUT.require_files(labels)
        table = identity_table(len(names))
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
