"""The engine's public face: ``msfusion.train``, ``msfusion.evaluate``, ``msfusion.predict``.

Each is what the command of the same name does, callable from Python and
task-neutral: the task (segmentation, detection, panoptic) is read once from
the recipe's ``task`` key or the checkpoint sidecar's, and looked up with
:func:`~msfusion.engine.task_base.get_task`; everything task-specific happens
in that :class:`~msfusion.engine.task_base.Task`.

A recipe is a YAML path or a mapping with the same keys. Keyword sections
(``schedule={"iters": 20}``) are merged into it, and ``overrides`` are
``key.sub=value`` strings as ``--set`` takes them; both are checked against
the recipe schema (unknown keys fail with a did-you-mean).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Evaluation",
    "Predictions",
    "check_category_ids",
    "check_class_names",
    "evaluate",
    "predict",
    "resolve_recipe",
    "train",
]


def resolve_recipe(
    recipe: str | Path | Mapping[str, Any], overrides: Iterable[str] = (), **sections: Any
) -> dict[str, Any]:
    """The full, validated recipe: ``recipe`` (a YAML path or a mapping), then ``sections``, then ``overrides``.

    Raises:
        FileNotFoundError: no such YAML file.
        ConfigError: unknown keys (with a did-you-mean), bad values.
    """
    from msfusion.engine.config import apply_overrides, merge_config, read_recipe, validate_config

    raw = read_recipe(recipe) if isinstance(recipe, (str, Path)) else dict(recipe)
    return validate_config(apply_overrides(merge_config(raw, sections), overrides))


def train(
    recipe: str | Path | Mapping[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    overrides: Iterable[str] = (),
    **sections: Any,
) -> dict[str, Any]:
    """Train the recipe's model on its data (one process, or data-parallel under ``torchrun``).

    Example::

        import msfusion as mf

        summary = mf.train("configs/demo_shapes.yaml", schedule={"iters": 20}, train={"work_dir": "runs/demo"})
        summary["best"]            # {"metric": "mIoU", "value": ..., "step": ...}

    Args:
        recipe: a YAML recipe path or a mapping of recipe keys.
        resume: continue the run in ``train.work_dir``.
        overwrite: delete an earlier run in ``train.work_dir`` first (without
            it, or ``resume``, an earlier run stops the call).
        overrides: ``key.sub=value`` strings, as ``msfusion train --set``.
        **sections: recipe sections merged into ``recipe`` (``optim={"lr": 1e-4}``).

    Returns:
        The trainer's summary: ``step``, ``best``, ``metrics``, ``history``,
        ``work_dir``, checkpoints and times.
    """
    from msfusion.engine.trainer import train as run_training

    return run_training(resolve_recipe(recipe, overrides, **sections), resume=resume, overwrite=overwrite)


@dataclass
class Evaluation:
    """What :func:`evaluate` measured.

    Attributes:
        task: the task name.
        metrics: the task's metrics (fractions; NaN where undefined).
        text: the table ``msfusion eval`` prints.
        files: the files written (none without ``out``, or on ranks other than 0).
    """

    task: str
    metrics: dict[str, Any]
    text: str
    files: list[Path] = field(default_factory=list)


def _saved_num_classes(meta: Mapping[str, Any]) -> int | None:
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
    saved: Sequence[str] | None, wanted: Sequence[str] | None, checkpoint: str | Path, ignore: bool = False
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
        return  # no record, or another class count (refused or allowed by strict=False before this)
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
            stacklevel=3,
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
    warnings.warn(message, stacklevel=3)


def check_category_ids(saved: Sequence[int] | None, wanted: Sequence[int] | None, checkpoint: str | Path) -> None:
    """Warn when the checkpoint's COCO category ids differ from the evaluation data's (same class names).

    Results are written with the evaluation data's own ids (label ``i`` becomes
    ``data.val``'s category of label ``i``), so scores stay right when the
    names (checked first) agree; the warning says the files number their
    categories differently, which matters to anyone comparing result files.
    """
    if not saved or wanted is None or len(saved) != len(wanted):
        return
    wanted = [int(c) for c in wanted]
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(saved, wanted, strict=True)) if int(a) != b]
    if differ:
        shown = "; ".join(f"label {i}: id {a} in the checkpoint, {b} in data.val" for i, a, b in differ[:5])
        warnings.warn(
            f"{checkpoint}: the category ids differ from data.val's ({shown}{'; ...' if len(differ) > 5 else ''}) "
            "while the class names agree; results are written with data.val's ids",
            stacklevel=3,
        )


def evaluate(
    recipe: str | Path | Mapping[str, Any],
    checkpoint: str | Path,
    *,
    out: str | Path | None = None,
    strict: bool = True,
    ignore_class_names: bool = False,
    fast: bool = False,
    overrides: Iterable[str] = (),
    **sections: Any,
) -> Evaluation:
    """Score a checkpoint on its recipe's validation set (``data.val``) with the recipe's test options.

    Before anything is scored, the checkpoint is held against the data: its
    model name, class count and class names (in label order) must match
    ``data.val``, and its weights must be finite. Test options that mean
    nothing for the task are refused, not ignored.

    Example::

        import msfusion as mf

        result = mf.evaluate("configs/demo_shapes.yaml", "work_dirs/demo/checkpoints/best.safetensors",
                             eval={"mode": "slide", "tta": True})
        print(result.text)
        result.metrics["mIoU"]

    Args:
        recipe: a YAML recipe path or a mapping of recipe keys.
        checkpoint: the weights (a ``.safetensors`` of ours with its sidecar, or an official file).
        out: folder for the task's metric files (none written when None).
        strict: refuse a checkpoint of another class count (False: score it
            with an untrained classifier).
        ignore_class_names: warn instead of refusing class names that differ.
        fast: evaluate an inference-optimised copy (:func:`msfusion.optimize_for_inference`).
        overrides: ``key.sub=value`` strings, as ``msfusion eval --set``.
        **sections: recipe sections merged into ``recipe`` (``eval={"tta": True}``).

    Returns:
        An :class:`Evaluation`; under DDP every rank gets the same metrics and rank 0 writes the files.
    """
    import torch

    from msfusion.checkpoint import load_checkpoint, read_metadata
    from msfusion.engine.checkpointing import check_finite_weights
    from msfusion.engine.distributed import init_distributed
    from msfusion.engine.tasks import build_task
    from msfusion.engine.trainer import build_model

    cfg = resolve_recipe(recipe, overrides, **sections)
    task = build_task(cfg["task"])
    task.check_test_options(cfg["eval"], fast)
    dist_info = init_distributed(cfg["train"]["device"])
    dataset = task.build_eval_dataset(cfg)
    if cfg["data"]["check_labels"] and callable(getattr(dataset, "check_labels", None)):
        dataset.check_labels("data.val")
    meta = read_metadata(checkpoint)
    saved = meta.get("model") or {}
    if saved.get("name") and saved["name"] != cfg["model"]["name"]:
        raise ValueError(f"{checkpoint} holds a {saved['name']!r} model but the recipe builds {cfg['model']['name']!r}")
    saved_classes = _saved_num_classes(meta)
    wanted = getattr(dataset, "num_classes", None)
    if saved_classes and wanted and saved_classes != wanted and strict:
        raise ValueError(
            f"{checkpoint} was trained for {saved_classes} classes but data.val has {wanted}. Evaluate it "
            "with a recipe of its own dataset; or fine-tune it on this one first (msfusion train CONFIG --set "
            "model.pretrained=CHECKPOINT); or pass --no-strict to score it with an untrained classifier."
        )
    check_class_names(meta.get("classes"), getattr(dataset, "classes", None), checkpoint, ignore_class_names)
    check_category_ids(meta.get("category_ids"), getattr(dataset, "label_to_category", None), checkpoint)
    cfg["model"]["pretrained"] = None
    model = build_model(cfg, task, dataset)
    load_checkpoint(model, checkpoint, strict=strict)
    check_finite_weights(model, checkpoint)
    model.to(dist_info.device)
    if fast:
        from msfusion.engine.fast_inference import optimize_for_inference

        model = optimize_for_inference(model)
    with torch.no_grad():
        metrics = task.evaluate(model, dataset, cfg, dist_info.device, dist_info)
    files = []
    if out is not None and dist_info.is_main:
        files = task.write_eval_outputs(metrics, cfg, checkpoint, out)
    return Evaluation(task=task.name, metrics=metrics, text=task.format_metrics(metrics), files=files)


@dataclass
class Predictions:
    """What :func:`predict` wrote.

    Attributes:
        task: the checkpoint's task.
        files: the pictures written, one per image.
        summary: the line ``msfusion predict`` prints.
    """

    task: str
    files: list[Path]
    summary: str


def predict(
    checkpoint: str | Path,
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    tta: bool = False,
    slide: tuple[int, int] | None = None,
    resize: str | tuple[int, int] | None = "recipe",
    fast: bool = False,
    device: str = "cpu",
    skip_bad: bool = False,
    progress: bool = True,
) -> Predictions:
    """Predict image files with a checkpoint of ours; its sidecar's task decides what is written.

    Segmentation: label, colour and overlay PNGs; detection: pictures with
    boxes, masks, names and scores and a JSON per image; panoptic: pictures,
    id PNGs and segment JSONs. Options the task cannot honour are refused
    before the model is loaded; weights holding NaN or infinity are refused
    before any image is read.

    Example::

        import msfusion as mf

        result = mf.predict("work_dirs/demo/checkpoints/best.safetensors", "photos/", "preds/", tta=True)
        print(result.summary)

    Args:
        checkpoint: a ``.safetensors`` checkpoint of ours (with its ``.json`` sidecar).
        inputs: image files and / or folders of images.
        out: output folder (created).
        tta: test-time augmentation (segmentation: multi-scale + flip; detection: flip).
        slide: segmentation: ``(crop, stride)`` of a sliding-window test.
        resize: segmentation: ``"recipe"`` (the training recipe's test scale),
            None (keep the size) or ``(long, short)``.
        fast: run an inference-optimised copy (:func:`msfusion.optimize_for_inference`).
        device: torch device.
        skip_bad: warn and skip unreadable images instead of stopping.
        progress: show a progress bar.
    """
    from msfusion.checkpoint import read_metadata
    from msfusion.engine.checkpointing import check_finite_weights
    from msfusion.engine.task_base import PredictOptions
    from msfusion.engine.tasks import build_task
    from msfusion.registry import load_model

    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    options = PredictOptions(
        tta=tta,
        slide=tuple(slide) if slide is not None else None,
        resize=resize if resize in ("recipe", None) else tuple(resize),
        fast=fast,
        device=device,
        on_bad_file="skip" if skip_bad else "raise",
        progress=progress,
    )
    meta = read_metadata(checkpoint)
    task = build_task(meta.get("task") or "segmentation")
    task.check_predict_options(options)  # before the model is loaded, so a wrong option fails at once
    model = load_model(checkpoint)
    check_finite_weights(model, checkpoint)
    model = model.to(device).eval()
    if fast:
        from msfusion.engine.fast_inference import optimize_for_inference

        model = optimize_for_inference(model)
    written = task.predict_files(model, inputs, out, meta, options)
    return Predictions(task=task.name, files=list(written), summary=task.describe_predictions(written, out))
