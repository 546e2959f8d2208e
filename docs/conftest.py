"""pytest setup for ``python -m pytest --markdown-docs --markdown-docs-syntax=superfences docs/``.

The examples write files (datasets, checkpoints, ONNX graphs): run each one in
a fresh temporary folder, never in the checkout, and never download. The test
suite runs the same blocks through ``tests/test_docs.py``.
"""

import pytest


@pytest.fixture(autouse=True)
def _example_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
