"""Checking a dataset's folder layout before any file is read.

Each dataset describes its expected tree once (a short text block) and asks
these helpers for the folders and files it needs. A missing piece raises at
construction with the exact path that is missing and the tree that was
expected, instead of failing later inside a DataLoader worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from msfusion.data.image_io import IMAGE_SUFFIXES


class DatasetLayout:
    """The expected folder tree of one dataset format.

    Args:
        name: Dataset name used in messages, e.g. ``"ADE20K"``.
        tree: The expected layout as indented text, shown in every error.
    """

    def __init__(self, name: str, tree: str) -> None:
        self.name = name
        self.tree = tree.strip("\n")

    def missing(self, path: Path, what: str = "folder") -> FileNotFoundError:
        """The error for a missing folder or file."""
        return FileNotFoundError(f"{self.name}: missing {what} {path}\nExpected layout:\n{self.tree}")

    def find_root(self, root: str | Path, marker: str, wrappers: Sequence[str] = ()) -> Path:
        """Locate the dataset folder given it or one of its parents.

        Args:
            root: What the user passed.
            marker: A relative path that exists inside the dataset folder.
            wrappers: Relative paths tried under ``root`` in order, e.g.
                ``["ADEChallengeData2016"]``, so that users may pass a parent.

        Returns:
            The first of ``root``, ``root/wrapper...`` that contains ``marker``.

        Raises:
            FileNotFoundError: ``root`` does not exist, or none contains ``marker``.
        """
        root = Path(root).expanduser()
        if not root.is_dir():
            raise self.missing(root, "dataset root folder")
        for candidate in [root, *(root / wrapper for wrapper in wrappers)]:
            if (candidate / marker).exists():
                return candidate
        raise self.missing(root / marker)

    def require_dir(self, path: Path) -> Path:
        """Return ``path`` if it is a folder, else raise naming it."""
        if not path.is_dir():
            raise self.missing(path)
        return path

    def require_file(self, path: Path) -> Path:
        """Return ``path`` if it is a file, else raise naming it."""
        if not path.is_file():
            raise self.missing(path, "file")
        return path

    def list_images(self, folder: Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
        """Sorted image files in ``folder``; raises if there are none.

        Args:
            folder: Where to look (must exist).
            pattern: Glob pattern on the file name, e.g. ``"*_leftImg8bit.png"``.
            recursive: Also look in sub-folders.
        """
        self.require_dir(folder)
        paths = folder.rglob(pattern) if recursive else folder.glob(pattern)
        images = sorted(p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise ValueError(
                f"{self.name}: no image files matching {pattern!r} in {folder}\nExpected layout:\n{self.tree}"
            )
        return images

    def images_and_annotations(
        self, root: str | Path, split: str, folders: Mapping[str, str], wrappers: Sequence[str] = ()
    ) -> tuple[Path, str, list[Path], Path]:
        """A split of mmsegmentation's converted layout: ``images/<folder>/*.jpg`` beside ``annotations/<folder>/``.

        ADE20K and COCO-Stuff, as mmsegmentation stores them, keep each split's
        JPEG images in ``images/<folder>`` and its label PNGs in
        ``annotations/<folder>``, where ``<folder>`` is the split's own name
        (e.g. ``training``, ``val2017``).

        Args:
            root: What the user passed (see :meth:`find_root`).
            split: The split the user asked for, a key of ``folders``.
            folders: Split name or alias -> folder, e.g. ``{"val": "validation", "validation": "validation"}``.
            wrappers: As :meth:`find_root`.

        Returns:
            ``(dataset folder, split folder name, sorted images, label folder)``.

        Raises:
            ValueError: ``split`` is not a key of ``folders``, or the image folder holds no image.
            FileNotFoundError: a folder is missing.
        """
        if split not in folders:
            raise ValueError(f"{self.name} split must be one of {sorted(folders)}, got {split!r}")
        folder = folders[split]
        root = self.find_root(root, "images", wrappers)
        images = self.list_images(root / "images" / folder, "*.jpg")
        return root, folder, images, self.require_dir(root / "annotations" / folder)

    def read_split_file(self, path: Path) -> list[str]:
        """Sample ids listed one per line in a split file such as ``train.txt``."""
        self.require_file(path)
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise ValueError(f"{self.name}: split file {path} lists no samples")
        return ids

    def require_files(self, expected: Sequence[Path], what: str = "label files") -> None:
        """Raise naming the first missing files, if any of ``expected`` is absent."""
        absent = [path for path in expected if not path.is_file()]
        if absent:
            shown = "\n  ".join(str(path) for path in absent[:5])
            more = f"\n  ... and {len(absent) - 5} more" if len(absent) > 5 else ""
            raise FileNotFoundError(
                f"{self.name}: {len(absent)} of {len(expected)} {what} are missing:\n"
                f"  {shown}{more}\nExpected layout:\n{self.tree}"
            )
