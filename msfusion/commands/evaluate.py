"""``msfusion eval CONFIG --checkpoint PATH [--tta] [--mode whole|slide]``: the task's metrics and per-class table.

Segmentation: aAcc, mIoU, mAcc and per-class IoU / Acc; detection: COCO AP
and per-class AP; panoptic: PQ, SQ, RQ. Each evaluation writes its own files,
named by the checkpoint and the test options (``best_eval_whole.json``,
``best_eval_slide_tta.json``, ...), and records the checkpoint, the mode, the
scales and the window it used, so a second evaluation never overwrites the
first.

Before anything is scored, the checkpoint is held against the data: its
model name, its class count and its class names in label order (the sidecar's
``classes``; for COCO JSON the names in category-id order, so categories
renumbered between files are caught) must match ``data.val``, and its weights
must be finite. Names that differ only in case, spaces, ``_`` or ``-`` are
taken as the same with a warning; other names are refused
(``--ignore-class-names`` scores them anyway, for synonyms in the same order).
Test options that mean nothing for the task are refused, not ignored.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="evaluate a checkpoint on a recipe's validation set")
    p.add_argument("config", help="YAML recipe whose data.val and eval sections are used")
    p.add_argument("--checkpoint", required=True, help="weights (.safetensors of ours, or an official .pth)")
    p.add_argument(
        "--tta", action="store_true", help="segmentation: multi-scale (0.5-1.75) + flip test; detection: flip test"
    )
    p.add_argument(
        "--mode", choices=("whole", "slide"), help="segmentation test mode (default: the recipe's eval.mode)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set eval.crop_size=[512,512] (repeatable)",
    )
    p.add_argument(
        "--out",
        help="folder for the metrics JSON and per-class CSV (default: beside the checkpoint)",
    )
    p.add_argument(
        "--no-strict",
        action="store_true",
        help="load a checkpoint of another class count anyway: its classifier is dropped and the new one is "
        "untrained, so the scores only measure the rest (fine-tune with train --set model.pretrained=PATH instead)",
    )
    p.add_argument(
        "--ignore-class-names",
        action="store_true",
        help="score a checkpoint whose class names differ from data.val's (synonyms of the same classes in the "
        "same order) with a warning instead of refusing it",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="segmentation and detection: evaluate an inference-optimised copy (BatchNorm folding, channels-last; "
        "same outputs within 1e-4, see msfusion.optimize_for_inference)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="auto, cpu or cuda (default: the recipe's train.device); under torchrun each rank takes its GPU",
    )
    p.set_defaults(func=run)
    return p


def _saved_num_classes(meta: dict) -> int | None:
    """The class count a checkpoint's sidecar records (its model kwargs, else its class list)."""
    kwargs = (meta.get("model") or {}).get("kwargs") or {}
    if isinstance(kwargs.get("num_classes"), int):
        return kwargs["num_classes"]
    classes = meta.get("classes")
    return len(classes) if classes else None


