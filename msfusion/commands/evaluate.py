"""``msfusion eval CONFIG --checkpoint PATH [--tta] [--mode whole|slide]``: aAcc, mIoU, mAcc, per-class table.

Each evaluation writes its own files, named by the checkpoint and the test
options (``best_eval_whole.json``, ``best_eval_slide_tta.json``, ...), and
records the checkpoint, the mode, the scales and the window it used, so a
second evaluation never overwrites the first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="evaluate a checkpoint on a recipe's validation set")
    p.add_argument("config", help="YAML recipe whose data.val and eval sections are used")
    p.add_argument("--checkpoint", required=True, help="weights (.safetensors of ours, or an official .pth)")
    p.add_argument("--tta", action="store_true", help="multi-scale (0.5-1.75) + flip test")
    p.add_argument("--mode", choices=("whole", "slide"), help="test mode (default: the recipe's eval.mode)")
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
        "--fast",
        action="store_true",
        help="segmentation: evaluate an inference-optimised copy (BatchNorm folding, channels-last; same "
        "outputs within 1e-4, see msfusion.optimize_for_inference)",
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


def run(args: argparse.Namespace) -> int:
    import torch

    from msfusion.checkpoint import load_checkpoint, read_metadata
    from msfusion.commands import checkpoint_file, output_folder
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
    cfg["model"]["pretrained"] = None
    model = build_model(cfg, task, dataset)
    load_checkpoint(model, args.checkpoint, strict=not args.no_strict)
    model.to(dist_info.device)
    if args.fast and cfg["task"] == "segmentation":
        from msfusion.engine.fast_inference import optimize_for_inference

        model = optimize_for_inference(model)
    with torch.no_grad():
        metrics = task.evaluate(model, dataset, cfg, dist_info.device, dist_info)
    if dist_info.is_main and callable(getattr(task, "write_outputs", None)):
        # Detection: COCO AP table, metrics JSON and the detections in COCO result format.
        paths = task.write_outputs(metrics, out, f"{Path(args.checkpoint).stem}_eval")
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
