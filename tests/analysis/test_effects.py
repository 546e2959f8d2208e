"""``msfusion effects``: the machinery on a tiny budget, the statistics, resume, and bad input."""

from __future__ import annotations

import json
import math

import pytest

from msfusion.analysis import effects as E
from msfusion.cli import main

# Two tiny segmentors that differ in their neck: a check of the machinery, not of a paper's effect.
_HEAD = {"head": "fcn", "head_kwargs": {"channels": 8, "num_convs": 1, "in_stride": 32}}
TINY = E.Pair(
    key="tiny",
    effect="test",
    title="tiny machinery check",
    claim="none (a test pair)",
    task="segmentation",
    metrics=E.SEG_METRICS,
    primary="mIoU",
    baseline=E.Arm("tiny_a", "tiny A", {"compose": {"backbone": "test_mscan", **_HEAD}}),
    treatment=E.Arm(
        "tiny_b",
        "tiny B",
        {"compose": {"backbone": "test_mscan", "neck": "fpn", "neck_kwargs": {"out_chs": 8}, **_HEAD}},
    ),
)
TINY_BUDGET = E.Budget(steps=2, seeds=1, seg_size=32, batch_size=2, num_train=4, num_val=2, max_objects=3)


def _run(out, **kwargs):
    return E.run_effects(out, budget=kwargs.pop("budget", TINY_BUDGET), pairs=[TINY], progress=False, **kwargs)


def test_tiny_budget_writes_a_complete_report(tmp_path):
    report = _run(tmp_path)
    written = json.loads((tmp_path / "effects.json").read_text())
    assert written["pairs"][0]["key"] == "tiny"
    pair = written["pairs"][0]
    for role in ("baseline", "treatment"):
        arm = pair["arms"][role]
        assert arm["params"] > 0 and arm["macs"] > 0
        assert len(arm["scores"]["mIoU"]) == 1 and 0.0 <= arm["scores"]["mIoU"][0] <= 100.0
        assert arm["curves"][0][-1][0] == 2  # the training curve reaches the last step
        assert arm["model"]["compose"]["backbone"] == "test_mscan"
    assert pair["arms"]["treatment"]["params"] > pair["arms"]["baseline"]["params"]  # the FPN is there
    diff = pair["difference"]["mIoU"]
    expected = pair["arms"]["treatment"]["scores"]["mIoU"][0] - pair["arms"]["baseline"]["scores"]["mIoU"][0]
    assert diff["mean"] == pytest.approx(expected) and diff["ci95"] is None
    assert pair["verdict"] == "undecided" and "one seed" in pair["text"]
    assert report["trained_now"] == 2 and report["reused"] == 0
    assert (tmp_path / "effects.png").stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "segmentation.tiny_a.s0.json",
        "segmentation.tiny_b.s0.json",
    ]
    assert not (tmp_path / "work").exists()  # weights are not kept, results are
    assert "tiny A" in E.format_report(report)


def test_resume_skips_finished_arms_and_never_retrains(tmp_path, monkeypatch):
    _run(tmp_path)
    kept = (tmp_path / "runs" / "segmentation.tiny_a.s0.json").read_text()
    (tmp_path / "runs" / "segmentation.tiny_b.s0.json").unlink()  # as if interrupted during the second model
    trained = []
    real = E.train_arm

    def counting(recipe, on_step=None):
        trained.append(recipe["model"]["compose"].get("neck"))
        return real(recipe, on_step)

    monkeypatch.setattr(E, "train_arm", counting)
    report = _run(tmp_path)
    assert trained == ["fpn"]  # only the missing treatment run
    assert report["trained_now"] == 1 and report["reused"] == 1
    assert (tmp_path / "runs" / "segmentation.tiny_a.s0.json").read_text() == kept
    trained.clear()
    _run(tmp_path)  # everything there: nothing trains
    assert trained == []


def test_t_quantiles_and_paired_interval_on_hand_made_numbers():
    assert E.t_quantile_975(1) == 12.706 and E.t_quantile_975(2) == 4.303 and E.t_quantile_975(30) == 2.042
    assert E.t_quantile_975(60) == pytest.approx(2.000, abs=1e-3)  # tables: 2.000
    assert E.t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)  # tables: 1.980
    diff = E.paired_difference([10.0, 20.0, 30.0], [11.0, 22.0, 33.0])
    assert diff["differences"] == [1.0, 2.0, 3.0]
    assert diff["mean"] == pytest.approx(2.0) and diff["std"] == pytest.approx(1.0)
    half = 4.303 / math.sqrt(3)
    assert diff["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert E.verdict(diff, "mIoU", "A", "B")["verdict"] == "within noise"  # [-0.48, 4.48] holds 0
    shows = E.paired_difference([1.0, 1.0, 1.0, 1.0], [2.0, 2.1, 1.9, 2.0])
    assert E.verdict(shows, "mIoU", "A", "B")["verdict"] == "shows"
    other = E.paired_difference([2.0, 2.1, 1.9, 2.0], [1.0, 1.0, 1.0, 1.0])
    said = E.verdict(other, "mIoU", "A", "B")
    assert said["verdict"] == "goes the other way" and "B trails A" in said["text"]
    assert E.verdict(E.paired_difference([1.0], [2.0]), "mIoU", "A", "B")["verdict"] == "undecided"
    with pytest.raises(ValueError, match="same seeds"):
        E.paired_difference([1.0, 2.0], [1.0])


def test_t_table_matches_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 200):
        assert E.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4), df


