"""The panoptic task: Panoptic FPN losses, PQ evaluation, panoptic pictures with a legend.

``task: panoptic`` in a recipe selects :class:`PanopticTask`; the trainer,
checkpoints, resume, DDP and mixed precision are the shared ones. A recipe::

    task: panoptic
    model: {name: panoptic_fpn_r50_fine}         # or compose: {backbone: resnet50, fine: true, ...}
    data:
      train: {type: coco_panoptic, images: coco/train2017,
              annotations: coco/annotations/panoptic_train2017.json, transforms: {kind: train, scales: [640]}}
      val: {type: coco_panoptic, images: coco/val2017, annotations: coco/annotations/panoptic_val2017.json}

- **Loss**: Panoptic FPN's (Kirillov et al., arXiv 1901.02446, Sec. 3.3):
  the Mask R-CNN losses plus 0.5 x the semantic cross-entropy; every term
  is logged.
- **Evaluation**: PQ, SQ, RQ over all, thing and stuff classes and per class
  (Kirillov et al., "Panoptic Segmentation", arXiv 1801.00868, Sec. 4;
  ``msfusion.engine.panoptic_metrics``), on each image's own pixels.
  ``msfusion eval`` also writes the predictions in the COCO panoptic result
  format (``<ckpt>_eval_panoptic.json`` and the PNG folder
  ``<ckpt>_eval_panoptic/``, category ids of the dataset's file), which the
  reference ``panopticapi.evaluation.pq_compute`` and the COCO test-dev
  server read.
- **Prediction**: ``<stem>_panoptic.png`` (segments over the image, thing
  instances in shades of their class colour, segment borders, a legend of
  the classes present), ``<stem>_panoptic_ids.png`` (the COCO panoptic PNG
  encoding, ``id = R + 256 G + 256^2 B``) and ``<stem>_panoptic.json``
  (``segments_info`` with class names and scores).

Under DDP every rank evaluates its share of the images and the PQ sums are
gathered, so every rank returns the same metrics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msfusion.data import build_panoptic_dataset
from msfusion.data.registry import datasets as registered_datasets
from msfusion.engine.detection import DetectionTask
from msfusion.engine.distributed import DistInfo, all_gather_objects
from msfusion.engine.evaluation import DatasetEvaluator, evaluate, shard_indices, shard_loader
from msfusion.engine.panoptic_metrics import PanopticQuality
from msfusion.engine.task_base import PredictOptions
from msfusion.engine.tasks import register_task

__all__ = [
    "PanopticTask",
    "PanopticEvaluator",
    "build_panoptic_dataset",
    "evaluate_panoptic",
    "format_panoptic_metrics",
    "draw_panoptic",
    "predict_panoptic_files",
    "PANOPTIC_DATASET_TYPES",
]

#: The registered panoptic datasets by type: a read-only live view of ``msfusion.data.registry``
#: (``msfusion.data.DATASET_TYPES`` is the segmentation one), so later registrations show.
PANOPTIC_DATASET_TYPES = registered_datasets("panoptic")


@register_task
class PanopticTask(DetectionTask):
    """Panoptic segmentation with Panoptic FPN (module doc)."""

    name = "panoptic"
    primary_metric = "PQ"
    dataset_example = "{type: coco_panoptic, images: DIR, annotations: FILE}"
    demo_dir = None
    demo_entry = None
    predict_refusals = {
        "--tta": "the panoptic merge has no test-time augmentation",
        "--slide": "Panoptic FPN resizes each whole image itself",
        "--resize": "Panoptic FPN resizes each image itself (its min_size / max_size)",
        "--fast": "not implemented for panoptic models",
    }

    @staticmethod
    def compose(**kwargs: Any) -> nn.Module:
        """``model.compose`` of a panoptic recipe: ``build_panoptic_fpn(backbone=..., fine=..., ...)``."""
        from msfusion.models.meta_arch.panoptic_fpn import build_panoptic_fpn

        arch = kwargs.pop("arch", "panoptic_fpn")
        if arch not in ("panoptic_fpn", "mask_rcnn"):
            raise ValueError(f"a panoptic recipe composes Panoptic FPN (arch: panoptic_fpn), got arch {arch!r}")
        return build_panoptic_fpn(**kwargs)

    def build_dataset(self, description: dict[str, Any]) -> Any:
        return build_panoptic_dataset(description)

    def model_kwargs(self, dataset: Any) -> dict[str, Any]:
        return {"num_classes": dataset.num_classes, "num_stuff_classes": dataset.num_stuff_classes}

    def check_test_options(self, eval_cfg: Mapping[str, Any], fast: bool = False) -> None:
        given = [name for name, on in (("--tta", eval_cfg["tta"]), ("--mode slide", eval_cfg["mode"] == "slide"),
                                        ("--fast", fast)) if on]  # fmt: skip
        if given:
            raise ValueError(
                f"{', '.join(given)}: not implemented for panoptic segmentation (Panoptic FPN resizes each whole "
                "image itself, and its panoptic merge has no test-time augmentation); evaluate without them"
            )

    def evaluator(self, dataset: Any, cfg: Mapping[str, Any], dist_info: DistInfo) -> PanopticEvaluator:
        return PanopticEvaluator(dataset, dist_info)

    def finish_evaluation(self, evaluator: Any) -> None:
        self.last_results = evaluator.results  # the predictions, for the COCO panoptic result files

    def write_eval_outputs(
        self, metrics: dict[str, Any], cfg: Mapping[str, Any], checkpoint: str | Path, out_dir: str | Path
    ) -> list[Path]:
        """``<ckpt>_eval.json`` (the PQ family, per class included) and the COCO panoptic result files.

        ``<ckpt>_eval_panoptic.json`` holds ``{"annotations": [{"image_id",
        "file_name", "segments_info": [{"id", "category_id", "isthing",
        "score", "area"}]}]}`` and ``<ckpt>_eval_panoptic/`` one PNG per image
        (``id = R + 256 G + 256^2 B``), as ``panopticapi`` expects.
        """
        from msfusion.checkpoint import atomic_write
        from msfusion.engine.results import write_json

        out_dir = Path(out_dir)
        stem = f"{Path(checkpoint).stem}_eval"
        folder = out_dir / f"{stem}_panoptic"
        metrics_file = write_json(out_dir / f"{stem}.json", metrics)
        folder.mkdir(parents=True, exist_ok=True)
        annotations, used = [], set()
        for result in self.last_results:
            name = result["file_name"]
            if name in used:  # two images of one stem (from two folders): their ids keep the PNGs apart
                name = f"{Path(name).stem}_{result['image_id']}.png"
            used.add(name)
            atomic_write(folder / name, lambda tmp, data=result["png"]: Path(tmp).write_bytes(data))
            annotations.append({**{k: v for k, v in result.items() if k != "png"}, "file_name": name})
        results_file = write_json(out_dir / f"{stem}_panoptic.json", {"annotations": annotations}, indent=None)
        return [metrics_file, results_file, folder]

    def format_metrics(self, metrics: Mapping[str, Any]) -> str:
        return format_panoptic_metrics(metrics)

    def file_writer(
        self, meta: Mapping[str, Any], options: PredictOptions
    ) -> tuple[Callable[..., list[Any]], dict[str, Any]]:
        return predict_panoptic_files, {}

    def describe_predictions(self, written: Sequence[Path], out_dir: str | Path) -> str:
        return f"wrote {len(written)} panoptic PNGs with a legend (and id PNGs, segment JSONs) to {out_dir}"


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    from msfusion.data.detection import collate_detection

    return collate_detection(batch)


class PanopticEvaluator(DatasetEvaluator):
    """PQ, SQ, RQ of panoptic outputs against the dataset's panoptic ground truth (module doc).

    The loader must yield this rank's share of ``dataset`` in order
    (:func:`~msfusion.engine.evaluation.shard_loader` with the same
    ``dist_info``): the ground truth of the i-th image processed is
    ``dataset.load_panoptic(shard_indices(len(dataset), dist_info)[i])``.
    The model's ``segments_info`` name classes by panoptic label (things
    1..T, stuff T+1..T+S), as the dataset's ``load_panoptic`` does. Under DDP
    the PQ sums of every rank are merged. ``results`` keeps each image's
    prediction in the COCO panoptic result format (its PNG encoded, category
    ids of the dataset's file), gathered from every rank.
    """

    def __init__(self, dataset: Any, dist_info: DistInfo | None = None) -> None:
        self.dataset = dataset
        self.dist_info = dist_info or DistInfo()
        self.indices = shard_indices(len(dataset), self.dist_info)
        self.reset()

    def reset(self) -> None:
        things = range(1, self.dataset.num_things + 1)
        stuff = range(self.dataset.num_things + 1, len(self.dataset.classes))
        self.pq = PanopticQuality(things, stuff, names=dict(enumerate(self.dataset.classes)))
        self.position = 0
        self.results: list[dict[str, Any]] = []

    def run(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> list[dict[str, Any]]:
        return model([im.to(device) for im in batch["images"]])

    def process(self, batch: Mapping[str, Any], outputs: list[dict[str, Any]]) -> None:
        for output in outputs:
            gt = self.dataset.load_panoptic(self.indices[self.position])
            self.position += 1
            gt_segments = [{"id": s["id"], "category_id": s["label"], "iscrowd": s["iscrowd"]} for s in gt.segments]
            ids = output["panoptic"].cpu().numpy()
            self.pq.update(ids, output["segments_info"], gt.ids, gt_segments, gt.path)
            self.results.append(self._result(ids, output["segments_info"], gt))

    def _result(self, ids: np.ndarray, segments: Sequence[Mapping[str, Any]], gt: Any) -> dict[str, Any]:
        """One image's prediction as a COCO panoptic result annotation, with its PNG's bytes under ``png``."""
        import io

        from PIL import Image

        from msfusion.data.coco_panoptic import id_to_rgb

        buffer = io.BytesIO()
        Image.fromarray(id_to_rgb(ids)).save(buffer, format="PNG")
        category_of = self.dataset.label_to_category
        info = [
            {"id": int(s["id"]), "category_id": int(category_of[int(s["category_id"])]),
             "isthing": int(bool(s["isthing"])), "score": float(s["score"]), "area": int(s["area"])}
            for s in segments
        ]  # fmt: skip
        name = f"{Path(gt.path).stem or gt.image_id}.png"  # COCO: the image's stem, as the ground truth's PNG
        return {"image_id": int(gt.image_id), "file_name": name, "segments_info": info, "png": buffer.getvalue()}

    def evaluate(self) -> dict[str, Any]:
        if self.dist_info.distributed:
            gathered = all_gather_objects((self.pq.state(), self.results))
            self.pq.reset()
            self.pq.merge([state for state, _ in gathered])
            self.results = [result for _, results in gathered for result in results]
        return self.pq.compute()


def evaluate_panoptic(
    model: nn.Module,
    dataset: Any,
    *,
    device: torch.device | str = "cpu",
    amp: str = "none",
    dist_info: DistInfo | None = None,
    batch_size: int = 2,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """PQ, SQ, RQ (all / ``_th`` things / ``_st`` stuff, fractions), ``per_class`` and ``num_images``.

    The shared loop (:func:`msfusion.engine.evaluation.evaluate`, with
    autocast for ``amp``) and a :class:`PanopticEvaluator`.
    """
    dist_info = dist_info or DistInfo()
    loader = shard_loader(dataset, dist_info, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    evaluator = PanopticEvaluator(dataset, dist_info)
    return evaluate(model, loader, evaluator, device=device, amp=amp, progress=progress, dist_info=dist_info)


def _cell(value: float) -> str:
    return "  n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:5.1f}"


def format_panoptic_metrics(metrics: Mapping[str, Any]) -> str:
    """The PQ table of the panoptic papers: rows All / Things / Stuff, columns PQ SQ RQ (x100) and N."""
    lines = ["          PQ     SQ     RQ    N"]
    for row, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        cells = "  ".join(f"{_cell(metrics.get(f'{k}{suffix}')):>5}" for k in ("PQ", "SQ", "RQ"))
        lines.append(f"{row:<7}  {cells}  {metrics.get(f'N{suffix}', 0):>3}")
    return "\n".join(lines)


def _class_color(label: int, palette: Sequence[Sequence[int]] | None) -> np.ndarray:
    if palette is not None and label < len(palette):
        return np.asarray(palette[label], dtype=np.float32)
    from msfusion.engine.detection import _color

    return np.asarray(_color(label), dtype=np.float32)


def draw_panoptic(
    image: np.ndarray,
    ids: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.6,
) -> np.ndarray:
    """(H, W, 3) uint8 image + panoptic ids -> (H, W + legend, 3) uint8 picture.

    Stuff segments take their class colour; thing instances take shades of
    their class colour (so neighbours of one class stay apart); void is left
    as the image; segment borders are drawn in white; a legend lists the
    classes present.
    """
    from msfusion.engine.visualize import add_legend

    colors = np.zeros((*ids.shape, 3), dtype=np.float32)
    rng = np.random.default_rng(0)
    labels = []
    for seg in segments:
        label = int(seg["category_id"])
        color = _class_color(label, palette)
        if seg.get("isthing", False):
            color = np.clip(color * rng.uniform(0.55, 1.0) + rng.uniform(-25, 25, 3), 0, 255)
        colors[ids == int(seg["id"])] = color
        labels.append(label)
    labelled = (ids > 0)[..., None]
    picture = np.where(labelled, image * (1 - alpha) + colors * alpha, image)
    border = np.zeros(ids.shape, dtype=bool)
    border[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    border[1:, :] |= ids[1:, :] != ids[:-1, :]
    picture[border] = 255
    legend_palette = [tuple(int(c) for c in _class_color(k, palette)) for k in range(len(classes))]
    present = sorted(set(labels))
    return np.asarray(add_legend(picture.round().astype(np.uint8), list(classes), legend_palette, present))


@torch.no_grad()
def predict_panoptic_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    device: str | torch.device = "cpu",
    on_bad_file: str = "raise",
    progress: bool = True,
) -> list[Path]:
    """Panoptic maps of image files: ``<stem>_panoptic.png``, ``<stem>_panoptic_ids.png``, ``<stem>_panoptic.json``.

    Unreadable files and ``on_bad_file``: as :func:`~msfusion.engine.image_files.write_predictions`.

    Returns:
        The pictures written (``<stem>_panoptic.png``).
    """
    from PIL import Image

    from msfusion.data.coco_panoptic import id_to_rgb
    from msfusion.engine.image_files import write_predictions

    total = getattr(model, "num_things", 0) + getattr(model, "num_stuff_classes", 0) + 1
    classes = list(classes or [str(i) for i in range(total)])
    model.eval().to(device)

    def write_one(array: np.ndarray, _path: Path, prefix: Path) -> Path:
        image = torch.from_numpy(np.require(array, requirements=["C", "W"])).permute(2, 0, 1).float() / 255.0
        output = model([image.to(device)])[0]
        ids = output["panoptic"].cpu().numpy()
        segments = output["segments_info"]
        picture = draw_panoptic(array, ids, segments, classes, palette)
        png = Path(f"{prefix}_panoptic.png")
        Image.fromarray(picture).save(png)
        Image.fromarray(id_to_rgb(ids)).save(Path(f"{prefix}_panoptic_ids.png"))
        record = [{**s, "class": classes[int(s["category_id"])], "score": round(s["score"], 4)} for s in segments]
        Path(f"{prefix}_panoptic.json").write_text(json.dumps({"segments_info": record}, indent=1))
        return png

    return write_predictions(inputs, out_dir, write_one, on_bad_file=on_bad_file, progress=progress)
