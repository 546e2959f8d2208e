"""One reader for the JSON / YAML files people hand in (msfusion.structured_files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from msfusion.checkpoint import CheckpointError, read_metadata
from msfusion.structured_files import read_mapping


def test_json_and_yaml_mappings_are_read_and_an_empty_yaml_is_empty(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"x": 1}')
    (tmp_path / "a.yaml").write_text("x: 1\ny: [2, 3]\n")
    (tmp_path / "empty.yaml").write_text("")
    assert read_mapping(tmp_path / "a.json", "file") == {"x": 1}
    assert read_mapping(tmp_path / "a.yaml", "file") == {"x": 1, "y": [2, 3]}
    assert read_mapping(tmp_path / "empty.yaml", "recipe") == {}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", "{'x': 1}", r"bad\.json: not valid JSON"),
        ("empty.json", "", r"empty\.json: not valid JSON"),
        ("bad.yaml", "x: [1, 2\n", r"bad\.yaml: not valid YAML"),
        ("list.json", "[1, 2]", r"list\.json: a thing file is a mapping of keys at the top level, got list"),
        ("text.yaml", "just words\n", r"text\.yaml: a thing file is a mapping of keys at the top level, got str"),
        ("object.yaml", "!!python/object/apply:os.system ['true']\n", r"object\.yaml: not valid YAML"),  # safe_load
    ],
)
def test_unusable_files_name_the_file_and_the_problem(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_mapping(tmp_path / name, "thing file")


def test_a_missing_file_and_the_callers_error_class(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config file not found: .*nowhere\.yaml"):
        read_mapping(tmp_path / "nowhere.yaml", "config file")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "model.json").write_text("[]")  # a sidecar that is not a mapping used to come back as it was
    with pytest.raises(CheckpointError, match=r"model\.json: a checkpoint sidecar is a mapping of keys"):
        read_metadata(tmp_path / "model.safetensors")
