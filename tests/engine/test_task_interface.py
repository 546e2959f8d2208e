"""What the Task base class does for every task: the prediction call and the demo summary."""

from __future__ import annotations

import pytest

from msfusion.engine.task_base import PredictOptions
from msfusion.engine.tasks import build_task


def test_predict_files_gives_the_writer_the_sidecar_run_options_and_the_task_own():
    from msfusion.engine.segmentation import SegmentationTask

    calls = []

    def writer(model, inputs, out_dir, **kwargs):
        calls.append((model, inputs, out_dir, kwargs))
        return ["written"]

    class Recording(SegmentationTask):
        def file_writer(self, meta, options):
            return writer, {"own": options.tta}

    options = PredictOptions(tta=True, device="cuda:1", on_bad_file="skip", progress=False)
    meta = {"classes": ["a", "b"], "palette": []}
    assert Recording().predict_files("model", ["x.png"], "out", meta, options) == ["written"]
    assert calls == [
        (
            "model",
            ["x.png"],
            "out",
            # An empty palette means "none given": the writer picks its default colours.
            dict(classes=["a", "b"], palette=None, device="cuda:1", on_bad_file="skip", progress=False, own=True),
        )
    ]


def test_each_task_names_its_writer_and_its_own_options():
    from msfusion.engine.detection import predict_detection_files
    from msfusion.engine.panoptic import predict_panoptic_files
    from msfusion.engine.segmentation_predict import predict_files

    options = PredictOptions(tta=True, slide=(32, 16))
    recipe = {"eval": {"mode": "whole", "scales": [1.0]}, "data": {"eval_scale": [64, 32]}}
    writer, own = build_task("segmentation").file_writer({"config": recipe}, options)
    assert writer is predict_files
    assert own == {
        "eval_cfg": {"mode": "slide", "scales": [1.0], "tta": True, "crop_size": [32, 32], "stride": [16, 16]},
        "resize": [64, 32],  # the recipe's test scale unless --resize says otherwise
    }
    _, own = build_task("segmentation").file_writer({"config": recipe}, PredictOptions(resize=None))
    assert own == {"eval_cfg": {"mode": "whole", "scales": [1.0]}, "resize": None}
    assert build_task("detection").file_writer({}, options) == (predict_detection_files, {"tta": True})
    assert build_task("panoptic").file_writer({}, PredictOptions()) == (predict_panoptic_files, {})


RESULT = {"table": "TABLE", "train_time_s": 75.4, "wall_time_s": 82.6, "out_dir": "report"}


@pytest.mark.parametrize(
    ("task", "metrics", "score"),
    [
        ("segmentation", {"mIoU": 0.80123}, "mIoU 80.12 %"),
        ("detection", {"bbox_AP": 0.455, "bbox_AP50": 0.708}, "box AP 45.5, AP50 70.8"),
    ],
)
def test_describe_demo_prints_table_score_times_and_folder(task, metrics, score):
    text = build_task(task).describe_demo({**RESULT, "metrics": {**metrics, "num_images": 100}})
    assert text == (
        f"TABLE\n{score} on 100 held-out images; training 75 s, total 83 s\nreport: report (start with README.txt)"
    )
