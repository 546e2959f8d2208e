"""The JSON and YAML files people hand in (recipes, COCO annotations, class lists, sidecars): one reader.

Every such file is a mapping of keys at the top level; what each caller
checks after that (a recipe's keys, COCO's three lists) is its own. YAML is
read with ``yaml.safe_load`` (no object construction from the file), JSON
with the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_mapping"]


def read_mapping(path: str | Path, what: str, *, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The top-level mapping of the JSON (``.json``) or YAML (any other suffix) file ``path``.

    An empty YAML file is an empty mapping (a recipe of defaults); an empty
    JSON file is not valid JSON.

    Args:
        path: the file.
        what: what the file is, for the messages (``"config file"``, ``"COCO instances JSON"``).
        error: the exception raised for a file that is there but unusable
            (``ConfigError``, ``CheckpointError``); ``ValueError`` by default.

    Raises:
        FileNotFoundError: ``path`` is not a file (``"<what> not found: <path>"``).
        error: unreadable, not valid JSON / YAML, or a top level that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    is_json = path.suffix.lower() == ".json"
    try:
        text = path.read_text()
        content = json.loads(text) if is_json else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise error(f"{path}: not valid {'JSON' if is_json else 'YAML'} ({err})") from err
    if content is None and not is_json:
        return {}
    if not isinstance(content, Mapping):
        raise error(f"{path}: a {what} is a mapping of keys at the top level, got {type(content).__name__}")
    return dict(content)
