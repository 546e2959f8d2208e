"""Evaluation and commands: nothing scored silently wrong (issue 22, "Evaluation and commands" and "Also").

Each test is one case of the audit: a checkpoint held against data of other class names, NaN weights,
NaN result files, detection test options that were ignored, NaN input to a model, RT-DETR inputs too
small for its queries, ``--set key=nan`` and the messages of a failed checkpoint write.
"""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import msfusion as mf
from msfusion.checkpoint import CheckpointError, save_checkpoint
from msfusion.cli import main
from msfusion.engine import checkpointing
from msfusion.engine.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread

SHAPES = ["background", "circle", "square", "triangle", "star", "cross", "bar"]
SEG_RECIPE = {
    "model": {"name": "test_segnext"},
    "data": {"val": {"type": "shapes", "split": "val", "num_images": 2, "image_size": 32}, "eval_scale": None,
             "num_workers": 0},
    "train": {"progress": False},
}  # fmt: skip
DET_MODEL = {"name": "test_retinanet_cednet", "kwargs": {"min_size": 64, "max_size": 64}}


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def _seg_checkpoint(tmp_path: Path, classes: list[str]) -> Path:
    model = mf.create_model("test_segnext", num_classes=len(classes))
    return save_checkpoint(model, tmp_path / "seg.safetensors", metadata={"task": "segmentation", "classes": classes})


def _det_checkpoint(tmp_path: Path, classes: list[str]) -> Path:
    model = mf.create_model(DET_MODEL["name"], num_classes=len(classes), **DET_MODEL["kwargs"])
    return save_checkpoint(model, tmp_path / "det.safetensors", metadata={"task": "detection", "classes": classes})


