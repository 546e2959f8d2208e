"""The "Add your own" page's examples (docs/add-your-own.md) run as written: a detector, a neck and a dataset, each one new piece.

Each example runs in a fresh interpreter, so the names it registers
(``retinanet_v2``, ``channel_mapper``, ``stripes``) stay out of the registries
the rest of the suite lists.
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What each example must have done, checked in the example's namespace.
CHECKS = {
    "retinanet_v2": """
        assert model.arch == "retinanet_v2" and model.model_cfg["kwargs"]["arch"] == "retinanet_v2"
        assert set(losses) == {"classification", "bbox_regression"}
        assert all(torch.isfinite(v) for v in losses.values())
        assert model.head.regression_head._loss_type == "giou"
        assert any(isinstance(m, nn.GroupNorm) for m in model.head.modules())
        assert all(p.grad is not None for p in model.head.parameters())
        with torch.no_grad():
            out = model.eval()([torch.rand(3, 48, 80)])
        assert set(out[0]) == {"boxes", "scores", "labels"}
    """,
    "channel_mapper": """
        import torch
        assert "channel_mapper" in mf.list_models(kind="neck") and type(seg.neck).__name__ == "ChannelMapper"
        assert [f["chs"] for f in seg.neck.feature_info] == [32, 32, 32, 32, 32]
        with torch.no_grad():
            assert seg.eval()(torch.randn(1, 3, 45, 61)).shape == (1, 4, 45, 61)
        assert seg.model_cfg["kwargs"]["neck"] == "channel_mapper"
    """,
    "stripes": """
        from msfusion.data.registry import dataset_types
        assert "stripes" in dataset_types("segmentation") and type(data).__name__ == "StripesDataset"
        assert len(data) == 2 and tuple(data[0]["image"].shape) == (3, 32, 32)
        assert data[0]["mask"][:, :16].eq(1).all() and data[0]["mask"][:, 16:].eq(0).all()
    """,
}


def _examples() -> list[str]:
    # Marked notest for tests/test_docs.py: each runs here in a fresh process, since it registers names.
    text = (ROOT / "docs" / "add-your-own.md").read_text()
    return re.findall(r"^```\{\.python notest\}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_the_section_has_one_example_per_piece():
    assert len(_examples()) == 3


@pytest.mark.parametrize("name", list(CHECKS))
def test_example_runs(name):
    (code,) = [c for c in _examples() if f'"{name}"' in c]
    script = code + "\n" + textwrap.dedent(CHECKS[name])
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"the {name} example of docs/add-your-own.md failed:\n{result.stderr[-3000:]}"


def test_a_detector_is_one_new_file_and_no_other_edit(tmp_path):
    """The page's arch, saved as one new file in a copy of the package, is a build_detector arch."""
    (code,) = [c for c in _examples() if '"retinanet_v2"' in c]
    shutil.copytree(ROOT / "msfusion", tmp_path / "msfusion", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "msfusion" / "models" / "meta_arch" / "retinanet_v2.py").write_text(code.split("\nmodel = ")[0])
    script = textwrap.dedent(f"""
        import sys
        import msfusion as mf
        assert mf.__file__.startswith({str(tmp_path)!r})
        model = mf.build_detector("retinanet_v2", backbone="resnet18", num_classes=3, min_size=64, max_size=64)
        assert type(model).__name__ == "RetinaNet" and model.arch == "retinanet_v2"
        # The optional extras stay unimported: detr needs transformers, yolo is ultralytics' (AGPL-3.0).
        assert not {{"msfusion.models.meta_arch.detr", "msfusion.models.meta_arch.yolo"}} & set(sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