def _same_name(name: str) -> str:
    """A class name with case, spacing, ``_`` and ``-`` removed: names equal here differ only in spelling."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def check_class_names(
    saved: Sequence[str] | None, wanted: Sequence[str] | None, checkpoint: str, ignore: bool = False
) -> None:
    """Refuse to score a checkpoint on data whose classes (same count) have other names or another order.

    Label ``i`` of the model is scored as the dataset's class ``i``: with other
    names (or the same names renumbered) every score is silently wrong, e.g.
    a perfect detector scores AP 0.

    Args:
        saved: the checkpoint's class names (its sidecar's ``classes``), label order.
        wanted: the evaluation data's class names, label order.
        checkpoint: the checkpoint path, for the message.
        ignore: warn instead of refusing (names known to be synonyms).

    Raises:
        ValueError: the names differ beyond case, spacing, ``_`` and ``-`` (the
            message lists both and the fixes).
    """
    if not saved or not wanted or len(saved) != len(wanted):
        return  # no record, or another class count (refused or allowed by --no-strict before this)
    saved, wanted = [str(c) for c in saved], [str(c) for c in wanted]
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(saved, wanted, strict=True)) if a != b]
    if not differ:
        return
    shown = "; ".join(f"label {i}: {a!r} in the checkpoint, {b!r} in data.val" for i, a, b in differ[:5])
    shown += f"; and {len(differ) - 5} more" if len(differ) > 5 else ""
    if all(_same_name(a) == _same_name(b) for _, a, b in differ):
        warnings.warn(
            f"{checkpoint}: class names differ from data.val's only in case, spaces, '_' or '-' ({shown}); "
            "scored as the same classes",
            stacklevel=2,
        )
        return
    if sorted(map(_same_name, saved)) == sorted(map(_same_name, wanted)):
        reason = "the same classes in another order (categories numbered differently)"
    else:
        reason = "other class names"
    message = (
        f"{checkpoint} was trained on {reason} than data.val has ({shown}).\n"
        f"  checkpoint: {saved[:20]}{' ...' if len(saved) > 20 else ''}\n"
        f"  data.val:   {wanted[:20]}{' ...' if len(wanted) > 20 else ''}\n"
        "Label i would be scored as data.val's class i, so every score would be wrong. Evaluate on data with the "
        "checkpoint's classes in its order (for COCO JSON: the same category names, their ids in the same order), "
        "or fine-tune it on this data first (msfusion train CONFIG --set model.pretrained=CHECKPOINT); if the names "
        "are synonyms of the same classes in the same order, pass --ignore-class-names."
    )
    if not ignore:
        raise ValueError(message)
    warnings.warn(message, stacklevel=2)


def _check_test_options(task: str, cfg: dict, fast: bool) -> None:
    """Refuse test options that the task would otherwise ignore silently."""
    if task == "detection":
        from msfusion.engine.detection import detection_test_flip

        detection_test_flip(cfg["eval"])  # slide, multi-scale, flip off: refused with the reason
    elif task == "panoptic":
        given = [name for name, on in (("--tta", cfg["eval"]["tta"]), ("--mode slide", cfg["eval"]["mode"] == "slide"),
                                        ("--fast", fast)) if on]  # fmt: skip
        if given:
            raise ValueError(
                f"{', '.join(given)}: not implemented for panoptic segmentation (Panoptic FPN resizes each whole "
                "image itself, and its panoptic merge has no test-time augmentation); evaluate without them"
            )


def run(args: argparse.Namespace) -> int:
    import torch

    from msfusion.checkpoint import load_checkpoint, read_metadata
    from msfusion.commands import checkpoint_file, output_folder
    from msfusion.engine.checkpointing import check_finite_weights
    from msfusion.engine.config import load_config
    from msfusion.engine.distributed import init_distributed
    from msfusion.engine.metrics import format_metrics_table, save_metrics
    from msfusion.engine.tasks import build_task
    from msfusion.engine.trainer import build_model

    checkpoint_file(args.checkpoint)
    out = output_folder(args.out) if args.out else Path(args.checkpoint).parent
    overrides = list(args.overrides)
    if args.tta:
        overrides.append("eval.tta=true")
    if args.mode:
        overrides.append(f"eval.mode={args.mode}")
    if args.no_progress:
        overrides.append("train.progress=false")
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_config(args.config, overrides)
    _check_test_options(cfg["task"], cfg, args.fast)
    dist_info = init_distributed(cfg["train"]["device"])
    task = build_task(cfg["task"])
    dataset = task.build_eval_dataset(cfg)
    if cfg["data"]["check_labels"] and callable(getattr(dataset, "check_labels", None)):
        dataset.check_labels("data.val")
    meta = read_metadata(args.checkpoint)
    saved = meta.get("model") or {}
    if saved.get("name") and saved["name"] != cfg["model"]["name"]:
        raise ValueError(
            f"{args.checkpoint} holds a {saved['name']!r} model but the recipe builds {cfg['model']['name']!r}"
        )
    saved_classes = _saved_num_classes(meta)
    wanted = getattr(dataset, "num_classes", None)
    if saved_classes and wanted and saved_classes != wanted and not args.no_strict:
        raise ValueError(
            f"{args.checkpoint} was trained for {saved_classes} classes but data.val has {wanted}. Evaluate it "
            "with a recipe of its own dataset; or fine-tune it on this one first (msfusion train CONFIG --set "
            "model.pretrained=CHECKPOINT); or pass --no-strict to score it with an untrained classifier."
        )
    check_class_names(meta.get("classes"), getattr(dataset, "classes", None), args.checkpoint, args.ignore_class_names)
    cfg["model"]["pretrained"] = None
    model = build_model(cfg, task, dataset)
    load_checkpoint(model, args.checkpoint, strict=not args.no_strict)
    check_finite_weights(model, args.checkpoint)
    model.to(dist_info.device)
    if args.fast and cfg["task"] in ("segmentation", "detection"):
        from msfusion.engine.fast_inference import optimize_for_inference

        model = optimize_for_inference(model)
    with torch.no_grad():
        metrics = task.evaluate(model, dataset, cfg, dist_info.device, dist_info)
    if dist_info.is_main and callable(getattr(task, "write_outputs", None)):
        # Detection: COCO AP table, metrics JSON and the detections in COCO result format.
        stem = f"{Path(args.checkpoint).stem}_eval" + ("_tta" if cfg["eval"]["tta"] else "")
        paths = task.write_outputs(metrics, out, stem)
        print(task.format_metrics(metrics))
        print(f"saved {' and '.join(str(p) for p in paths)}")
    elif dist_info.is_main:
        ecfg = cfg["eval"]
        setting = {"mode": ecfg["mode"], "tta": ecfg["tta"]}
        if ecfg["mode"] == "slide":
            setting.update(crop_size=list(ecfg["crop_size"]), stride=list(ecfg["stride"]))
        if ecfg["tta"]:
            setting.update(scales=list(ecfg["scales"]), flip=ecfg["flip"])
        confusion = metrics.pop("confusion_matrix", None)
        record = {"checkpoint": str(Path(args.checkpoint).resolve()), "eval": setting, **metrics}
        stem = f"{Path(args.checkpoint).stem}_eval_{ecfg['mode']}" + ("_tta" if ecfg["tta"] else "")
        json_path, csv_path = save_metrics(record, out, stem)
        print(format_metrics_table(metrics))
        print(json.dumps({k: metrics[k] for k in ("aAcc", "mIoU", "mAcc")}))
        saved = [str(json_path), str(csv_path)]
        if confusion is not None:
            from msfusion.engine.visualize import plot_confusion_matrix

            names = [r["class"] for r in metrics["per_class"]]
            saved.append(str(plot_confusion_matrix(confusion, names, Path(out) / f"{stem}_confusion.png")))
        print(f"saved {', '.join(saved)}")
    return 0
