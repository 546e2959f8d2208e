"""``msfusion eval CONFIG --checkpoint PATH [--tta]``: aAcc, mIoU, mAcc and a per-class table."""

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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--out",
        help="folder for metrics.json and metrics_per_class.csv (default: beside the checkpoint)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from msfusion.checkpoint import load_checkpoint, read_metadata
    from msfusion.engine.config import load_config
    from msfusion.engine.distributed import init_distributed
    from msfusion.engine.metrics import format_metrics_table, save_metrics
    from msfusion.engine.tasks import build_task
    from msfusion.engine.trainer import build_model

    overrides = list(args.overrides)
    if args.tta:
        overrides.append("eval.tta=true")
    if args.mode:
        overrides.append(f"eval.mode={args.mode}")
    if args.no_progress:
        overrides.append("train.progress=false")
    cfg = load_config(args.config, overrides)
    dist_info = init_distributed(cfg["train"]["device"])
    task = build_task(cfg["task"])
    dataset = task.build_eval_dataset(cfg)
    saved = read_metadata(args.checkpoint).get("model") or {}
    if saved.get("name") and saved["name"] != cfg["model"]["name"]:
        raise ValueError(
            f"{args.checkpoint} holds a {saved['name']!r} model but the recipe builds {cfg['model']['name']!r}"
        )
    cfg["model"]["pretrained"] = None
    model = build_model(cfg, task, dataset)
    load_checkpoint(model, args.checkpoint, strict=True)
    model.to(dist_info.device)
    with torch.no_grad():
        metrics = task.evaluate(model, dataset, cfg, dist_info.device, dist_info)
    if dist_info.is_main:
        out = Path(args.out) if args.out else Path(args.checkpoint).parent
        stem = Path(args.checkpoint).stem + ("_tta" if args.tta else "") + "_eval"
        json_path, csv_path = save_metrics(metrics, out, stem)
        print(format_metrics_table(metrics))
        print(json.dumps({k: metrics[k] for k in ("aAcc", "mIoU", "mAcc")}))
        print(f"saved {json_path} and {csv_path}")
    return 0