def _coco(tmp_path: Path, categories: list[dict]) -> dict:
    """A one-image COCO set (32x32, one box per category) with the given categories."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "1.png")
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": c["id"], "bbox": [2 + 8 * k, 2, 6, 6], "area": 36, "iscrowd": 0}
        for k, c in enumerate(categories)
    ]
    path = tmp_path / "instances.json"
    images = [{"id": 1, "file_name": "1.png", "width": 32, "height": 32}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return {"type": "coco", "images": str(folder), "annotations": str(path)}


# ---- a checkpoint of other class names (same count) ------------------------------------------------------


def test_eval_refuses_a_checkpoint_whose_class_names_differ(tmp_path, capsys):
    swapped = ["background", "square", "circle", *SHAPES[3:]]  # same count, two classes swapped
    checkpoint = _seg_checkpoint(tmp_path, swapped)
    config = _write(tmp_path / "seg.yaml", SEG_RECIPE)
    assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "the same classes in another order" in err
    assert "label 1: 'square' in the checkpoint, 'circle' in data.val" in err
    assert "--ignore-class-names" in err and not (tmp_path / "out").exists()


def test_eval_warns_when_class_names_differ_only_in_case(tmp_path, capsys):
    checkpoint = _seg_checkpoint(tmp_path, ["Background", "Circle", *SHAPES[2:]])
    config = _write(tmp_path / "seg.yaml", SEG_RECIPE)
    with pytest.warns(UserWarning, match="only in case"):
        assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_eval_refuses_coco_categories_renumbered(tmp_path, capsys):
    """The same two names under swapped ids: labels follow the ids, so every label would mean the other class."""
    checkpoint = _det_checkpoint(tmp_path, ["background", "circle", "square"])
    val = _coco(tmp_path, [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}])
    config = _write(tmp_path / "det.yaml", {"task": "detection", "model": DET_MODEL, "data": {"val": val}})
    assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint: ['background', 'circle', 'square']" in err
    assert "data.val:   ['background', 'square', 'circle']" in err


# ---- NaN or infinite weights ------------------------------------------------------------------------------


def test_save_refuses_nan_weights_and_names_the_tensor(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) hold NaN or infinite values \(1\.bias\)"):
        save_checkpoint(model, tmp_path / "bad.safetensors", allow_unrebuildable=True)
    assert not list(tmp_path.iterdir())


def test_eval_and_predict_refuse_a_checkpoint_holding_nan(tmp_path, capsys):
    good = _seg_checkpoint(tmp_path, SHAPES)
    state = mf.create_model("test_segnext", num_classes=len(SHAPES)).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and k.startswith("decode_head"))
    state[name] = torch.full_like(state[name], float("nan"))
    bad = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad))  # written around save_checkpoint's check
    bad.with_suffix(".json").write_text(good.with_suffix(".json").read_text())
    config = _write(tmp_path / "seg.yaml", SEG_RECIPE)
    assert main(["eval", str(config), "--checkpoint", str(bad), "--out", str(tmp_path / "out")]) == 1
    assert f"hold NaN or infinite values ({name}" in capsys.readouterr().err
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(bad), str(image), "--out", str(tmp_path / "p"), "--no-progress"]) == 1
    assert f"hold NaN or infinite values ({name}" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() or not list((tmp_path / "p").iterdir())


# ---- result files with NaN ----------------------------------------------------------------------------------


def test_result_files_with_nan_scores_or_boxes_are_refused_by_entry(tmp_path):
    from msfusion.data.coco_detection import COCODetection
    from msfusion.engine.detection import coco_metrics, compare_error_analysis

    val = _coco(tmp_path, [{"id": 1, "name": "circle"}])
    dataset = COCODetection(val["images"], val["annotations"])
    good = {"image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 6], "score": 0.9}
    path = tmp_path / "results.json"
    path.write_text(json.dumps([good, {**good, "score": float("nan")}]))  # json writes NaN, and reads it back
    with pytest.raises(ValueError, match=r"results.json: entry 1 \(image_id 1\): score is nan"):
        compare_error_analysis(dataset, {"A": path})
    with pytest.raises(ValueError, match=r"entry 0 \(image_id 1\): bbox is \[2, nan, 6, 6\]"):
        coco_metrics(dataset.coco_gt(), [{**good, "bbox": [2, float("nan"), 6, 6]}], "bbox", [1])
    with pytest.raises(ValueError, match="image_id is '1', not an integer"):
        coco_metrics(dataset.coco_gt(), [{**good, "image_id": "1"}], "bbox", [1])


# ---- detection test options: implemented or refused ------------------------------------------------------


class BrightBoxDetector(nn.Module):
    """Detects the bounding box of the bright pixels of each image as class 1 (a mask of them too)."""

    def __init__(self) -> None:
        super().__init__()
        self.nms_thresh, self.detections_per_img, self.calls = 0.5, 100, 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            self.calls += 1
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            mask = (image[0] > 0.5).float()[None, None]
            out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1]), "masks": mask})
        return out


def test_flip_tta_unflips_boxes_and_masks_and_merges_by_nms():
    from msfusion.engine.detection import detect

    image = torch.zeros(3, 20, 40)
    image[:, 4:10, 3:11] = 1.0  # left of the centre: the mirror's box is elsewhere until flipped back
    model = BrightBoxDetector()
    (merged,) = detect(model, [image], flip=True)
    assert model.calls == 2
    assert merged["boxes"].tolist() == [[3.0, 4.0, 11.0, 10.0]]  # the two agree once un-flipped: NMS keeps one
    assert torch.equal(merged["masks"][0, 0], (image[0] > 0.5).float())


def test_evaluate_detection_with_tta_runs_the_mirror_and_scores_it(tmp_path):
    from msfusion.data.coco_detection import COCODetection
    from msfusion.engine.detection import evaluate_detection

    folder = tmp_path / "images"
    folder.mkdir()
    picture = np.zeros((32, 32, 3), np.uint8)
    picture[4:12, 2:9] = 255
    Image.fromarray(picture).save(folder / "1.png")
    ann = {"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 4, 7, 8], "area": 56, "iscrowd": 0}
    data = {"images": [{"id": 1, "file_name": "1.png", "width": 32, "height": 32}], "annotations": [ann],
            "categories": [{"id": 5, "name": "patch"}]}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(data))
    dataset = COCODetection(folder, tmp_path / "a.json")
    model = BrightBoxDetector()
    metrics, results = evaluate_detection(model, dataset, tta=True, batch_size=1)
    assert model.calls == 2 and len(results) == 1 and metrics["bbox_AP"] == pytest.approx(1.0)


def test_detection_per_class_ap_is_reported_and_printed(tmp_path):
    from msfusion.data.coco_detection import COCODetection
    from msfusion.engine.detection import evaluate_detection, format_detection_metrics

    val = _coco(tmp_path, [{"id": 3, "name": "circle"}, {"id": 9, "name": "square"}])
    dataset = COCODetection(val["images"], val["annotations"])

    class CirclesOnly(nn.Module):
        def forward(self, images):
            box = torch.tensor([[2.0, 2.0, 8.0, 8.0]])  # the circle's box; the square is missed
            return [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])} for _ in images]

    metrics, _ = evaluate_detection(CirclesOnly(), dataset, batch_size=1)
    rows = {r["class"]: r for r in metrics["per_class"]}
    assert rows["circle"]["bbox_AP"] == pytest.approx(1.0) and rows["square"]["bbox_AP"] == 0.0
    assert rows["circle"]["category_id"] == 3 and metrics["bbox_AP"] == pytest.approx(0.5)
    table = format_detection_metrics(metrics)
    assert "class   bbox AP" in table and "circle    100.0" in table and "square      0.0" in table


@pytest.fixture(scope="module")
def det_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("det")
    torch.manual_seed(0)
    return _det_checkpoint(folder, SHAPES)


def test_detection_predict_refuses_slide_and_resize_with_the_reason(det_checkpoint, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(image)
    base = ["predict", "--checkpoint", str(det_checkpoint), str(image), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--slide", "32,16"]) == 2
    assert "--slide is not available for a detection checkpoint: sliding windows" in capsys.readouterr().err
    assert main([*base, "--resize", "64,32"]) == 2
    assert "--resize is not available for a detection checkpoint: a detector resizes" in capsys.readouterr().err


def test_detection_predict_tta_and_fast_are_applied(det_checkpoint, tmp_path, monkeypatch):
    import msfusion.engine.detection as detection
    import msfusion.engine.fast_inference as fast_inference

    image = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(image)
    calls = {"flip": [], "fast": 0}
    real_detect, real_fast = detection.detect, fast_inference.optimize_for_inference

    def spy_detect(model, images, *, flip=False):
        calls["flip"].append(flip)
        return real_detect(model, images, flip=flip)

    def spy_fast(model, **kwargs):
        calls["fast"] += 1
        return real_fast(model, **kwargs)

    monkeypatch.setattr(detection, "detect", spy_detect)
    monkeypatch.setattr(fast_inference, "optimize_for_inference", spy_fast)
    args = ["predict", "--checkpoint", str(det_checkpoint), str(image), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "fast"), "--fast"]) == 0
    assert main([*args, "--out", str(tmp_path / "tta"), "--tta"]) == 0
    assert calls == {"flip": [False, False, True], "fast": 1}
    plain, fast = (json.loads((tmp_path / d / "in_det.json").read_text()) for d in ("plain", "fast"))
    assert [d["label"] for d in plain] == [d["label"] for d in fast]
    for a, b in zip(plain, fast, strict=True):
        assert np.allclose(a["box"], b["box"], atol=0.05) and abs(a["score"] - b["score"]) < 1e-3


def test_detection_eval_refuses_slide_mode_and_writes_tta_results_apart(det_checkpoint, tmp_path, capsys):
    val = {"type": "shapes", "split": "val", "num_images": 1, "image_size": 64, "seed": 0}
    recipe = {
        "task": "detection",
        "model": DET_MODEL,
        "data": {"val": val, "num_workers": 0},
        "train": {"progress": False},
    }
    config = _write(tmp_path / "det.yaml", recipe)
    args = ["eval", str(config), "--checkpoint", str(det_checkpoint), "--out", str(tmp_path / "out")]
    assert main([*args, "--mode", "slide"]) == 2
    assert "eval.mode=slide (sliding windows) is a segmentation test mode" in capsys.readouterr().err
    assert main([*args, "--tta"]) == 0
    assert (tmp_path / "out" / "det_eval_tta.json").is_file() and not (tmp_path / "out" / "det_eval.json").exists()
    assert "class" in capsys.readouterr().out


# ---- NaN input to a model ---------------------------------------------------------------------------------


def test_a_nan_pixel_is_refused_by_segmentors_and_detectors():
    segmentor = mf.create_model("test_segnext", num_classes=3).eval()
    x = torch.rand(1, 3, 32, 32)
    x[0, 1, 5, 7] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match=r"holds 1 NaN or infinite value"):
        segmentor(x)
    detector = mf.create_model(DET_MODEL["name"], num_classes=3, **DET_MODEL["kwargs"]).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"detector's image batch .* holds \d+ NaN"):
        detector([torch.full((3, 40, 48), float("nan"))])


def test_detr_refuses_nan_input_and_names_the_smallest_size_for_its_queries():
    pytest.importorskip(
        "msfusion.models.meta_arch.detr", reason="the msfusion[detr] extra (transformers) is not installed"
    )
    tiny = dict(encoder_layers=1, d_model=32, encoder_hidden_dim=32, encoder_ffn_dim=64, decoder_ffn_dim=64,
                decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, num_denoising=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"num_queries=300 .* 64x64 input gives only 84 .* at least 128x128"):
        mf.build_detector("rt_detr", backbone="test_mscan", num_classes=3, image_size=64, **tiny)
    keep_ratio = mf.build_detector(
        "rt_detr", backbone="test_mscan", num_classes=3, image_size=None, min_size=64, max_size=64, **tiny
    ).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"at least 128x128 pixels. Raise min_size / max_size"):
        keep_ratio([torch.rand(3, 64, 64)])
    small = mf.build_detector("rt_detr", backbone="test_mscan", num_classes=3, image_size=64, num_queries=12, **tiny)
    with torch.no_grad(), pytest.raises(ValueError, match=r"image 1 of the list"):
        small.eval()([torch.rand(3, 64, 64), torch.full((3, 64, 64), float("inf"))])


# ---- --set key=nan ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_set_refuses_a_non_finite_number(value):
    with pytest.raises(ConfigError, match=rf"--set optim.lr={value}: .* is not a finite number"):
        load_config(None, [f"optim.lr={value}"])


def test_a_recipe_number_written_nan_is_refused(tmp_path):
    # YAML reads "lr: nan" (no dot) as the string "nan"; it must not become a float NaN unchecked.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  lr: nan\n")
    with pytest.raises(ConfigError, match="optim.lr is nan, which is not a finite number"):
        load_config(recipe, [])


# ---- a failed checkpoint write says what filled up and what is kept ---------------------------------------


def test_a_full_disk_names_the_checkpoint_that_is_still_good(tmp_path, monkeypatch):
    model = nn.Linear(4, 4)
    first = checkpointing.save_training_checkpoint(tmp_path, 1, model, {"history": []})
    (tmp_path / "checkpoints" / "latest.json").unlink()  # lost pointer: resume falls back to iter_0000001

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing, "_write_bytes", full_disk)
    with pytest.raises(CheckpointError, match=f"the previous checkpoint {first} is intact"):
        checkpointing.save_training_checkpoint(tmp_path, 2, model, {"history": []})
    monkeypatch.setattr(
        "msfusion.checkpoint.atomic_write", lambda path, write: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    )
    with pytest.raises(CheckpointError, match=f"no best checkpoint existed yet, and the training checkpoint {first}"):
        checkpointing.save_best(tmp_path, model, {})


def test_category_ids_that_differ_under_the_same_names_are_named_in_a_warning():
    from msfusion.engine.api import check_category_ids

    with pytest.warns(UserWarning, match="label 1: id 3 in the checkpoint, 7 in data.val"):
        check_category_ids([0, 3, 5], [0, 7, 5], "ckpt.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_category_ids([0, 3, 5], [0, 3, 5], "ckpt.safetensors")  # the same ids: silent
        check_category_ids(None, [0, 3, 5], "ckpt.safetensors")  # an older sidecar without ids: silent


def test_the_training_sidecar_records_the_category_ids_of_coco_style_data():
    from types import SimpleNamespace

    from msfusion.engine.trainer import Trainer

    trainer = SimpleNamespace(
        task=SimpleNamespace(name="detection"),
        train_set=SimpleNamespace(classes=["background", "a", "b"], label_to_category=[0, 3, 5], palette=[]),
        cfg={},
    )
    assert Trainer._metadata(trainer)["category_ids"] == [0, 3, 5]
