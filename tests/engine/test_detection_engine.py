"""Detection engine: COCO evaluation on a hand-checkable example, error analysis, training/resume/eval/predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from msfusion.data.coco_detection import COCODetection
from msfusion.engine.detection import (
    coco_metrics,
    detections_to_coco,
    draw_detections,
    error_analysis,
    evaluate_detection,
    format_error_table,
)


@pytest.fixture()
def coco(tmp_path: Path) -> COCODetection:
    """Two 40x60 images; category ids 3 and 7 (not contiguous): A (cat 3) and B (cat 7) in image 11, C (cat 7) in 12."""
    folder = tmp_path / "images"
    folder.mkdir()
    images = [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in (11, 12)]
    for image in images:
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(folder / image["file_name"])
    boxes = {"A": (11, 3, [2, 4, 20, 10]), "B": (11, 7, [30, 10, 20, 20]), "C": (12, 7, [5, 5, 30, 30])}
    anns = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b,
         "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3], b[0], b[1] + b[3]]]}
        for k, (i, c, b) in enumerate(boxes.values())
    ]  # fmt: skip
    path = tmp_path / "instances.json"
    categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return COCODetection(folder, path)


def _result(image_id: int, category: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category, "bbox": bbox, "score": score}


def test_coco_ap_by_hand(coco: COCODetection) -> None:
    gt = coco.coco_gt()
    perfect = [
        _result(11, 3, [2, 4, 20, 10], 0.9),
        _result(11, 7, [30, 10, 20, 20], 0.8),
        _result(12, 7, [5, 5, 30, 30], 0.7),
    ]
    assert coco_metrics(gt, perfect, "bbox", [11, 12])["AP"] == pytest.approx(1.0)
    # C missed: cat 3 AP 1; dog recall 0.5 at precision 1, so 51 of COCO's 101 recall points -> AP 51/101.
    missed = coco_metrics(gt, perfect[:2], "bbox", [11, 12])
    assert missed["AP"] == pytest.approx((1.0 + 51 / 101) / 2)
    assert missed["AP50"] == pytest.approx((1.0 + 51 / 101) / 2)
    assert math.isnan(missed["APl"])  # no large object (area > 96^2) in the ground truth
    analysis = error_analysis(gt, perfect[:2] + [_result(12, 3, [40, 0, 10, 10], 0.95)], [11, 12])
    assert (analysis["TP"], analysis["FP"], analysis["FN"]) == (2, 1, 1)
    assert analysis["precision"] == pytest.approx(2 / 3) and analysis["recall"] == pytest.approx(2 / 3)
    assert analysis["F1"] == pytest.approx(2 / 3)
    low = error_analysis(gt, [_result(11, 3, [2, 4, 20, 10], 0.4)], [11, 12])  # below confidence 0.5
    assert (low["TP"], low["FN"]) == (0, 3)
    table = format_error_table({"baseline": low, "FINE": analysis})
    assert "baseline" in table and "66.67" in table


def test_compare_two_result_files(coco: COCODetection, tmp_path: Path) -> None:
    from msfusion.engine.detection import compare_error_analysis

    good = [_result(11, 3, [2, 4, 20, 10], 0.9), _result(12, 7, [5, 5, 30, 30], 0.9)]
    (tmp_path / "a.json").write_text(json.dumps(good))
    table = compare_error_analysis(coco, {"A": tmp_path / "a.json", "B": good[:1]})
    a_row, b_row = table.splitlines()[1:]
    assert a_row.split()[1:4] == ["2", "0", "1"] and b_row.split()[1:4] == ["1", "0", "2"]


def test_detections_map_labels_to_category_ids(coco: COCODetection) -> None:
    output = {
        "boxes": torch.tensor([[30.0, 10.0, 50.0, 30.0]]),
        "scores": torch.tensor([0.8]),
        "labels": torch.tensor([2]),
        "masks": torch.zeros(1, 1, 40, 60),
    }
    (entry,) = detections_to_coco(output, 11, coco.label_to_category)
    assert entry["category_id"] == 7 and entry["bbox"] == [30.0, 10.0, 20.0, 20.0]
    assert entry["segmentation"]["size"] == [40, 60]


class GroundTruthDetector(nn.Module):
    """Returns each image's ground truth (boxes, labels, masks) as detections, in dataset order."""

    def __init__(self, dataset: COCODetection) -> None:
        super().__init__()
        self.targets = [dataset[i]["target"] for i in range(len(dataset))]
        self.calls = 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in images:
            t = self.targets[self.calls]
            self.calls += 1
            n = len(t["labels"])
            out.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.linspace(0.9, 0.8, n),
                        "masks": t["masks"][:, None].float()})  # fmt: skip
        return out


