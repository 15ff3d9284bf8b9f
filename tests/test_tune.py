"""`loraplus tune`: Optuna trials through the run API, the best run at full length, outputs, resume, two workers on
one storage, and its refusals."""

from __future__ import annotations

import csv
import json

import pytest

from loraplus.experiments import tune as tune_module
from loraplus.experiments.runner import read_run_config
from loraplus.experiments.tune import TuneConfig, run_tune


def tiny_tune(model_dir, data_path, out, **overrides) -> TuneConfig:
    options = dict(
        model=str(model_dir), dataset=str(data_path), output_dir=str(out), max_steps=6, budget=4, eval_steps=2,
        batch_size=8, eval_batch_size=16, max_length=16, logging_steps=2, target_modules=("query", "value"),
        lr_a_min=1e-4, lr_a_max=1e-2, trials=3, pruner="none",
    )  # fmt: skip
    options.update(overrides)
    return TuneConfig(**options)


def test_tune_runs_trials_the_best_at_full_length_and_resumes(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "tune"
    summary = run_tune(tiny_tune(tiny_bert_dir, tiny_csv, out))
    assert summary["counts"] == {"COMPLETE": 3}
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2] and all(1e-4 <= float(r["lr_A"]) <= 1e-2 for r in rows)
    assert all(1 <= float(r["ratio"]) <= 64 for r in rows) and all(int(r["steps"]) == 4 for r in rows)
    best = summary["best"]
    assert best["steps"] == 6 and (out / "best" / "metrics.json").is_file()
    assert best["validation"] == max(float(r["validation"]) for r in rows) or best["trial"] in range(3)
    rerun = read_run_config(out / "best.yaml")  # `loraplus train --config best.yaml` runs it as is
    assert rerun.learning_rate == pytest.approx(best["lr_A"]) and rerun.loraplus_lr_ratio == pytest.approx(best["ratio"])
    assert rerun.max_steps == 6 and not (out / "retrained").exists()
    assert summary["steps_used"] == 3 * 4 + 6
    for name in ("study.db", "trials.json", "history.png", "params.png"):
        assert (out / name).stat().st_size > 0, name
    stamp = (out / "best" / "metrics.json").stat().st_mtime_ns
    more = run_tune(tiny_tune(tiny_bert_dir, tiny_csv, out, trials=4))  # the study continues: one more trial
    assert sum(more["counts"].values()) == 4 and sorted(p.name for p in (out / "trials").iterdir()) == [
        "trial-0", "trial-1", "trial-2", "trial-3"]  # fmt: skip
    params = [(r["lr_A"], r["ratio"]) for r in more["trials"]]
    assert len(set(params)) == 4  # a continued study's new sampler does not replay the first proposals
    if more["best"]["trial"] == best["trial"]:
        assert (out / "best" / "metrics.json").stat().st_mtime_ns == stamp  # the same best: reused


