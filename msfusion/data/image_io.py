"""Decoding image and label files with PIL, with errors that name the file.

Images become RGB uint8 whatever their mode (grayscale is replicated, the
alpha channel of RGBA is dropped, palette images are expanded). 16-bit
grayscale images are scaled to 8 bits (``v / 257``: 65535 -> 255), not clipped
at 255 as PIL's ``convert("RGB")`` does; float images must hold finite values
in [0, 1] (scaled by 255) or [0, 255]. Label images
are read as stored: the indices of a palette ('P') PNG, the values of an 'L'
or 16-bit PNG. An RGB label image is decoded through a colour table when the
dataset has one (iSAID's colour-coded masks, a folder dataset with a palette),
and rejected otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from msfusion.data.label_maps import InvalidSampleError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# ImportError: a decoder plugin that is missing, including the HEIF one that ultralytics' replacement of
# Image.open (installed process-wide once `import ultralytics` runs) imports for a file PIL cannot identify.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, ImportError, Image.DecompressionBombError)
_INDEX_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB.

    Raises:
        InvalidSampleError: The file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as image:
            if image.mode.startswith("I") or image.mode == "F":
                return _wide_to_rgb(np.asarray(image), image.mode, str(path))
            rgb = image.convert("RGB")
    except InvalidSampleError:
        raise
    except _DECODE_ERRORS as error:
        raise InvalidSampleError(f"cannot read image {path}: {error}", str(path)) from error
    return np.asarray(rgb)


def _wide_to_rgb(values: np.ndarray, mode: str, path: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float single-channel image as (H, W, 3) uint8."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        count = int((~np.isfinite(values)).sum())
        raise InvalidSampleError(f"image {path} has {count} NaN or infinite pixel(s); fix or drop the file", path)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F":
        if low < 0 or high > 255:
            raise InvalidSampleError(
                f"float image {path} has values in [{low:g}, {high:g}]; msfusion reads float images in [0, 1] "
                "or [0, 255]: save it as an 8-bit or 16-bit image",
                path,
            )
        scale = 255.0 if high <= 1.0 else 1.0
    elif mode.startswith("I;16") or high > 255:
        # 16-bit data (PIL opens 16-bit PNGs as I;16, older versions as I): full range 0..65535.
        if low < 0 or high > 65535:
            raise InvalidSampleError(
                f"image {path} has integer values in [{low:g}, {high:g}], beyond 16 bits; save it as 8 or 16 bits",
                path,
            )
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    gray = np.rint(values * scale).clip(0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def read_label(path: str | Path, colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Read a label image as ``(H, W)`` integers exactly as stored.

    Args:
        path: The label file.
        colors: Optional colour table; an RGB label image is decoded to the
            index of its colour in this table.

    Raises:
        InvalidSampleError: Unreadable file, RGB labels without a colour table,
            or colours not in the table.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in _INDEX_MODES:
                return np.asarray(image).astype(np.int32 if mode.startswith("I") else np.uint8)
            if mode in ("RGB", "RGBA") and colors is not None:
                return _decode_colors(np.asarray(image.convert("RGB")), colors, str(path))
    except InvalidSampleError:
        raise
    except _DECODE_ERRORS as error:
        raise InvalidSampleError(f"cannot read label image {path}: {error}", str(path)) from error
    raise InvalidSampleError(
        f"label image {path} has mode {mode}; expected a single-channel PNG of class indices (mode 'L' or 'P')",
        str(path),
    )


def _decode_colors(rgb: np.ndarray, colors: Sequence[Sequence[int]], path: str) -> np.ndarray:
    codes = _color_codes(np.asarray(colors, dtype=np.int64).reshape(-1, 3))
    order = np.argsort(codes)
    sorted_codes = codes[order]
    pixels = _color_codes(rgb.reshape(-1, 3).astype(np.int64))
    position = np.clip(np.searchsorted(sorted_codes, pixels), 0, len(codes) - 1)
    known = sorted_codes[position] == pixels
    if not known.all():
        unknown = np.unique(pixels[~known])[:5].tolist()
        shown = ", ".join(str(((c >> 16) & 255, (c >> 8) & 255, c & 255)) for c in unknown)
        raise InvalidSampleError(f"label image {path} contains colours not in the class palette: {shown}", path)
    return order[position].reshape(rgb.shape[:2]).astype(np.int32)


def _color_codes(rgb: np.ndarray) -> np.ndarray:
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
