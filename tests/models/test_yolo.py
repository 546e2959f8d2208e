"""YOLO through ultralytics (AGPL-3.0 extra): FINE at the PAN's top-down fusions, counts, training keeps FINE."""

from __future__ import annotations

import io
import os

import PIL.Image
import pytest
import torch
from helpers import tiny_detection_recipe

import msfusion as mf

os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing fetched: no fonts, no data sets, no update checks
# Importing ultralytics replaces PIL.Image.open for the whole process; this module is imported when
# pytest collects, so PIL's own function is put back for every other test (msfusion.models.meta_arch.yolo does
# the same for users).
_PIL_OPEN = PIL.Image.open
pytest.importorskip("ultralytics", reason="the msfusion[ultralytics] extra (AGPL-3.0) is not installed")

from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

PIL.Image.open = _PIL_OPEN

from msfusion.models.meta_arch.yolo import FineConcat, add_fine, build_yolo, fine_trainer, top_down_concats  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _nano(fine: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    return add_fine(model, head_dim=16) if fine else model


def test_yolov8s_counts_beside_fine_table1() -> None:
    model = build_yolo("yolov8s")
    base = mf.count_params(model)
    assert abs(base / 11.2e6 - 1) < 0.01 and top_down_concats(model) == [11, 14]
    add_fine(model)
    # FINE at P4 (C 256, F_high 512 projected by 1x1) and P3 (C 128, F_high 256): 4 C^2 + 4 C + (C_h + 1) C each.
    expected = sum(4 * c * c + 4 * c + (2 * c + 1) * c for c in (256, 128))
    assert mf.count_params(model) - base == expected


def test_fine_sits_at_the_top_down_fusions_and_learns() -> None:
    model = _nano()
    assert [type(model.model[i]).__name__ for i in (11, 14)] == ["FineConcat", "FineConcat"]
    assert [model.model[i].fine.low_stride for i in (11, 14)] == [16, 8]
    model.args = get_cfg()  # ultralytics' default hyper-parameters for its loss
    batch = {
        "img": torch.rand(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.3, 0.2, 0.2]]),
    }
    model.train()
    loss, _ = model.loss(batch)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and model.model[11].fine.q.weight.grad is not None


def test_fine_off_changes_nothing_and_checkpoints_keep_fine() -> None:
    plain = _nano(fine=False)
    assert not any(isinstance(m, FineConcat) for m in plain.modules())
    model = _nano().eval()
    buffer = io.BytesIO()
    torch.save({"model": model}, buffer)  # ultralytics checkpoints pickle the module
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)["model"].eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_trainer_rebuilds_from_yaml_with_fine_and_its_weights() -> None:
    model = _nano()
    trainer_cls = fine_trainer({"head_dim": 16})
    trainer = trainer_cls.__new__(trainer_cls)  # get_model needs only the data description and args
    trainer.data = {"nc": 3, "channels": 3, "names": {0: "a", 1: "b", 2: "c"}}
    trainer.args = get_cfg()
    rebuilt = trainer.get_model(cfg="yolov8n.yaml", weights=model, verbose=False)
    ours, theirs = model.state_dict(), rebuilt.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_building_a_yolo_leaves_pil_image_open_alone() -> None:
    before = PIL.Image.open
    build_yolo("yolov8n")
    assert PIL.Image.open is before


def test_bad_variants_explain_the_fix(monkeypatch) -> None:
    with pytest.raises(ValueError, match="yolo12s"):
        build_yolo("yolov12s")
    with pytest.raises(ValueError, match="provides"):
        build_yolo("yolov9s")
    # A module where a variant name belongs: its type is named, not its whole repr.
    with pytest.raises(ValueError, match="got a Conv2d") as err:
        build_yolo(torch.nn.Conv2d(3, 8, 3))
    assert "kernel_size" not in str(err.value)
    # A variant whose YAML the installed ultralytics lacks (an older release without YOLO12, say).
    from msfusion.models.meta_arch import yolo

    monkeypatch.setitem(yolo.VARIANTS, "yolov99s", "yolov99s.yaml")
    with pytest.raises(ValueError, match="installed ultralytics does not provide yolov99s.yaml"):
        build_yolo("yolov99s")


