"""The options several commands share: what the recipe shortcuts become, how ``--threads`` is checked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import msfusion
from msfusion.cli import main


def _captured(monkeypatch: pytest.MonkeyPatch, name: str, result: object) -> dict:
    """Replace ``msfusion.<name>`` by a stub that records its keyword arguments."""
    seen: dict = {}

    def stub(*args: object, **kwargs: object) -> object:
        seen.update(kwargs, args=args)
        return result

    monkeypatch.setattr(msfusion, name, stub)
    return seen


def test_train_shortcuts_follow_the_set_values(monkeypatch, tmp_path, capsys):
    summary = {"best": None, "step": 0, "work_dir": str(tmp_path)}
    seen = _captured(monkeypatch, "train", summary)
    argv = ["train", "r.yaml", "--set", "train.seed=5", "--seed", "0", "--work-dir", "w", "--deterministic"]
    assert main([*argv, "--device", "cpu", "--no-progress", "--grad-checkpointing"]) == 0
    # --set first, then the shortcuts (a shortcut wins); a seed of 0 is given, not "absent".
    assert seen["overrides"] == [
        "train.seed=5",
        "train.work_dir=w",
        "train.seed=0",
        "train.deterministic=true",
        "train.grad_checkpointing=true",
        "train.device=cpu",
        "train.progress=false",
    ]
    assert main(["train", "r.yaml"]) == 0
    assert seen["overrides"] == []


def test_eval_shortcuts_follow_the_set_values(monkeypatch, tmp_path, capsys):
    checkpoint = tmp_path / "best.safetensors"
    checkpoint.write_bytes(b"")
    seen = _captured(monkeypatch, "evaluate", SimpleNamespace(text="", files=[]))
    argv = ["eval", "r.yaml", "--checkpoint", str(checkpoint), "--set", "eval.tta=false", "--tta"]
    assert main([*argv, "--mode", "slide", "--no-progress", "--device", "auto"]) == 0
    assert seen["overrides"] == [
        "eval.tta=false",
        "eval.tta=true",
        "eval.mode=slide",
        "train.device=auto",
        "train.progress=false",
    ]


@pytest.mark.parametrize(
    "argv",
    [["demo"], ["effects", "--quick"], ["bench", "test_segnext"]],
    ids=["demo", "effects", "bench"],
)
def test_threads_below_one_are_refused_before_any_work(argv, monkeypatch, tmp_path, capsys):
    from msfusion.engine.task_base import Task

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command started working with --threads 0")

    monkeypatch.setattr(Task, "run_demo", no_work)
    monkeypatch.setattr(msfusion, "create_model", no_work)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