def test_two_workers_on_one_storage_finish_one_study_without_running_a_trial_twice(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "tune"
    summary = run_tune(tiny_tune(tiny_bert_dir, tiny_csv, out, trials=4, jobs=2, loraplus_lr_ratio=4.0))
    numbers = [row["number"] for row in summary["trials"]]
    assert sorted(numbers) == [0, 1, 2, 3] and summary["counts"] == {"COMPLETE": 4}
    assert {row["ratio"] for row in summary["trials"]} == {4.0}  # a fixed λ is not tuned
    assert len({row["lr_A"] for row in summary["trials"]}) == 4
    logs = [json.loads((out / "trials" / f"trial-{n}" / "metrics.json").read_text()) for n in numbers]
    assert all(m["train"]["steps"] == 4 for m in logs)
    assert (out / "worker-0.log").exists() and (out / "worker-1.log").exists()


def test_a_crashing_trial_is_recorded_failed_with_its_message_and_the_study_goes_on(tiny_bert_dir, tiny_csv, tmp_path,
                                                                                    monkeypatch):  # fmt: skip
    real = tune_module.run_train

    def crash_trial_1(cfg, callbacks=()):
        if cfg.output_dir.endswith("trial-1"):
            raise RuntimeError("out of memory (simulated)")
        return real(cfg, callbacks)

    monkeypatch.setattr(tune_module, "run_train", crash_trial_1)
    summary = run_tune(tiny_tune(tiny_bert_dir, tiny_csv, tmp_path / "t"))
    assert summary["counts"] == {"COMPLETE": 2, "FAIL": 1}
    failed = next(r for r in summary["trials"] if r["state"] == "FAIL")
    assert failed["number"] == 1 and failed["error"] == "RuntimeError: out of memory (simulated)"


def test_pruning_stops_trials_at_an_evaluation(tiny_bert_dir, tiny_csv, tmp_path):
    summary = run_tune(tiny_tune(tiny_bert_dir, tiny_csv, tmp_path / "p", trials=6, budget=6, pruner="halving",
                                 eval_steps=1))  # fmt: skip
    states = {r["state"] for r in summary["trials"]}
    assert "COMPLETE" in states and states <= {"COMPLETE", "PRUNED"}
    pruned = [r for r in summary["trials"] if r["state"] == "PRUNED"]
    assert all(r["steps"] < 6 for r in pruned)


@pytest.mark.parametrize("bad, message", [
    (dict(trials=0), r"trials must be an integer >= 1, got 0"),
    (dict(lr_a_min=1e-2, lr_a_max=1e-3), r"the lr_a range must be 0 < lr_a_min < lr_a_max \(finite\), got 0\.01 \.\. 0\.001"),
    (dict(lr_a_min=1e-3, lr_a_max=1e-3), r"the lr_a range must be 0 < lr_a_min < lr_a_max"),
    (dict(ratio_min=8.0, ratio_max=2.0), r"the ratio range must be 0 < ratio_min <= ratio_max \(finite\), got 8\.0 \.\. 2\.0"),
    (dict(budget=1), r"budget must be an integer >= 2 \(one evaluation: --eval-steps 2\), got 1"),
    (dict(budget=8), r"budget \(8 steps\) exceeds max_steps \(6\)"),
    (dict(pruner="median"), r"pruner must be one of hyperband, halving, none, got 'median'"),
    (dict(metric="perplexity"), r"metric 'perplexity' is not reported by --task classification"),
    (dict(loraplus_lr_ratio="auto"), r"tune takes a number for --loraplus-lr-ratio"),
    (dict(learning_rate=1e-3), r"--learning-rate \(learning_rate\) is set by the experiment itself"),
    (dict(overwrite=True), r"--overwrite \(overwrite\) is set by the experiment itself .* another --study-name"),
])  # fmt: skip
def test_bad_tune_options_name_the_value(bad, message, tiny_bert_dir, tiny_csv, tmp_path):
    with pytest.raises(ValueError, match=message):
        tiny_tune(tiny_bert_dir, tiny_csv, tmp_path / "x", **bad)


def test_a_storage_that_cannot_be_opened_and_a_study_of_other_options_are_refused(tiny_bert_dir, tiny_csv, tmp_path):
    (tmp_path / "a-file").write_text("x")
    bad = tiny_tune(tiny_bert_dir, tiny_csv, tmp_path / "s", storage=f"sqlite:///{tmp_path}/a-file/study.db")
    with pytest.raises(ValueError, match=r"the Optuna storage 'sqlite:///.*a-file/study\.db' cannot be opened"):
        run_tune(bad)
    assert not (tmp_path / "s" / "trials").exists()
    shared = f"sqlite:///{tmp_path}/shared.db"
    run_tune(tiny_tune(tiny_bert_dir, tiny_csv, tmp_path / "a", storage=shared, trials=1))
    other = tiny_tune(tiny_bert_dir, tiny_csv, tmp_path / "b", storage=shared, trials=1, r=4)
    with pytest.raises(ValueError, match=r"study 'loraplus-tune' in .* was made for other options or data \(r: 8 -> 4\)"):
        run_tune(other)
    assert not (tmp_path / "b" / "trials").exists()