def test_evaluate_detection_bbox_and_segm(coco: COCODetection) -> None:
    metrics, results = evaluate_detection(GroundTruthDetector(coco), coco, batch_size=1)
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)
    assert (metrics["TP"], metrics["FP"], metrics["FN"]) == (3, 0, 0)
    assert {r["category_id"] for r in results} == {3, 7} and metrics["num_images"] == 2


def test_draw_detections_marks_boxes() -> None:
    image = torch.zeros(3, 40, 60)
    output = {
        "boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]]),
        "scores": torch.tensor([0.9, 0.1]),
        "labels": torch.tensor([1, 2]),
        "masks": torch.ones(2, 1, 40, 60),
    }
    picture = draw_detections(
        image, output, ["background", "cat", "dog"], palette=[(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    )
    assert picture.dtype == torch.uint8 and picture.shape == (3, 40, 60)
    assert picture[0, 5, 5:30].float().mean() > 200  # the red box edge of the confident detection
    assert picture[2].max() == 0  # the low-score "dog" is not drawn


def _recipe(work_dir: Path, iters: int = 2) -> dict:
    shapes = {"type": "shapes", "image_size": 64, "seed": 0}
    return {
        "task": "detection",
        "model": {"name": "test_retinanet_cednet", "kwargs": {"min_size": 64, "max_size": 64}},
        "data": {
            "train": dict(shapes, split="train", num_images=8, transforms={"kind": "lsj", "size": 64}, copy_paste=True),
            "val": dict(shapes, split="val", num_images=3),
            "batch_size": 2,
            "num_workers": 0,
        },
        "optim": {"lr": 1.0e-4},
        "schedule": {"iters": iters, "warmup_iters": 1},
        "train": {"work_dir": str(work_dir), "eval_interval": iters, "ckpt_interval": 1, "log_interval": 1,
                  "progress": False, "tensorboard": False},
    }  # fmt: skip


def test_train_resume_eval_predict(tmp_path: Path) -> None:
    from msfusion.engine.config import validate_config
    from msfusion.engine.detection import predict_detection_files
    from msfusion.engine.trainer import train
    from msfusion.registry import load_model

    work = tmp_path / "run"
    summary = train(validate_config(_recipe(work, iters=2)))
    assert summary["step"] == 2 and "bbox_AP" in summary["metrics"] and "TP" in summary["metrics"]
    assert summary["history"][-1]["loss"] > 0
    resumed = train(validate_config(_recipe(work, iters=3)), resume=True)
    assert resumed["step"] == 3
    checkpoint = Path(resumed["last_checkpoint"])
    model = load_model(checkpoint)
    meta = json.loads(checkpoint.with_suffix(".json").read_text())
    assert meta["task"] == "detection" and meta["classes"][0] == "background"
    image = tmp_path / "in.png"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(image)
    written = predict_detection_files(model, [image], tmp_path / "out", classes=meta["classes"], progress=False)
    picture = np.asarray(Image.open(written[0]))
    assert picture.shape == (48, 64, 3)
    assert isinstance(json.loads((tmp_path / "out" / "in_det.json").read_text()), list)
    from msfusion.cli import main

    assert (
        main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "cli"), "--no-progress"])
        == 0
    )
    assert (tmp_path / "cli" / "in_det.png").is_file() and (tmp_path / "cli" / "in_det.json").is_file()


def test_eval_command_writes_metrics_and_coco_results(tmp_path: Path) -> None:
    import yaml

    from msfusion.cli import main
    from msfusion.engine.config import validate_config
    from msfusion.engine.trainer import train

    recipe = _recipe(tmp_path / "run", iters=1)
    summary = train(validate_config(recipe))
    config = tmp_path / "det.yaml"
    config.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "eval"
    assert main(["eval", str(config), "--checkpoint", summary["last_checkpoint"], "--out", str(out)]) == 0
    stem = Path(summary["last_checkpoint"]).stem
    metrics = json.loads((out / f"{stem}_eval.json").read_text())
    assert {"bbox_AP", "bbox_AP50", "bbox_APs", "TP", "F1"} <= set(metrics)
    assert isinstance(json.loads((out / f"{stem}_eval_results.json").read_text()), list)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::torch.jit.TracerWarning")
