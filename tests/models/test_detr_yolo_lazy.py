"""``import msfusion`` and listing models import neither optional extra (transformers, ultralytics)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import msfusion as mf
from msfusion.registry import model_kind, paper_figures

names = mf.list_models("*", kind="detector")
assert {"yolov8s", "yolov8s_fine", "yolo12s_fine", "rt_detr_r18", "deformable_detr_r50"} <= set(names), names
assert all(model_kind(n) == "detector" and paper_figures(n) is not None for n in names if "yolo" in n)
print(sorted(m for m in ("ultralytics", "transformers") if m in sys.modules))
"""


def test_import_and_listing_load_no_optional_extra() -> None:
    """In a fresh interpreter: the DETR and YOLO presets are registered, their libraries not imported."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
