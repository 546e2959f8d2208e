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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from msfusion.data import build_panoptic_dataset
from msfusion.data.registry import dataset_types as registered_dataset_types
from msfusion.engine.detection import DetectionTask
from msfusion.engine.distributed import DistInfo
from msfusion.engine.panoptic_metrics import PanopticQuality

__all__ = [
    "PanopticTask",
    "build_panoptic_dataset",
    "evaluate_panoptic",
    "format_panoptic_metrics",
    "draw_panoptic",
    "predict_panoptic_files",
    "PANOPTIC_DATASET_TYPES",
]

#: The registered panoptic dataset types (a view of ``msfusion.data.registry``).
PANOPTIC_DATASET_TYPES = registered_dataset_types("panoptic")


class PanopticTask(DetectionTask):
    """Panoptic segmentation with Panoptic FPN (module doc)."""

    name = "panoptic"
    primary_metric = "PQ"
    dataset_example = "{type: coco_panoptic, images: DIR, annotations: FILE}"
    dataset_types = ", ".join(PANOPTIC_DATASET_TYPES)

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

    def evaluate(
        self,
        model: nn.Module,
        dataset: Any,
        cfg: Mapping[str, Any],
        device: torch.device,
        dist_info: DistInfo,
    ) -> dict[str, Any]:
        self.last_results = []
        return evaluate_panoptic(
            model,
            dataset,
            device=device,
            dist_info=dist_info,
            batch_size=max(1, cfg["data"]["batch_size"] // max(dist_info.world_size, 1)),
            num_workers=cfg["data"]["num_workers"],
            progress=cfg["train"]["progress"],
        )

    def write_outputs(self, metrics: Mapping[str, Any], out_dir: str | Path, stem: str) -> list[Path]:
        """``<stem>.json``: the PQ family, per class included."""
        from msfusion.checkpoint import atomic_write

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}.json"
        text = json.dumps(_json_safe(dict(metrics)), indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return [path]

    def format_metrics(self, metrics: Mapping[str, Any]) -> str:
        return format_panoptic_metrics(metrics)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    from msfusion.data.detection import collate_detection

    return collate_detection(batch)


@torch.no_grad()
def evaluate_panoptic(
    model: nn.Module,
    dataset: Any,
    *,
    device: torch.device | str = "cpu",
    dist_info: DistInfo | None = None,
    batch_size: int = 2,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """PQ, SQ, RQ (all / ``_th`` things / ``_st`` stuff, fractions), ``per_class`` and ``num_images``.

    The model's ``segments_info`` name classes by panoptic label (things 1..T,
    stuff T+1..T+S), as the dataset's ``load_panoptic`` does.
    """
    dist_info = dist_info or DistInfo()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    things = range(1, dataset.num_things + 1)
    stuff = range(dataset.num_things + 1, len(dataset.classes))
    pq = PanopticQuality(things, stuff, names=dict(enumerate(dataset.classes)))
    indices = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    bar = None
    if progress and dist_info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="eval", unit="img", dynamic_ncols=True, leave=False)
    position = 0
    try:
        for batch in loader:
            outputs = model([im.to(device) for im in batch["images"]])
            for output in outputs:
                gt = dataset.load_panoptic(indices[position])
                position += 1
                gt_segments = [{"id": s["id"], "category_id": s["label"], "iscrowd": s["iscrowd"]} for s in gt.segments]
                pq.update(
                    output["panoptic"].cpu().numpy(), output["segments_info"], gt.ids, gt_segments, gt.path
                )  # fmt: skip
            if bar is not None:
                bar.update(len(outputs))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if dist_info.distributed:
        import torch.distributed as dist

        gathered: list[Any] = [None] * dist_info.world_size
        dist.all_gather_object(gathered, pq.state())
        pq.reset()
        pq.merge(gathered)
    return pq.compute()


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

    Returns:
        The pictures written (``<stem>_panoptic.png``).
    """
    from PIL import Image

    from msfusion.data.coco_panoptic import id_to_rgb
    from msfusion.engine.predictor import iter_images

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = getattr(model, "num_things", 0) + getattr(model, "num_stuff_classes", 0) + 1
    classes = list(classes or [str(i) for i in range(total)])
    model.eval().to(device)
    written: list[Path] = []
    for _path, stem, array in iter_images(inputs, progress=progress, on_bad_file=on_bad_file):
        image = torch.from_numpy(np.require(array, requirements=["C", "W"])).permute(2, 0, 1).float() / 255.0
        output = model([image.to(device)])[0]
        ids = output["panoptic"].cpu().numpy()
        segments = output["segments_info"]
        picture = draw_panoptic(array, ids, segments, classes, palette)
        png = out_dir / f"{stem}_panoptic.png"
        Image.fromarray(picture).save(png)
        Image.fromarray(id_to_rgb(ids)).save(out_dir / f"{stem}_panoptic_ids.png")
        record = [{**s, "class": classes[int(s["category_id"])], "score": round(s["score"], 4)} for s in segments]
        (out_dir / f"{stem}_panoptic.json").write_text(json.dumps({"segments_info": record}, indent=1))
        written.append(png)
    return written