def test_bad_arguments_get_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown effect 'fien'.*did you mean 'fine'"):
        E.parse_effects("mscsa,fien")
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        E.budget_for("cpu", seeds=0)
    with pytest.raises(ValueError, match="cannot train"):
        E.budget_for("cpu", steps=0)
    with pytest.raises(ValueError, match="seeds >= 1 and steps >= 1"):
        _run(tmp_path / "zero", budget=E.Budget(steps=0, seeds=1))
    assert main(["effects", "--only", "nonsense", "--out", str(tmp_path / "x")]) == 2
    assert "unknown effect 'nonsense'" in capsys.readouterr().err
    assert main(["effects", "--seeds", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_output_folder_of_another_benchmark_or_configuration_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no msfusion effects results"):
        E.prepare_out_dir(other, TINY_BUDGET, overwrite=False)
    E.prepare_out_dir(other, TINY_BUDGET, overwrite=True)  # written beside, the other file untouched
    assert (other / "results.json").exists()
    mine = tmp_path / "mine"
    E.prepare_out_dir(mine, TINY_BUDGET, overwrite=False)
    (mine / "runs").mkdir()
    (mine / "runs" / "segmentation.tiny_a.s0.json").write_text("{}")
    E.prepare_out_dir(mine, TINY_BUDGET, overwrite=False)  # the same configuration resumes
    E.prepare_out_dir(mine, TINY_BUDGET, overwrite=True)  # ... even with --overwrite: results are never lost
    assert (mine / "runs" / "segmentation.tiny_a.s0.json").exists()
    more_steps = E.Budget(**{**TINY_BUDGET.__dict__, "steps": 3})
    with pytest.raises(ValueError, match="another configuration.*steps"):
        E.prepare_out_dir(mine, more_steps, overwrite=False)
    E.prepare_out_dir(mine, more_steps, overwrite=True)
    assert not (mine / "runs").exists()  # the old configuration's results are gone


def test_pair_report_from_hand_made_runs_of_three_seeds():
    def run(seed, miou):
        return {"seed": seed, "scores": {"mIoU": miou}, "params": 10, "macs": 20, "image_size": 32,
                "train_time_s": 1.0, "curve": [[1, 2.0]]}  # fmt: skip

    base = [run(s, v) for s, v in enumerate((0.50, 0.52, 0.54))]
    treat = [run(s, v) for s, v in enumerate((0.55, 0.58, 0.58))]
    pair = E.summarise_pair(TINY, base, treat)
    assert pair["arms"]["baseline"]["scores"]["mIoU"] == pytest.approx([50.0, 52.0, 54.0])
    assert pair["arms"]["baseline"]["summary"]["mIoU"]["std"] == pytest.approx(2.0)
    diff = pair["difference"]["mIoU"]
    assert diff["differences"] == pytest.approx([5.0, 6.0, 4.0]) and diff["mean"] == pytest.approx(5.0)
    assert diff["ci95"] == pytest.approx([5.0 - 4.303 / math.sqrt(3), 5.0 + 4.303 / math.sqrt(3)])
    assert pair["verdict"] == "shows" and "tiny B beats tiny A by +5.00 mIoU points" in pair["text"]


def test_hard_shapes_variant_takes_colour_away_and_adds_tiny_objects():
    import numpy as np
    from matplotlib.colors import rgb_to_hsv

    from msfusion.data.shapes import ShapesDataset

    def stats(variant):
        data = ShapesDataset("train", 20, 64, seed=3, with_instances=True, variant=variant)
        hue_right, pixels, tiny = 0, 0, 0
        for i in range(len(data)):
            image, mask, instances, _ = data._render(i)
            hue = rgb_to_hsv(image[mask > 0] / 255.0)[:, 0]
            nearest = np.round(hue * 6).astype(int) % 6 + 1  # class k has hue 60 * (k - 1) degrees
            hue_right += int((nearest == mask[mask > 0]).sum())
            pixels += int((mask > 0).sum())
            tiny += int((instances.reshape(len(instances), -1).sum(1) <= 30).sum())
        return hue_right / pixels, tiny

    default_hue, default_tiny = stats("default")
    hard_hue, hard_tiny = stats("hard")
    assert default_hue > 0.8 and hard_hue < 0.35  # colour says the class in one variant only
    assert hard_tiny > 2 * default_tiny
    first = ShapesDataset("val", 2, 64, seed=3, variant="hard")._render(1)
    again = ShapesDataset("val", 2, 64, seed=3, variant="hard")._render(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # generated from the seed
    with pytest.raises(ValueError, match="variant must be one of"):
        ShapesDataset(variant="harder")


def test_an_arm_shared_by_two_pairs_trains_once_per_seed(tmp_path, monkeypatch):
    import dataclasses

    other = dataclasses.replace(TINY, key="tiny2", title="the same baseline, another treatment")
    other = dataclasses.replace(other, treatment=E.Arm("tiny_c", "tiny C", TINY.baseline.model))
    trained = []
    real = E.train_arm

    def counting(recipe, on_step=None):
        trained.append(recipe["train"]["work_dir"])
        return real(recipe, on_step)

    monkeypatch.setattr(E, "train_arm", counting)
    report = E.run_effects(tmp_path, budget=TINY_BUDGET, pairs=[TINY, other], progress=False)
    assert len(trained) == 3  # tiny_a (shared), tiny_b, tiny_c
    assert report["pairs"][0]["arms"]["baseline"]["scores"] == report["pairs"][1]["arms"]["baseline"]["scores"]


def test_pairs_give_one_model_per_arm_name():
    """Runs are keyed by task and arm name, so two arms of that name must be the same model."""
    seen: dict[tuple[str, str], dict] = {}
    for pair in E.PAIRS:
        for arm in (pair.baseline, pair.treatment):
            assert seen.setdefault((pair.task, arm.name), arm.model) == arm.model, arm.name
    assert ("segmentation", "semfpn_r18") in seen  # the arm FINE's and MSCSA's pairs share
