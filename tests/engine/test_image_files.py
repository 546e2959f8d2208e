"""The one prediction loop of every task (msfusion.engine.image_files.write_predictions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msfusion.engine.image_files import write_predictions


def _images(folder: Path) -> Path:
    folder.mkdir()
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8), mode="L").save(folder / "a.png")
    Image.fromarray(np.full((4, 3, 3), 9, dtype=np.uint8)).save(folder / "b.png")
    return folder


def _shape_writer(image: np.ndarray, path: Path, prefix: Path) -> str:
    Path(f"{prefix}_shape.txt").write_text(str(image.shape))
    return path.name


def test_one_writer_call_per_image_with_a_unique_prefix(tmp_path: Path) -> None:
    folder = _images(tmp_path / "in")
    # The same file named twice gets two prefixes: no prediction overwrites another.
    written = write_predictions([folder, folder / "a.png"], tmp_path / "out", _shape_writer, progress=False)
    assert written == ["a.png", "b.png", "a.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_1_shape.txt", "a_shape.txt", "b_shape.txt"]
    assert (tmp_path / "out" / "a_shape.txt").read_text() == "(5, 7, 3)"  # grayscale read as RGB


def test_bad_files_and_refused_images_raise_naming_the_file_or_are_skipped(tmp_path: Path) -> None:
    folder = _images(tmp_path / "in")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        write_predictions([folder], tmp_path / "o1", _shape_writer, progress=False)
    with pytest.warns(UserWarning, match="broken.png"):
        assert write_predictions([folder], tmp_path / "o2", _shape_writer, on_bad_file="skip", progress=False) == [
            "a.png",
            "b.png",
        ]

    def refuse_b(image: np.ndarray, path: Path, prefix: Path) -> str:
        if path.name == "b.png":
            raise ValueError("too small for this model")
        return path.name

    with pytest.raises(ValueError, match=r"b\.png: too small for this model"):
        write_predictions([folder / "a.png", folder / "b.png"], tmp_path / "o3", refuse_b, progress=False)
    with pytest.warns(UserWarning, match=r"skipped, .*b\.png: too small"):
        written = write_predictions([folder / "a.png", folder / "b.png"], tmp_path / "o4", refuse_b, on_bad_file="skip")
    assert written == ["a.png"]


def test_option_and_input_errors_come_before_any_output(tmp_path: Path) -> None:
    folder = _images(tmp_path / "in")
    with pytest.raises(ValueError, match="on_bad_file must be 'raise' or 'skip', got 'ignore'"):
        write_predictions([folder], tmp_path / "o1", _shape_writer, on_bad_file="ignore")
    with pytest.raises(FileNotFoundError, match="input not found: .*missing.png"):
        write_predictions([folder, tmp_path / "missing.png"], tmp_path / "o2", _shape_writer)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError, match="output folder .*taken is an existing file"):
        write_predictions([folder], tmp_path / "taken", _shape_writer)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_a_bad_file_is_named_when_another_package_replaced_image_open(tmp_path: Path, monkeypatch) -> None:
    # `import ultralytics` replaces PIL.Image.open process-wide; on a file PIL cannot identify, its version
    # imports a HEIF plugin, which fails with ModuleNotFoundError where the plugin is not installed.
    import PIL.Image

    pil_open = PIL.Image.open

    def heif_retrying_open(path, *args, **kwargs):  # noqa: ANN001, ANN202 - PIL's own signature
        try:
            return pil_open(path, *args, **kwargs)
        except PIL.Image.UnidentifiedImageError:
            raise ModuleNotFoundError("No module named 'pi_heif'") from None

    monkeypatch.setattr(PIL.Image, "open", heif_retrying_open)
    folder = _images(tmp_path / "in")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png: No module named 'pi_heif'"):
        write_predictions([folder], tmp_path / "out", _shape_writer, progress=False)
    with pytest.warns(UserWarning, match=r"broken\.png"):
        assert len(write_predictions([folder], tmp_path / "o2", _shape_writer, on_bad_file="skip")) == 2
