"""Image files to predict: the inputs of ``msfusion predict`` (files and folders), read for every task.

Images of any format PIL reads; grayscale, palette and RGBA images become
RGB. Two inputs with the same file name get distinct output stems, so no
prediction overwrites another.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "collect_images", "iter_images", "unique_stems"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly, or found (sorted, not recursively) in named folders.

    Raises:
        FileNotFoundError: an input does not exist, or a folder holds no image.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return files


def iter_images(
    inputs: Iterable[str | Path], *, progress: bool = False, on_bad_file: str = "raise"
) -> Iterator[tuple[Path, str, np.ndarray]]:
    """``(path, unique output stem, (H, W, 3) uint8 image)`` for every image of ``inputs``.

    An unreadable file raises, or with ``on_bad_file="skip"`` is reported and
    skipped; ``progress`` shows a bar. Used by the detection and panoptic
    predictions.
    """
    from msfusion.data.image_io import read_image

    files = collect_images(inputs)
    pairs: Iterable = zip(files, unique_stems(files), strict=True)
    if progress:
        from tqdm import tqdm

        pairs = tqdm(list(pairs), desc="predict", unit="img")
    for path, stem in pairs:
        try:
            array = read_image(path)
        except (OSError, ValueError) as err:
            if on_bad_file == "skip":
                print(f"skipped {path}: {err}")
                continue
            raise
        yield path, stem, array


def unique_stems(files: Sequence[Path]) -> list[str]:
    """One output stem per file: the file stem, with ``_1``, ``_2`` ... added where two inputs share a name."""
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        stem = path.stem
        if stem in seen:
            seen[stem] += 1
            stem = f"{stem}_{seen[stem]}"  # two inputs with one name must not overwrite each other
        else:
            seen[stem] = 0
        stems.append(stem)
    return stems
