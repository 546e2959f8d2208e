"""ONNX export: dynamic H/W, checked against onnxruntime (max difference < 1e-4 in fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import msfusion
from msfusion.export import export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_export_segnext_dynamic_hw_matches_onnxruntime(tmp_path):
    model = msfusion.create_model("test_segnext", num_classes=5)
    path = tmp_path / "model.onnx"
    report = export_onnx(model, path, input_size=(1, 3, 64, 64), opset=17, exporter="torchscript")
    assert report["max_abs_diff"] < 1e-4 and report["exporter"] == "torchscript" and report["opset"] == 17
    assert len(report["diff_per_size"]) == 2  # the export size and a size not divisible by 32
    graph = onnx.load(str(path)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    # An odd size and batch 2, never seen at export time.
    x = torch.randn(2, 3, 45, 77)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert got.shape == (2, 5, 45, 77)
    assert np.abs(got - expected).max() < 1e-4


def test_export_failure_leaves_no_file(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.rand_like(x)  # differs on every call: the check must fail

    with pytest.raises(ValueError, match="onnxruntime check"):
        export_onnx(Broken(), tmp_path / "bad.onnx", (1, 3, 32, 32), exporter="torchscript")
    assert not (tmp_path / "bad.onnx").exists()
