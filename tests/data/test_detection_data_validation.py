"""Detection data checks beyond the audit's refusals: skip mode counts, masks follow the model, RLE runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_detection_data_audit import COCO_ANNOTATIONS, VOC_XML, _coco, _visdrone, _voc  # the cases' datasets

from msfusion.data.coco_detection import COCODetection
from msfusion.data.visdrone import VisDroneDetection
from msfusion.data.voc_detection import VOCDetection


def test_rle_run_lengths_read_what_pycocotools_writes() -> None:
    from pycocotools import mask as mask_utils

    from msfusion.data.coco_detection import rle_run_lengths

    rng = np.random.default_rng(0)
    for _ in range(20):
        height, width = rng.integers(1, 40, 2)
        mask = rng.random((height, width)) < rng.random()
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        runs = rle_run_lengths(rle["counts"].decode())
        assert sum(runs) == height * width and sum(runs[1::2]) == mask.sum()
    with pytest.raises(ValueError, match="ends in the middle of a run"):
        rle_run_lengths("P")  # 0x20 set: another group should follow


def test_coco_skip_drops_and_counts_each_bad_annotation(tmp_path: Path) -> None:
    def edit(data: dict) -> None:
        anns = data["annotations"]
        anns[0]["bbox"] = ["2", "4", "20", "10"]
        anns[1]["iscrowd"] = "0"
        anns.append(dict(anns[2], bbox=[1, 1, float("nan"), 3]))  # also a duplicate id
        anns.append(dict(anns[2], id=4, segmentation={"size": [40, 60], "counts": "garbage!!"}))

    spec = _coco(tmp_path, edit)
    with pytest.warns(UserWarning, match=r"skipped 4 bad annotations .*first: .*annotation 1: bbox"):
        data = COCODetection(tmp_path / "images", tmp_path / spec["dataset"]["annotations"], on_bad_annotation="skip")
    assert len(data.skipped) == 4 and data.annotations == {11: [], 12: COCO_ANNOTATIONS[2:]}
    assert [a["id"] for a in data.coco_gt().dataset["annotations"]] == [3, 4]
    # Skipping every annotation would leave nothing to train on: refused.
    _coco(tmp_path / "all_bad", lambda d: [a.update(iscrowd="0") for a in d["annotations"]])
    with pytest.raises(ValueError, match=r"every one of the 4 annotations is bad.*first: .*annotation 1: iscrowd"):
        COCODetection(
            tmp_path / "all_bad" / "images", tmp_path / "all_bad" / "instances.json", on_bad_annotation="skip"
        )


def test_coco_checks_masks_only_when_it_decodes_them(tmp_path: Path) -> None:
    spec = _coco(tmp_path, lambda d: d["annotations"][2]["segmentation"].update(counts="garbage!!"))
    images, annotations = tmp_path / "images", tmp_path / spec["dataset"]["annotations"]
    with pytest.raises(ValueError, match="not valid compressed RLE"):
        COCODetection(images, annotations)
    boxes_only = COCODetection(images, annotations, with_masks=False)
    assert "masks" not in boxes_only[1]["target"] and len(boxes_only.coco_gt().getAnnIds()) == 4


@pytest.mark.parametrize(
    "model,expected", [({"compose": {"arch": "fcos"}}, False), ({"name": "mask_rcnn_r50_fpn"}, True)]
)
def test_recipe_datasets_decode_masks_only_for_mask_predicting_models(
    tmp_path: Path, model: dict, expected: bool
) -> None:
    from msfusion.engine.config import load_config
    from msfusion.engine.detection import DetectionTask

    _coco(tmp_path, lambda d: None)
    dataset = {"type": "coco", "images": str(tmp_path / "images"), "annotations": str(tmp_path / "instances.json")}
    cfg = load_config(Path(__file__).parents[2] / "configs" / "demo_shapes_detection.yaml")
    cfg["model"] = {**cfg["model"], "compose": None, "name": None, **model}
    cfg["data"] = dict(cfg["data"], train=dataset, val=dict(dataset))
    train, val = DetectionTask().build_datasets(cfg)
    assert train.with_masks is expected and val.with_masks is expected
    assert ("masks" in val[0]["target"]) is expected
    assert DetectionTask().build_eval_dataset(cfg).with_masks is expected
    # A value the recipe sets is kept.
    cfg["data"]["val"] = dict(dataset, with_masks=not expected)
    assert DetectionTask().build_eval_dataset(cfg).with_masks is (not expected)


def test_voc_skip_drops_unreadable_files_and_keeps_image_ids(tmp_path: Path) -> None:
    _voc(tmp_path, VOC_XML[:70])
    with pytest.warns(UserWarning, match=r"skipped 1 bad objects or files; first: VOC image 000001"):
        data = VOCDetection(tmp_path, "val", on_bad_annotation="skip")
    assert len(data) == 1 and data.load(0).image_id == 2 and data.load(0).labels.tolist() == [12]
    (tmp_path / "Annotations" / "000002.xml").write_text(VOC_XML[:70])
    with pytest.raises(ValueError, match=r"every one of the 2 annotation files is unreadable"):
        VOCDetection(tmp_path, "val", on_bad_annotation="skip")


def test_visdrone_skip_drops_boxes_outside_the_image(tmp_path: Path) -> None:
    _visdrone(tmp_path, ["4,6,10,8,1,4,0,0", "70,10,8,8,1,4,0,0", "-20,-20,10,10,0,0,0,0"])
    with pytest.warns(UserWarning, match=r"dropped 0 zero-size boxes and 2 boxes outside their image"):
        data = VisDroneDetection(tmp_path, on_bad_annotation="skip")
    assert data.load(0).boxes.tolist() == [[4, 6, 14, 14]] and len(data.skipped) == 2


def test_panoptic_load_refuses_a_listed_segment_without_pixels(tmp_path: Path) -> None:
    """The PNG check also runs when an image is read (evaluation builds no check_labels pass)."""
    from test_detection_data_audit import _extra_segment, _panoptic

    from msfusion.data.coco_panoptic import COCOPanoptic

    spec = _panoptic(tmp_path, _extra_segment)
    data = COCOPanoptic(tmp_path / "images", tmp_path / spec["dataset"]["annotations"], tmp_path / "panoptic")
    assert data.load_panoptic(1).image_id == 9
    with pytest.raises(ValueError, match=r"3\.png \(image 3\): segments \[999\]"):
        data.load_panoptic(0)