def test_registered_presets_match_fine_table1() -> None:
    """create_model builds the Table 1 YOLOs (meta device); counts beside the paper's, FINE adds its modules."""
    from msfusion.models.meta_arch.yolo import YoloComplexity, YoloDetector
    from msfusion.registry import model_kind, paper_figures

    counts, macs = {}, {}
    for name in ("yolov8s", "yolov8s_fine", "yolov10s", "yolov10s_fine", "yolo12s", "yolo12s_fine"):
        with torch.device("meta"):
            model = mf.create_model(name)
        assert model_kind(name) == "detector" and isinstance(model, YoloDetector)
        assert model.num_classes == 81 and model.model_cfg["name"] == name
        assert any(isinstance(m, FineConcat) for m in model.modules()) == name.endswith("_fine")
        counts[name], macs[name] = mf.count_params(model), mf.count_macs(YoloComplexity(model), (1, 3, 640, 640))
    for name in ("yolov8s", "yolov10s"):  # the same networks as the paper's: within 1%
        paper = paper_figures(name)
        assert abs(counts[name] / (paper.params_m * 1e6) - 1) < 0.01
        assert abs(macs[name] / (paper.gmacs * 1e9) - 1) < 0.01
    for name in ("yolov8s", "yolov10s", "yolo12s"):  # FINE: a few hundred K parameters, under 1 GFLOPs
        assert 0.4e6 < counts[f"{name}_fine"] - counts[name] < 0.7e6
        assert 0 < 2 * (macs[f"{name}_fine"] - macs[name]) < 1e9
    # The authors' earlier FINE reproduces YOLOv8-S + FINE (12.3 M, 29.6 GFLOPs); v8-S and v10-S gain the same.
    earlier = {}
    for name in ("yolov8s", "yolov10s"):
        with torch.device("meta"):
            model = mf.create_model(f"{name}_fine", fine={"preset": "earlier"})
        earlier[name] = mf.count_params(model) - counts[name]
        if name == "yolov8s":
            assert abs(mf.count_params(model) / 12.3e6 - 1) < 0.01
            assert abs(2 * mf.count_macs(YoloComplexity(model), (1, 3, 640, 640)) / 29.6e9 - 1) < 0.01
    assert earlier["yolov8s"] == earlier["yolov10s"]
    assert counts["yolov8s_fine"] - counts["yolov8s"] == counts["yolov10s_fine"] - counts["yolov10s"]


def test_engine_trains_resumes_evaluates_and_predicts_yolo(tmp_path) -> None:
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from msfusion.engine.config import validate_config
    from msfusion.engine.detection import predict_detection_files
    from msfusion.engine.trainer import train
    from msfusion.models.meta_arch.yolo import YoloDetector
    from msfusion.registry import load_model

    def recipe(iters: int) -> dict:
        model = {
            "name": "yolo_nano",
            "compose": {"arch": "yolo", "backbone": "yolov8n", "fine": True},
            "kwargs": {"image_size": 64},
        }
        return tiny_detection_recipe(model, str(tmp_path / "run"), iters)

    summary = train(validate_config(recipe(1)))
    assert "bbox_AP" in summary["metrics"] and summary["history"][-1]["loss"] > 0
    resumed = train(validate_config(recipe(2)), resume=True)
    checkpoint = Path(resumed["last_checkpoint"])
    model = load_model(checkpoint)
    assert isinstance(model, YoloDetector) and isinstance(model.yolo.model[11], FineConcat)
    classes = json.loads(checkpoint.with_suffix(".json").read_text())["classes"]
    image = tmp_path / "in.png"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(image)
    written = predict_detection_files(model, [image], tmp_path / "out", classes=classes, progress=False)
    assert np.asarray(Image.open(written[0])).shape == (48, 64, 3)
