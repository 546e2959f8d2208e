"""Panoptic segmentation: PQ by hand and against torchmetrics, the Panoptic FPN merge, the model, data, engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import msfusion as mf
from msfusion.engine.panoptic_metrics import PanopticQuality
from msfusion.models.meta_arch.panoptic_fpn import panoptic_merge

THINGS, STUFF = {1, 2}, {3, 4}


def _segments(cats: dict[int, int], crowd: tuple[int, ...] = ()) -> list[dict]:
    return [{"id": s, "category_id": c, "iscrowd": int(s in crowd)} for s, c in cats.items()]


# ---- PQ --------------------------------------------------------------------------------------------


def test_pq_by_hand_with_void_and_crowd() -> None:
    """A 4x8 image: one thing matched (IoU 4/5 after void), one FP on a crowd, one FN, one stuff TP."""
    gt = np.array(
        [[1, 1, 1, 1, 0, 5, 5, 5],
         [1, 1, 1, 1, 0, 5, 5, 5],
         [3, 3, 3, 3, 3, 3, 2, 2],
         [3, 3, 3, 3, 3, 3, 2, 2]]
    )  # fmt: skip
    pred = np.array(
        [[7, 7, 7, 7, 7, 8, 8, 8],
         [7, 7, 7, 7, 9, 8, 8, 8],
         [6, 6, 6, 6, 6, 6, 9, 9],
         [6, 6, 6, 6, 6, 6, 9, 9]]
    )  # fmt: skip
    # gt: 1 = thing cat 1 (8 px), 5 = crowd of cat 1 (6 px), 2 = thing cat 2 (4 px), 3 = stuff cat 3 (12 px), 0 void.
    # pred: 7 = cat 1 (9 px, 1 of them on void), 8 = cat 1 on the crowd, 6 = cat 3, 9 = cat 2 (5 px: 1 on void).
    pq = PanopticQuality(THINGS, STUFF, names={1: "a", 2: "b", 3: "c", 4: "d"})
    pq.update(
        pred, [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 1}, {"id": 6, "category_id": 3},
               {"id": 9, "category_id": 2}],
        gt, _segments({1: 1, 5: 1, 2: 2, 3: 3}, crowd=(5,)),
    )  # fmt: skip
    out = pq.compute()
    a, b, c = out["per_class"]["a"], out["per_class"]["b"], out["per_class"]["c"]
    # cat 1: pred 7 vs gt 1: inter 8, union 9 + 8 - 8 - 1 (void) = 8 -> IoU 1.0; pred 8 lies on the crowd: ignored.
    assert (a["TP"], a["FP"], a["FN"]) == (1, 0, 0) and a["PQ"] == pytest.approx(1.0)
    # cat 2: pred 9 vs gt 2: inter 4, union 5 + 4 - 4 - 1 = 4 -> IoU 1.0.
    assert (b["TP"], b["FP"], b["FN"]) == (1, 0, 0) and b["SQ"] == pytest.approx(1.0)
    # cat 3: inter 12, union 12 -> 1.0; category 4 never appears and is not averaged.
    assert (c["TP"], c["FP"], c["FN"]) == (1, 0, 0)
    assert out["N"] == 3 and out["N_th"] == 2 and out["N_st"] == 1 and out["PQ"] == pytest.approx(1.0)


def test_pq_counts_partial_overlaps_fp_and_fn() -> None:
    gt = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
    pred = np.array([[4, 4, 4, 0], [4, 4, 4, 0], [5, 5, 5, 5], [5, 5, 5, 5]])
    pq = PanopticQuality(THINGS, STUFF)
    # pred 4 (cat 1, 6 px) vs gt 1 (8 px): IoU 6/8 = 0.75 TP; pred 5 (cat 2, 8 px) vs gt 2 (4 px): inter 4,
    # union 8 + 4 - 4 - 4 (void) = 4 -> IoU 1.0 TP.
    pq.update(pred, [{"id": 4, "category_id": 1}, {"id": 5, "category_id": 2}], gt, _segments({1: 1, 2: 2}))
    # A second image: a cat-1 prediction on cat-2 ground truth: one FP (cat 1) and one FN (cat 2).
    gt2, pred2 = np.full((2, 2), 3), np.full((2, 2), 6)
    pq.update(pred2, [{"id": 6, "category_id": 1}], gt2, [{"id": 3, "category_id": 2, "iscrowd": 0}])
    out = pq.compute()
    cat1, cat2 = out["per_class"]["1"], out["per_class"]["2"]
    assert (cat1["TP"], cat1["FP"], cat1["FN"]) == (1, 1, 0)
    assert cat1["SQ"] == pytest.approx(0.75) and cat1["RQ"] == pytest.approx(1 / 1.5)
    assert cat1["PQ"] == pytest.approx(0.75 / 1.5)
    assert (cat2["TP"], cat2["FP"], cat2["FN"]) == (1, 0, 1) and cat2["PQ"] == pytest.approx(1 / 1.5)
    assert out["PQ_th"] == pytest.approx((0.5 + 1 / 1.5) / 2) and np.isnan(out["PQ_st"])


def _random_case(rng: np.random.Generator) -> tuple:
    def blocks(choices):
        cat = np.kron(rng.choice(choices, size=(6, 6)), np.ones((4, 4), int))
        inst = np.kron(rng.integers(0, 2, size=(6, 6)), np.ones((4, 4), int))
        return cat, inst

    def to_ids(cat, inst):
        ids, segs = np.zeros_like(cat), []
        for c in np.unique(cat[cat > 0]):
            for i in np.unique(inst[cat == c]) if c in THINGS else [None]:
                m = (cat == c) & ((inst == i) if i is not None else True)
                ids[m] = len(segs) + 1
                segs.append({"id": len(segs) + 1, "category_id": int(c), "iscrowd": 0})
        return ids, segs

    gt_cat, gt_inst = blocks([0, 1, 2, 3, 4])
    pred_cat, pred_inst = gt_cat.copy(), gt_inst.copy()
    noise = rng.random(gt_cat.shape) < 0.3
    pred_cat[noise] = rng.choice([1, 2, 3, 4], size=int(noise.sum()))
    pred_cat[pred_cat == 0] = 3  # torchmetrics also discounts ground truth on void predictions: none here
    return to_ids(gt_cat, gt_inst), to_ids(pred_cat, pred_inst), (gt_cat, gt_inst), (pred_cat, pred_inst)


def test_pq_equals_torchmetrics_without_crowds() -> None:
    from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

    rng = np.random.default_rng(0)
    for _ in range(5):
        ours = PanopticQuality(THINGS, STUFF)
        theirs = TorchmetricsPQ(THINGS, STUFF, allow_unknown_preds_category=True, return_sq_and_rq=True)
        preds, targets = [], []
        for _ in range(3):
            (gt_ids, gt_segs), (pred_ids, pred_segs), (gc, gi), (pc, pi) = _random_case(rng)
            ours.update(pred_ids, pred_segs, gt_ids, gt_segs)
            preds.append(np.stack([pc, pi], -1))
            targets.append(np.stack([np.where(gc == 0, 5, gc), gi], -1))  # 5: an unknown category = void
        expected = theirs(torch.tensor(np.stack(preds)), torch.tensor(np.stack(targets))).double().numpy()
        out = ours.compute()
        np.testing.assert_allclose([out["PQ"], out["SQ"], out["RQ"]], expected, atol=1e-6)


def test_pq_refuses_ids_missing_from_segments_and_merges_states() -> None:
    pq = PanopticQuality(THINGS, STUFF)
    with pytest.raises(ValueError, match=r"segment ids \[2\] are in the panoptic map but not in segments_info"):
        pq.update(np.array([[1, 2]]), [{"id": 1, "category_id": 1}], np.array([[1, 1]]), _segments({1: 1}))
    with pytest.raises(ValueError, match="category 9"):
        pq.update(np.array([[1, 1]]), [{"id": 1, "category_id": 9}], np.array([[1, 1]]), _segments({1: 1}))
    a, b = PanopticQuality(THINGS, STUFF), PanopticQuality(THINGS, STUFF)
    a.update(np.array([[1, 1]]), [{"id": 1, "category_id": 1}], np.array([[1, 1]]), _segments({1: 1}))
    b.merge([a.state(), a.state()])
    assert b.compute()["per_class"]["1"]["TP"] == 2 and b.num_images == 2


# ---- The merge -------------------------------------------------------------------------------------


def test_merge_orders_instances_suppresses_overlaps_and_fills_stuff() -> None:
    masks = torch.zeros(4, 1, 6, 8)
    masks[0, 0, 0:3, 0:4] = 0.9  # best instance, label 1
    masks[1, 0, 0:3, 1:4] = 0.9  # fully inside instance 0: > 50 % taken -> dropped
    masks[2, 0, 2:5, 3:7] = 0.9  # overlaps instance 0 in 1 of 12 pixels -> kept, minus it
    masks[3, 0, 4:6, 0:2] = 0.9  # below the score threshold
    scores = torch.tensor([0.95, 0.9, 0.8, 0.3])
    labels = torch.tensor([1, 2, 2, 1])
    semantic = torch.zeros(6, 8, dtype=torch.long)
    semantic[:, 7] = 1  # 6 pixels of stuff 1
    semantic[5, :3] = 2  # 3 pixels of stuff 2: below the area threshold
    ids, segments = panoptic_merge(scores, labels, masks, semantic, num_things=2, score_thresh=0.5, stuff_area=4)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segments] == [(1, 1, True), (2, 2, True), (3, 3, False)]
    assert (ids == 1).sum() == 12 and (ids == 2).sum() == 11 and (ids == 3).sum() == 6
    assert segments[1]["area"] == 11 and (ids[5, :3] == 0).all()  # stuff 2 too small: void


# ---- The model -------------------------------------------------------------------------------------


def _targets(sizes):
    targets = []
    for h, w in sizes:
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 4:30, 6:40] = 1
        masks[1, 35:60, 10:50] = 1
        semantic = torch.ones(h, w, dtype=torch.long)
        semantic[masks.bool().any(0)] = 0
        semantic[:3] = 255
        boxes = torch.tensor([[6, 4, 40, 30], [10, 35, 50, 60]], dtype=torch.float32)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks, "semantic": semantic})
    return targets


def test_panoptic_fpn_trains_and_merges() -> None:
    torch.manual_seed(0)
    model = mf.create_model("test_panoptic_fpn", fine=True).train()
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    losses = model(images, _targets([(64, 80), (72, 64)]))
    assert {"loss_mask", "loss_classifier", "loss_semantic"} <= set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.semantic_head.parameters())
    assert model.semantic_head.conv_seg.out_channels == 2  # one stuff class + "thing"
    model.eval().score_thresh = 0.0
    with torch.no_grad():
        out = model(images)
    assert out[1]["panoptic"].shape == (72, 64) and out[1]["semantic"].shape == (72, 64)
    listed = {s["id"] for s in out[0]["segments_info"]}
    assert set(out[0]["panoptic"].unique().tolist()) - {0} <= listed


def test_panoptic_fpn_r50_size_beside_the_paper() -> None:
    from msfusion.analysis.report import model_report

    report = model_report("panoptic_fpn_r50")
    assert report["input_size"] == [1, 3, 640, 640] and report["rules"] == "mmcv"
    assert abs(report["params_m"] - 46.0) < 0.1  # FINE Table 7: 46.0 M
    assert abs(report["gmacs"] - 156.7) / 156.7 < 0.005  # FINE Table 7: 156.7 G


# ---- Data ------------------------------------------------------------------------------------------


def _write_coco_panoptic(root: Path) -> Path:
    """Two 8x10 images in the real format: a thing (cat 5), a crowd of it, stuff (cat 12), void."""
    from PIL import Image

    from msfusion.data.coco_panoptic import id_to_rgb

    (root / "images").mkdir(parents=True)
    (root / "panoptic").mkdir()
    ids = np.zeros((8, 10), np.int64)
    ids[1:4, 1:5] = 300  # a thing: an id above 255 exercises the G channel
    ids[5:8, 6:9] = 7  # a crowd of the thing's category
    ids[:, 9] = 65536 + 2  # stuff, the B channel
    segments = [
        {"id": 300, "category_id": 5, "iscrowd": 0, "bbox": [1, 1, 4, 3], "area": 12},
        {"id": 7, "category_id": 5, "iscrowd": 1, "bbox": [6, 5, 3, 3], "area": 9},
        {"id": 65538, "category_id": 12, "iscrowd": 0, "bbox": [9, 0, 1, 8], "area": 8},
    ]
    images, annotations = [], []
    for image_id in (3, 9):
        Image.fromarray(np.full((8, 10, 3), 40 * image_id % 255, np.uint8)).save(root / "images" / f"{image_id}.jpg")
        Image.fromarray(id_to_rgb(ids)).save(root / "panoptic" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 8, "width": 10})
        annotations.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments})
    categories = [
        {"id": 12, "name": "grass", "isthing": 0},
        {"id": 5, "name": "dog", "isthing": 1},
        {"id": 20, "name": "sky", "isthing": 0},
        {"id": 2, "name": "cat", "isthing": 1},
    ]
    path = root / "panoptic.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_coco_panoptic_reader_labels_semantic_and_crowds(tmp_path: Path) -> None:
    from msfusion.data.coco_panoptic import COCOPanoptic

    data = COCOPanoptic(tmp_path / "images", _write_coco_panoptic(tmp_path))
    # Things first by category id (cat 2, dog 5 -> 1, 2), then stuff (grass 12, sky 20 -> 3, 4).
    assert data.classes == ["background", "cat", "dog", "grass", "sky"] and data.label_to_category == [0, 2, 5, 12, 20]
    assert data.num_classes == 3 and data.num_stuff_classes == 2
    gt = data.load_panoptic(1)
    assert gt.image_id == 9 and {s["id"]: (s["label"], s["iscrowd"]) for s in gt.segments} == {
        300: (2, 0),
        7: (2, 1),
        65538: (3, 0),
    }
    sample = data[0]
    target = sample["target"]
    assert target["labels"].tolist() == [2] and target["boxes"].tolist() == [[1.0, 1.0, 5.0, 4.0]]  # crowd left out
    semantic = target["semantic"]
    assert semantic[2, 2] == 0 and semantic[6, 7] == 0  # things, crowd included: the "thing" class
    assert (semantic[:, 9] == 1).all() and semantic[0, 0] == 255  # grass = stuff 1; void


def test_coco_panoptic_reader_refuses_unlisted_segment_ids(tmp_path: Path) -> None:
    from msfusion.data.coco_panoptic import COCOPanoptic

    path = _write_coco_panoptic(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][0]["segments_info"].pop(1)  # segment 7 stays in the PNG
    path.write_text(json.dumps(data))
    reader = COCOPanoptic(tmp_path / "images", path)
    with pytest.raises(ValueError, match=r"3\.png: segment ids \[7\] are in the panoptic map but not in segments_info"):
        reader.load_panoptic(0)


def test_shapes_panoptic_round_trips_through_the_coco_format(tmp_path: Path) -> None:
    from msfusion.data.coco_panoptic import COCOPanoptic, masks_to_panoptic
    from msfusion.data.shapes_panoptic import ShapesPanoptic, write_shapes_panoptic

    path = write_shapes_panoptic(tmp_path, split="val", num_images=2, image_size=48)
    read, made = COCOPanoptic(tmp_path / "images", path), ShapesPanoptic("val", num_images=2, image_size=48)
    assert read.classes == made.classes and made.classes[-1] == "backdrop" and made.num_stuff_classes == 1
    a, b = read.load_panoptic(1), made.load_panoptic(1)
    assert (a.ids == b.ids).all() and a.segments == b.segments and (a.image == b.image).all()
    with pytest.raises(ValueError, match="segments overlap"):
        masks_to_panoptic(np.ones((2, 3, 3), bool))
    # Large-scale jittering shrinks and pads: the padding is void for the semantic branch, boxes follow masks.
    jittered = ShapesPanoptic(num_images=1, image_size=48, transforms={"kind": "lsj", "size": 48,
                              "scale_range": (0.3, 0.5)}, aug_seed=1)[0]["target"]  # fmt: skip
    assert (jittered["semantic"][-4:, -4:] == 255).all() and set(jittered["semantic"].unique().tolist()) <= {0, 1, 255}
    assert jittered["boxes"][:, 2:].max() <= 48 * 0.5 + 1


# ---- The engine ------------------------------------------------------------------------------------


def _recipe(work_dir: Path, iters: int, evaluate: bool = True) -> dict:
    shapes = {"type": "shapes", "image_size": 64, "seed": 0}
    return {
        "task": "panoptic",
        "model": {"name": "test_panoptic_fpn", "kwargs": {"fine": True}},
        "data": {"train": dict(shapes, split="train", num_images=4, transforms={"kind": "lsj", "size": 64}),
                 "val": dict(shapes, split="val", num_images=1), "batch_size": 2, "num_workers": 0},
        "optim": {"lr": 1.0e-4},
        "schedule": {"iters": iters, "warmup_iters": 1},
        "train": {"work_dir": str(work_dir), "eval_interval": iters if evaluate else 0, "ckpt_interval": 1, "log_interval": 1,
                  "progress": False, "tensorboard": False},
    }  # fmt: skip


def test_train_resume_eval_predict(tmp_path: Path) -> None:
    from PIL import Image

    from msfusion.cli import main
    from msfusion.engine.config import validate_config
    from msfusion.engine.trainer import train

    summary = train(validate_config(_recipe(tmp_path / "run", 1, evaluate=False)))  # one evaluation is enough
    assert summary["step"] == 1
    resumed = train(validate_config(_recipe(tmp_path / "run", 2)), resume=True)
    assert resumed["step"] == 2 and {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"} <= set(resumed["metrics"])
    checkpoint = Path(resumed["last_checkpoint"])
    meta = json.loads(checkpoint.with_suffix(".json").read_text())
    assert meta["task"] == "panoptic" and meta["classes"][-1] == "backdrop"
    image = tmp_path / "in.png"
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0  # fmt: skip
    picture = np.asarray(Image.open(tmp_path / "out" / "in_panoptic.png"))
    assert picture.shape[0] == 40 and picture.shape[1] > 56  # the legend panel on the right
    segments = json.loads((tmp_path / "out" / "in_panoptic.json").read_text())["segments_info"]
    ids = np.asarray(Image.open(tmp_path / "out" / "in_panoptic_ids.png")).astype(np.int64)
    assert set(np.unique(ids[..., 0] + 256 * ids[..., 1]).tolist()) - {0} <= {s["id"] for s in segments}
    assert all(s["class"] in meta["classes"] for s in segments)


def test_format_panoptic_metrics_prints_the_pq_table() -> None:
    from msfusion.engine.panoptic import format_panoptic_metrics

    text = format_panoptic_metrics(
        {"PQ": 0.402, "SQ": 0.778, "RQ": 0.493, "N": 133, "PQ_th": 0.5, "SQ_th": 0.8, "RQ_th": 0.6, "N_th": 80,
         "PQ_st": float("nan"), "SQ_st": float("nan"), "RQ_st": float("nan"), "N_st": 0}
    )  # fmt: skip
    assert text.splitlines()[1].split() == ["All", "40.2", "77.8", "49.3", "133"]
    assert "n/a" in text.splitlines()[3]


def test_table7_recipe_loads() -> None:
    from msfusion.engine.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "configs" / "panoptic_fpn_r50_fine_coco_panoptic.yaml")
    assert cfg["task"] == "panoptic" and cfg["model"]["name"] == "panoptic_fpn_r50_fine"
    assert cfg["data"]["train"]["type"] == "coco_panoptic" and cfg["model"]["kwargs"]["min_size"] == 640


def test_eval_writes_coco_panoptic_results_that_reproduce_its_metrics(tmp_path: Path) -> None:
    """``<ckpt>_eval_panoptic.json`` + PNGs, read back as panopticapi would, give the PQ that eval printed."""
    from PIL import Image

    from msfusion.data.coco_panoptic import COCOPanoptic, rgb_to_id
    from msfusion.data.shapes_panoptic import write_shapes_panoptic
    from msfusion.engine.config import validate_config
    from msfusion.engine.trainer import train

    gt_json = write_shapes_panoptic(tmp_path / "data", split="val", num_images=3, image_size=64)
    recipe = _recipe(tmp_path / "run", 1, evaluate=False)
    recipe["model"]["kwargs"].update(stuff_area=16, score_thresh=0.0)  # a model of one step still predicts segments
    checkpoint = train(validate_config(recipe))["last_checkpoint"]
    val = {"type": "coco_panoptic", "images": str(tmp_path / "data" / "images"), "annotations": str(gt_json)}
    result = mf.evaluate({**recipe, "data": {**recipe["data"], "val": val}}, checkpoint, out=tmp_path / "eval")
    stem = Path(checkpoint).stem
    assert tmp_path / "eval" / f"{stem}_eval_panoptic" in result.files
    annotations = json.loads((tmp_path / "eval" / f"{stem}_eval_panoptic.json").read_text())["annotations"]
    assert sorted(a["file_name"] for a in annotations) == sorted(
        p.name for p in (tmp_path / "data" / "panoptic_val").iterdir()
    )
    assert any(a["segments_info"] for a in annotations), "the check needs predicted segments"
    gt = COCOPanoptic(tmp_path / "data" / "images", gt_json)
    index_of = {gt.load_panoptic(i).image_id: i for i in range(len(gt))}
    pq = PanopticQuality(range(1, gt.num_things + 1), range(gt.num_things + 1, len(gt.classes)))
    for ann in annotations:
        ids = rgb_to_id(np.asarray(Image.open(tmp_path / "eval" / f"{stem}_eval_panoptic" / ann["file_name"])))
        segments = [{**s, "category_id": gt.category_to_label[s["category_id"]]} for s in ann["segments_info"]]
        truth = gt.load_panoptic(index_of[ann["image_id"]])
        truth_segments = [{"id": s["id"], "category_id": s["label"], "iscrowd": s["iscrowd"]} for s in truth.segments]
        pq.update(ids, segments, truth.ids, truth_segments, truth.path)
    again = pq.compute()
    assert [again[k] for k in ("PQ", "SQ", "RQ")] == pytest.approx([result.metrics[k] for k in ("PQ", "SQ", "RQ")])


def test_a_panoptic_result_names_the_files_category_ids() -> None:
    """Labels are the dataset's order; the result file speaks in the annotation file's category ids."""
    from types import SimpleNamespace

    from msfusion.engine.panoptic import PanopticEvaluator

    evaluator = PanopticEvaluator.__new__(PanopticEvaluator)
    evaluator.dataset = SimpleNamespace(label_to_category=[0, 17, 92])  # e.g. COCO: a thing and a stuff class
    ids = np.array([[1, 1], [2, 0]], np.int32)
    segments = [{"id": 1, "category_id": 1, "isthing": True, "score": 0.9, "area": 2},
                {"id": 2, "category_id": 2, "isthing": False, "score": 1.0, "area": 1}]  # fmt: skip
    truth = SimpleNamespace(path="val2017/000000000139.jpg", image_id=139)
    result = evaluator._result(ids, segments, truth)
    assert result["file_name"] == "000000000139.png" and result["image_id"] == 139
    assert [(s["id"], s["category_id"], s["isthing"]) for s in result["segments_info"]] == [(1, 17, 1), (2, 92, 0)]


def test_panoptic_result_pngs_of_one_stem_do_not_overwrite_each_other(tmp_path: Path) -> None:
    from msfusion.engine.panoptic import PanopticTask

    task = PanopticTask()
    task.last_results = [
        {"image_id": i, "file_name": "frame.png", "segments_info": [], "png": bytes([i])} for i in (1, 2)
    ]
    files = task.write_eval_outputs({"PQ": 0.5}, {}, tmp_path / "best.safetensors", tmp_path)
    annotations = json.loads(files[1].read_text())["annotations"]
    assert [a["file_name"] for a in annotations] == ["frame.png", "frame_2.png"]
    assert [(tmp_path / "best_eval_panoptic" / a["file_name"]).read_bytes() for a in annotations] == [b"\x01", b"\x02"]
