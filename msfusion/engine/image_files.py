"""Image files to predict: the inputs of ``msfusion predict`` (files and folders), read and written for every task.

Images of any format PIL reads; grayscale, palette and RGBA images become
RGB. Two inputs with the same file name get distinct output stems, so no
prediction overwrites another. :func:`write_predictions` is the one loop of
every task's ``predict_*_files``: the task gives what it writes for one image.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from msfusion.data.image_io import IMAGE_SUFFIXES, read_image

__all__ = ["IMAGE_SUFFIXES", "collect_images", "iter_images", "prepare_out_dir", "unique_stems", "write_predictions"]

T = TypeVar("T")
BAD_FILE_POLICIES = ("raise", "skip")


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

    The inputs and ``on_bad_file`` are checked at the call, before any image
    is read. An unreadable file raises (naming it), or with
    ``on_bad_file="skip"`` is skipped with a warning; ``progress`` shows a bar.

    Raises:
        ValueError: ``on_bad_file`` is not "raise" or "skip".
        FileNotFoundError: an input does not exist, or a folder holds no image.
    """
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ValueError(f"on_bad_file must be 'raise' or 'skip', got {on_bad_file!r}")
    files = collect_images(inputs)
    pairs: Iterable = zip(files, unique_stems(files), strict=True)
    if progress:
        from tqdm import tqdm

        pairs = tqdm(list(pairs), desc="predict", unit="img", dynamic_ncols=True)
    return _read_images(pairs, on_bad_file)


def _read_images(pairs: Iterable[tuple[Path, str]], on_bad_file: str) -> Iterator[tuple[Path, str, np.ndarray]]:
    for path, stem in pairs:
        try:
            array = read_image(path)
        except (OSError, ValueError) as err:
            if on_bad_file == "raise":
                raise
            _warn_skipped(path, err)
            continue
        yield path, stem, array


def prepare_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a folder, created if missing.

    Raises:
        ValueError: ``out_dir`` is an existing file.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the output folder {out_dir} is an existing file; give a folder path (created if missing)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def write_predictions(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    write_one: Callable[[np.ndarray, Path, Path], T],
    *,
    on_bad_file: str = "raise",
    progress: bool = True,
) -> list[T]:
    """Call ``write_one(image, input path, out_dir / stem)`` for every image of ``inputs``; what it returned, in order.

    ``write_one`` predicts one (H, W, 3) uint8 image and writes its files next
    to the path prefix it is given (``out_dir/<unique stem>``). A file that
    cannot be read, or an image the model refuses with a ``ValueError``, stops
    the run naming the file, or with ``on_bad_file="skip"`` is skipped with a
    warning. The checks that do not depend on an image run before the first.

    Raises:
        ValueError: bad ``on_bad_file``, ``out_dir`` is a file, or (``"raise"``) a bad image.
        FileNotFoundError: an input does not exist, or a folder holds no image.
    """
    images = iter_images(inputs, progress=progress, on_bad_file=on_bad_file)  # checks before the folder is made
    out_dir = prepare_out_dir(out_dir)
    written: list[T] = []
    for path, stem, image in images:
        try:
            written.append(write_one(image, path, out_dir / stem))
        except ValueError as err:
            if on_bad_file == "raise":
                raise ValueError(f"{path}: {err}") from err
            _warn_skipped(path, err)
    return written


def _warn_skipped(path: Path, err: Exception) -> None:
    reason = str(err) if str(path) in str(err) else f"{path}: {err}"  # the reader's messages name the file
    warnings.warn(f"skipped, {reason}", stacklevel=3)


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
