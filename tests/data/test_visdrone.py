"""VisDrone-DET: the annotation format, ignored regions and "others", evaluation, the FINE Table 8 recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msfusion.data.visdrone import VISDRONE_CLASSES, VisDroneDetection, parse_visdrone_annotation

# <left>,<top>,<width>,<height>,<score>,<category>,<truncation>,<occlusion>, as in the released files.
LINES = [
    "4,6,10,8,1,4,0,0",  # a car
    "30,2,6,12,1,1,0,1,",  # a pedestrian, with the trailing comma some files have
    "20,20,8,8,0,5,0,0",  # a van the toolkit ignores (score 0)
    "40,30,20,15,0,0,-1,-1",  # an ignored region
    "2,30,9,9,1,11,0,0",  # "others"
    "50,5,0,4,1,4,0,0",  # a zero-size box (the released annotations have a few)
]


def _split(root: Path, lines: list[str] = LINES) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("0000001_00000_d_0000001", "0000002_00000_d_0000002"):
        Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(root / "images" / f"{name}.jpg")
        (root / "annotations" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_reader_labels_ignored_regions_others_and_score_zero(tmp_path: Path) -> None:
    # Checked when built: the zero-size box of each of the two files is reported once, with its line.
    with pytest.warns(UserWarning, match=r"dropped 2 zero-size boxes .*first: zero-size box .* line 6"):
        data = VisDroneDetection(_split(tmp_path / "val"))
    assert len(data) == 2 and data.classes == VISDRONE_CLASSES and data.num_classes == 11
    sample = data.load(0)
    objects = ~sample.ignore
    assert sample.labels[objects].tolist() == [4, 1]
    assert sample.boxes[objects].tolist() == [[4, 6, 14, 14], [30, 2, 36, 14]]
    # The score-0 van is ignored for its class; the region and "others" for each of the 10 classes.
    ignored = sample.ignore.nonzero()[0]
    assert sample.labels[ignored[0]] == 5 and len(ignored) == 1 + 2 * 10
    assert sorted(sample.labels[ignored[1:11]].tolist()) == list(range(1, 11))
    assert sample.boxes[ignored[1]].tolist() == [40, 30, 60, 45]  # xyxy
    target = data[0]["target"]
    assert target["labels"].tolist() == [4, 1]  # training sees objects only
    assert any("zero-size" in s for s in data.skipped)


def test_detections_inside_ignored_regions_do_not_count(tmp_path: Path) -> None:
    from msfusion.engine.detection import coco_metrics

    data = VisDroneDetection(_split(tmp_path / "val", LINES[:2] + LINES[3:5]))
    gt = data.coco_gt()
    hits = [
        {"image_id": i, "category_id": c, "bbox": b, "score": 0.9}
        for i in (1, 2)
        for c, b in ((4, [4, 6, 10, 8]), (1, [30, 2, 6, 12]))
    ]
    inside = [{"image_id": 1, "category_id": 6, "bbox": [42, 32, 10, 10], "score": 0.95}]  # a truck in the region
    outside = [{"image_id": 1, "category_id": 4, "bbox": [20, 20, 10, 10], "score": 0.95}]  # a car on nothing
    assert coco_metrics(gt, hits + inside, "bbox", [1, 2])["AP50"] == pytest.approx(1.0)
    assert coco_metrics(gt, hits + outside, "bbox", [1, 2])["AP50"] < 1.0


@pytest.mark.parametrize(
    "line,match",
    [("1,2,3,4,1,4,0", r"line 2: expected 8 comma-separated fields .* got 7"), ("1,2,3,4,1,12,0,0", "category 12")],
)
def test_bad_lines_name_the_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "0000009.txt"
    path.write_text(f"1,2,3,4,1,4,0,0\n{line}\n")
    with pytest.raises(ValueError, match=match) as err:
        parse_visdrone_annotation(path)
    assert "0000009.txt" in str(err.value)


def test_table8_recipe_loads_builds_and_trains_a_step(tmp_path: Path) -> None:
    from msfusion.data import build_detection_dataset
    from msfusion.data.detection import collate_detection
    from msfusion.engine.config import load_config
    from msfusion.engine.detection import DetectionTask
    from msfusion.models.meta_arch.detector import build_detector

    cfg = load_config(Path(__file__).parents[2] / "configs" / "fcos_r50_pan_fine_visdrone.yaml")
    assert cfg["task"] == "detection" and cfg["model"]["compose"]["fine"] is True
    assert cfg["model"]["kwargs"]["min_size"] == cfg["model"]["kwargs"]["max_size"] == 800  # Table 8: 800x800
    with torch.device("meta"):
        model = DetectionTask.compose(**cfg["model"]["compose"], **cfg["model"]["kwargs"], num_classes=11)
    assert model.arch == "fcos" and type(model.backbone.neck).__name__ == "PAN"
    train = dict(cfg["data"]["train"], root=str(_split(tmp_path / "train", LINES[:5])))
    train["transforms"] = dict(train["transforms"], size=64)
    data = build_detection_dataset(dict(train, aug_seed=0))
    tiny = build_detector(
        "fcos", backbone="resnet10t", backbone_kwargs=dict(out_indices=(1, 2, 3, 4)), neck="pan", fine=True,
        num_classes=data.num_classes, neck_kwargs=dict(out_chs=32), min_size=64, max_size=64, train_resize=False,
    )  # fmt: skip
    batch = collate_detection([data[0], data[1]])
    assert all(im.shape == (3, 64, 64) for im in batch["images"])
    losses = tiny(batch["images"], batch["targets"])
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
