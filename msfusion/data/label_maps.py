"""Lookup tables from the label values stored in a dataset's files to train ids.

Every dataset turns a raw label image into train ids through one 256-entry
table: ``table[raw] = train id`` (0..K-1 or the ignore index 255) or
``INVALID`` where the raw value must not occur in that format. A single table
both converts and validates, so a corrupt mask fails loudly instead of
training on wrong labels.

``reduce_zero_label`` follows mmsegmentation's ``LoadAnnotations``: raw 0 (the
"other" label of ADE20K and Pascal Context) becomes 255 and every other value
``v`` becomes ``v - 1``; raw 255 stays ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

IGNORE_INDEX = 255
INVALID = -1
_TABLE_SIZE = 256


class InvalidSampleError(ValueError):
    """A sample's files cannot be used: unreadable, mismatched, or bad label values.

    Attributes:
        path: The offending file.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def identity_table(num_classes: int) -> np.ndarray:
    """Raw values are train ids already: ``0..K-1`` kept, 255 ignored, the rest invalid."""
    return table_from_mapping({value: value for value in range(num_classes)})


def reduce_zero_label_table(num_classes: int) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 -> 255, ``v -> v - 1`` for ``1..K``, 255 -> 255."""
    return table_from_mapping({value: value - 1 for value in range(1, num_classes + 1)}, {0})


def table_from_mapping(mapping: Mapping[int, int], ignored: Iterable[int] = ()) -> np.ndarray:
    """Build a lookup table.

    Args:
        mapping: Raw value -> train id. Raw 255 may be mapped too (e.g.
            ``{0: 0, 255: 1}`` for foreground masks stored as 0/255).
        ignored: Raw values that become the ignore index. Raw 255 does too,
            unless ``mapping`` gives it a train id.

    Returns:
        ``(256,)`` int16 table; ``INVALID`` for values in neither argument.
    """
    table = np.full(_TABLE_SIZE, INVALID, dtype=np.int16)
    table[IGNORE_INDEX] = IGNORE_INDEX
    for raw, train_id in mapping.items():
        table[raw] = train_id
    for raw in ignored:
        table[raw] = IGNORE_INDEX
    return table


def describe_valid_values(table: np.ndarray) -> str:
    """Compact text of the raw values a table accepts, e.g. ``"0-150, 255"``."""
    valid = np.flatnonzero(table != INVALID).tolist()
    ranges: list[str] = []
    start = previous = valid[0]
    for value in [*valid[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if value is not None:
            start = previous = value
    return ", ".join(ranges)


def apply_table(raw: np.ndarray, table: np.ndarray, path: str) -> np.ndarray:
    """Convert a raw label image to train ids, raising on values the table rejects.

    Args:
        raw: ``(H, W)`` integer label image as stored in ``path``.
        table: A table from this module.
        path: The label file, named in the error.

    Returns:
        ``(H, W)`` uint8 train ids with 255 for ignored pixels.

    Raises:
        InvalidSampleError: Naming ``path``, the offending raw values and the
            values this format allows.
    """
    values = np.unique(raw)
    in_range = (values >= 0) & (values < _TABLE_SIZE)
    bad = values[~in_range].tolist()
    bad += [v for v in values[in_range].tolist() if table[v] == INVALID]
    if bad:
        shown = ", ".join(str(v) for v in sorted(bad)[:10]) + (", ..." if len(bad) > 10 else "")
        raise InvalidSampleError(
            f"label file {path} contains values [{shown}] that are not valid labels; "
            f"allowed values are {describe_valid_values(table)} (255 = ignore)",
            path,
        )
    return table[raw.astype(np.intp, copy=False)].astype(np.uint8)