def test_detector_exports_to_onnx(tmp_path: Path) -> None:
    """torchvision detectors export through the TorchScript exporter at the exported image size."""
    import onnxruntime as ort

    import msfusion as mf

    torch.manual_seed(0)
    backbone = mf.create_model("resnet18", features_only=True, out_indices=(2, 3, 4))
    model = mf.build_detector(
        "retinanet", backbone=backbone, num_classes=4, min_size=64, max_size=64, score_thresh=0.0,
        detections_per_img=10, neck_kwargs={"out_chs": 32},
    ).eval()  # fmt: skip
    # RetinaNet's prior initialisation scores every anchor 0.01: spread the scores so the ranking is unique.
    nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.5)
    image = torch.rand(3, 64, 64)
    path = tmp_path / "det.onnx"
    torch.onnx.export(model, ([image],), str(path), opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        expected = model([image])[0]
    assert boxes.shape == tuple(expected["boxes"].shape)
    np.testing.assert_allclose(np.sort(scores), np.sort(expected["scores"].numpy()), atol=1e-5)
    # Every exported box has a PyTorch twin (order within equal scores may differ).
    distance = np.abs(boxes[:, None, :] - expected["boxes"].numpy()[None]).max(-1).min(1)
    assert distance.max() < 1e-3


def test_detection_recipes_load_and_demo_yaml_matches() -> None:
    import yaml

    from msfusion.engine.config import load_config, validate_config
    from msfusion.engine.detection_demo import DETECTION_DEMO_RECIPE

    root = Path(__file__).resolve().parents[2] / "configs"
    recipes = sorted(root.glob("*_coco.yaml"))
    assert len(recipes) >= 10
    for path in recipes:
        cfg = load_config(path)
        assert cfg["task"] == "detection"
        assert cfg["model"]["name"] in __import__("msfusion").list_models(kind="detector")
    text = yaml.safe_load((root / "demo_shapes_detection.yaml").read_text())
    assert validate_config(text) == validate_config(DETECTION_DEMO_RECIPE)


# recipe: (training images, epochs, epochs after which the lr drops x0.1), from each paper's recipe
PAPER_SCHEDULES = {
    "mask_rcnn_r50_mscsa_coco": (117266, 12, (8, 11)),  # MSCSA Appendix C.2: mmdetection's 1x
    "retinanet_r50_mscsa_coco": (117266, 12, (8, 11)),
    "cascade_mask_rcnn_r50_mscsa_coco": (117266, 12, (8, 11)),
    "mask_rcnn_pvt_v2_b0_mscsa_coco": (117266, 12, (8, 11)),
    "faster_rcnn_r50_fpn_fine_coco": (117266, 26, (16, 22)),  # torchvision's detection reference
    "retinanet_r50_fpn_fine_coco": (117266, 26, (16, 22)),
    "fcos_r50_fpn_fine_coco": (117266, 26, (16, 22)),
    "fcos_r50_pan_fine_visdrone": (6471, 26, (16, 22)),
    "panoptic_fpn_r50_fine_coco_panoptic": (118287, 12, (8, 11)),  # OpenMMLab's 1x (FINE Table 7)
    "retinanet_cednet_next_t_coco": (117266, 36, (27, 33)),  # the released ced-mmdet configs
    "mask_rcnn_cednet_next_t_coco": (117266, 36, (27, 33)),
    "cascade_mask_rcnn_cednet_next_t_coco": (117266, 36, (27, 33)),
}


@pytest.mark.parametrize("name", sorted(PAPER_SCHEDULES))
def test_detection_recipes_step_where_their_papers_do(name: str) -> None:
    """Every detection and panoptic recipe steps the lr at the paper's epochs (batch 16), not a poly decay."""
    from msfusion.engine.config import load_config

    images, epochs, drops = PAPER_SCHEDULES[name]
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    per_epoch = images / cfg["data"]["batch_size"]
    schedule = cfg["schedule"]
    assert schedule["policy"] == "step" and schedule["gamma"] == 0.1
    assert abs(schedule["iters"] - epochs * per_epoch) < 1
    expected = [epoch * per_epoch for epoch in drops]
    assert len(schedule["steps"]) == len(expected)
    assert all(abs(step - at) <= 0.5 for step, at in zip(schedule["steps"], expected, strict=True)), (
        schedule["steps"],
        expected,
    )
