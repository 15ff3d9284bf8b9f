"""`loraplus sweep`: grid, resumable cells, best cell chosen on validation, heatmap written."""

import json

import numpy as np
import optuna
import pytest

from loraplus.experiments.sweep import SweepConfig, run_sweep, summarize_grid


def tiny_sweep(model_dir, data_path, out, **overrides):
    options = dict(
        model=str(model_dir), dataset=str(data_path), output_dir=str(out), max_steps=4, batch_size=8,
        eval_batch_size=16, max_length=16, eval_steps=4, logging_steps=2, target_modules=("query", "value"),
        lr_a_min=1e-3, lr_a_max=4e-3, lr_a_points=2, lr_b_min=1e-3, lr_b_max=1.6e-2, lr_b_points=2, jobs=2,
    )  # fmt: skip
    options.update(overrides)
    return SweepConfig(**options)


def test_sweep_runs_every_cell_writes_results_and_resumes(tiny_bert_dir, tiny_csv, tmp_path):
    cfg = tiny_sweep(tiny_bert_dir, tiny_csv, tmp_path / "sweep")
    summary = run_sweep(cfg, progress=False)
    assert [r["status"] for r in summary["rows"]] == ["done"] * 4
    assert sorted({(r["lr_A"], r["lr_B"]) for r in summary["rows"]}) == [
        (1e-3, 1e-3), (1e-3, 1.6e-2), (4e-3, 1e-3), (4e-3, 1.6e-2)]  # fmt: skip
    assert {round(r["ratio"], 6) for r in summary["rows"]} == {1.0, 16.0, 0.25, 4.0}
    for name in ("results.csv", "results.json", "heatmap.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    cell = tmp_path / "sweep" / "cells" / "lrA0.001_lrB0.016_seed0"
    groups = json.loads((cell / "config.json").read_text())["parameter_groups"]
    lrs = {row.split()[0]: float(row.split()[3]) for row in groups[1:]}
    assert lrs["lora_A"] == pytest.approx(1e-3) and lrs["lora_B"] == pytest.approx(1.6e-2)
    stamp = (cell / "metrics.json").stat().st_mtime_ns
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")
    assert sorted(t.user_attrs["run"] for t in study.trials) == sorted(f"cells/{c.name}" for c in (tmp_path / "sweep" / "cells").iterdir() if c.is_dir())
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4  # cells are trials of one grid study
    again = run_sweep(cfg, progress=False)  # every cell finished: nothing reruns
    assert (cell / "metrics.json").stat().st_mtime_ns == stamp and len(study.get_trials()) == 4
    assert again["best"] == summary["best"]


def test_best_cell_is_chosen_on_validation_not_test():
    lr_a, lr_b = np.array([1e-4, 1e-3]), np.array([1e-4, 1e-3])
    rows = [
        {"status": "done", "lr_A": 1e-4, "lr_B": 1e-3, "validation_accuracy": 0.9, "test_accuracy": 0.5},
        {"status": "done", "lr_A": 1e-3, "lr_B": 1e-3, "validation_accuracy": 0.8, "test_accuracy": 0.99},
        {"status": "failed (exit 1)", "lr_A": 1e-4, "lr_B": 1e-4},
    ]
    summary = summarize_grid(rows, lr_a, lr_b, "accuracy")
    assert summary["best"]["lr_A"] == 1e-4 and summary["best"]["ratio"] == pytest.approx(10.0)
    assert summary["best"]["test_accuracy"] == 0.5
    assert np.isnan(summary["test_mean"][0][0])  # the failed cell is missing, not zero


def test_loss_metric_prefers_lower_values():
    lr = np.array([1e-3])
    rows = [{"status": "done", "lr_A": 1e-3, "lr_B": 1e-3, "validation_loss": 0.2, "test_loss": 0.3}]
    lr_b = np.array([1e-3, 1e-2])
    rows.append({"status": "done", "lr_A": 1e-3, "lr_B": 1e-2, "validation_loss": 0.1, "test_loss": 0.4})
    assert summarize_grid(rows, lr, lr_b, "loss")["best"]["lr_B"] == 1e-2


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(lr_a_points=0), "lr_a_points must be >= 1"),
        (dict(lr_b_min=1e-2, lr_b_max=1e-3), "lr_b_min <= lr_b_max"),
        (dict(metric="speed"), "metric must be one of"),
        (dict(seeds=("a",)), "seeds must be integers"),
        (dict(seeds=("1", "1")), "distinct"),
    ],
)
def test_bad_sweep_options_name_the_value(bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        SweepConfig(output_dir=str(tmp_path), **bad)


@pytest.mark.parametrize(
    "option, value, instead",
    [("learning_rate", 3e-4, "--lr-a-min"), ("loraplus_lr_ratio", 4.0, "--lr-b-min"), ("seed", 2, "--seeds")],
)
def test_options_the_sweep_sets_itself_are_refused(tiny_bert_dir, tiny_csv, tmp_path, option, value, instead):
    with pytest.raises(ValueError, match=f"is set by the experiment itself for every run; use {instead}"):
        tiny_sweep(tiny_bert_dir, tiny_csv, tmp_path, **{option: value})


def test_a_failed_cell_reports_the_childs_error(tiny_bert_dir, tiny_csv, tmp_path):
    """The child's exception comes back as the row's status, not only an exit code."""
    cfg = tiny_sweep(tiny_bert_dir, tiny_csv, tmp_path, lr_a_points=1, lr_b_points=1, lr_a_max=1e-3, lr_b_max=1e-3, text_column="body")
    rows = run_sweep(cfg, progress=False)["rows"]
    assert len(rows) == 1 and rows[0]["status"].startswith("failed: ValueError: text_column 'body' not found in ")
    assert rows[0]["status"].endswith(".log)")
