"""Run folders that know what they are: identity, resume and rerun checks, --overwrite replacing a run only when
the new one starts, the lock, experiment cells of other options, and a training trajectory that does not depend on
how often it is evaluated."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from transformers import TrainerCallback

from loraplus.cli import main
from loraplus.experiments.sweep import run_sweep
from loraplus.runfolder import IDENTITY_FILE, LOCK_FILE, PREVIOUS_DIR, differences, identity_of, read_identity
from loraplus.train import run_train
from test_safety import base_argv, cli_error
from test_sweep import tiny_sweep
from test_train import tiny_config


class StopAt(TrainerCallback):
    """Raises at the end of optimizer step ``step``: an unfinished run with checkpoints, as a crash leaves it."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


def unfinished_run(model, data, out, **overrides):
    cfg = tiny_config(model, data, out, max_steps=8, eval_steps=2, **overrides)
    with pytest.raises(RuntimeError, match="stopped at step 5"):
        run_train(cfg, callbacks=[StopAt(5)])
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and not (out / "metrics.json").exists()
    return cfg


def train_losses(out) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in json.loads((out / "log_history.json").read_text()) if "loss" in row}


def test_identity_records_options_and_the_data_file_before_training(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    unfinished_run(tiny_bert_dir, tiny_csv, out)
    identity = json.loads((out / IDENTITY_FILE).read_text())
    assert identity["options"]["seed"] == 0 and identity["options"]["max_steps"] == 8
    assert "output_dir" not in identity["options"] and "eval_batch_size" not in identity["options"]
    assert identity["files"]["dataset"]["path"] == str(tiny_csv.resolve())
    assert identity["files"]["dataset"]["size"] == tiny_csv.stat().st_size
    assert len(identity["files"]["dataset"]["sha256"]) == 64


def test_resume_with_another_seed_or_rank_is_refused_naming_it(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    out = tmp_path / "run"
    unfinished_run(tiny_bert_dir, tiny_csv, out)
    argv = [*base_argv(tiny_bert_dir, tiny_csv, out), "--max-steps", "8", "--eval-steps", "2", "--logging-steps", "3",
            "--learning-rate", "2e-3", "--eval-batch-size", "16", "--resume"]  # fmt: skip
    line = cli_error(capsys, [*argv, "--seed", "1"])
    assert "--resume: the run in" in line and "(seed: 0 -> 1)" in line and "start over with --overwrite" in line
    line = cli_error(capsys, [*argv, "--r", "4"])
    assert "(r: 8 -> 4)" in line
    tiny_csv.write_text(tiny_csv.read_text() + "an extra row of text,0\n")  # same path, other rows
    line = cli_error(capsys, argv)
    assert re.search(r"dataset file '.*tiny\.csv' changed since that run \(size \d+ -> \d+\)", line)


def test_resume_with_the_same_options_continues(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    cfg = unfinished_run(tiny_bert_dir, tiny_csv, out)
    metrics = run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=8, eval_steps=2, resume=True,
                                    eval_batch_size=4, report_to=("csv",)))  # fmt: skip  # ignored options may differ
    assert metrics["train"]["steps"] == 8 and cfg.seed == 0


def test_rerun_of_a_finished_run_says_whether_its_options_differ(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    out = tmp_path / "run"
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=2, eval_steps=2))
    argv = [*base_argv(tiny_bert_dir, tiny_csv, out), "--max-steps", "2", "--eval-steps", "2", "--logging-steps", "3",
            "--learning-rate", "2e-3"]  # fmt: skip
    assert "holds a finished run (metrics.json) with the same options; pass --overwrite" in cli_error(capsys, argv)
    line = cli_error(capsys, [*argv[:-1], "3e-3"])
    assert "with other options (learning_rate: 0.002 -> 0.003)" in line


def test_overwrite_with_a_typo_leaves_the_old_run_intact(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    out = tmp_path / "run"
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=2, eval_steps=2, monitor=True, monitor_every=1))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    line = cli_error(capsys, [*base_argv(tiny_bert_dir, tiny_csv, out), "--text-column", "txet", "--overwrite"])
    assert "text_column 'txet' not found" in line
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    assert after == before  # metrics, adapter, checkpoints, monitor files: all as they were
    # a valid --overwrite replaces the whole run: nothing of the old one (its monitor files) is left behind
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=2, eval_steps=2, seed=3, overwrite=True))
    names = {p.name for p in out.iterdir()}
    assert "feature_learning.json" not in names and PREVIOUS_DIR not in names
    assert read_identity(out)["options"]["seed"] == 3


def test_an_overwrite_that_dies_keeps_the_old_run_aside_and_a_resumable_new_one(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=2, eval_steps=2))
    old_metrics = (out / "metrics.json").read_text()
    unfinished_run(tiny_bert_dir, tiny_csv, out, overwrite=True)
    assert (out / PREVIOUS_DIR / "metrics.json").read_text() == old_metrics
    metrics = run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=8, eval_steps=2, resume=True))
    assert metrics["train"]["steps"] == 8 and not (out / PREVIOUS_DIR).exists()


def test_a_refused_new_run_leaves_no_folder(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "new-run"
    line = cli_error(capsys, base_argv(tiny_bert_dir, tmp_path / "missing.csv", out))
    assert "missing.csv" in line and not out.exists()


def test_a_second_process_on_the_same_run_folder_is_refused_naming_the_first(tiny_bert_dir, tiny_csv, tmp_path,
                                                                            capsys):  # fmt: skip
    out = tmp_path / "run"
    holder = ("import sys, time\nfrom loraplus.runfolder import folder_lock\n"
              "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        line = cli_error(capsys, base_argv(tiny_bert_dir, tiny_csv, out))
        assert f"is in use by another loraplus process (pid {proc.pid})" in line
    finally:
        proc.kill()
        proc.wait()
    assert main(base_argv(tiny_bert_dir, tiny_csv, out)) == 0  # the lock died with its process


def test_two_train_processes_at_once_one_is_refused(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "loraplus", *base_argv(tiny_bert_dir, tiny_csv, out)]
    argv[argv.index("--max-steps") + 1] = "20"
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    winner = next(p for p, (code, _) in zip(procs, results) if code == 0)
    assert f"is in use by another loraplus process (pid {winner.pid})" in refused, refused
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 20


def test_eval_interval_does_not_change_the_training_losses(tiny_bert_dir, tiny_csv, tmp_path):
    """Dropout (LoRA 0.1, BERT 0.1) draws from the torch RNG; evaluating must not shift that stream."""
    often = tmp_path / "often"
    rarely = tmp_path / "rarely"
    common = dict(max_steps=10, logging_steps=1, save_checkpoints=False, lora_dropout=0.1)
    run_train(tiny_config(tiny_bert_dir, tiny_csv, often, eval_steps=2, **common))
    run_train(tiny_config(tiny_bert_dir, tiny_csv, rarely, eval_steps=10, **common))
    a, b = train_losses(often), train_losses(rarely)
    assert sorted(a) == list(range(1, 11)) and a == b


def test_sweep_rerun_with_other_steps_is_refused_then_recomputed_with_overwrite(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "sweep"
    first = run_sweep(tiny_sweep(tiny_bert_dir, tiny_csv, out, lr_a_points=1, lr_b_points=1, lr_a_max=1e-3, lr_b_max=1e-3, jobs=1), progress=False)
    assert [r["steps"] for r in first["rows"]] == [4]
    longer = tiny_sweep(tiny_bert_dir, tiny_csv, out, lr_a_points=1, lr_b_points=1, lr_a_max=1e-3, lr_b_max=1e-3, jobs=1, max_steps=6)
    with pytest.raises(ValueError, match=r"1 run folder\(s\) hold runs of other options or data, e\.g\. .*"
                                         r"\(max_steps: 4 -> 6\); pass --overwrite"):  # fmt: skip
        run_sweep(longer, progress=False)
    again = run_sweep(tiny_sweep(tiny_bert_dir, tiny_csv, out, lr_a_points=1, lr_b_points=1, lr_a_max=1e-3, lr_b_max=1e-3, jobs=1, max_steps=6,
                                 overwrite=True), progress=False)  # fmt: skip
    assert [r["steps"] for r in again["rows"]] == [6]


def test_sweep_metric_the_task_cannot_report_is_refused_before_any_cell(tiny_bert_dir, tiny_csv, tmp_path):
    with pytest.raises(ValueError, match=r"metric 'perplexity' is not reported by --task classification"):
        run_sweep(tiny_sweep(tiny_bert_dir, tiny_csv, tmp_path / "s", metric="perplexity"), progress=False)
    assert not (tmp_path / "s" / "cells").exists()


def test_differences_ignore_logging_options_and_options_an_old_run_lacks():
    old = identity_of({"seed": 0, "max_steps": 4, "logging_steps": 5, "lrs": [1, 2]})
    new = identity_of({"seed": 0, "max_steps": 4.0, "logging_steps": 50, "lrs": (1.0, 2.0), "packing": False})
    assert differences(old, new) == []
    assert differences(old, identity_of({"seed": 1})) == ["seed: 0 -> 1"]


def test_max_length_below_the_special_tokens_plus_one_is_refused(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    argv = base_argv(tiny_bert_dir, tiny_csv, tmp_path / "short")
    argv[argv.index("--max-length") + 1] = "1"
    line = cli_error(capsys, argv)
    assert "max_length=1 leaves no room for text: the tokenizer adds 2 special token(s)" in line
    assert "give --max-length 3 or more" in line and not (tmp_path / "short").exists()


def test_a_hub_id_without_a_network_fails_in_seconds_with_one_line(tiny_csv, tmp_path, capsys, monkeypatch):
    """The test machine has no network: the hub id is neither cached nor reachable. (With a network the Hub
    answers that the repo does not exist, also one line.)"""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "hub"
    start = time.monotonic()
    line = cli_error(capsys, base_argv("someorg/no-such-model", tiny_csv, out))
    assert time.monotonic() - start < 10
    assert "'someorg/no-such-model'" in line and not out.exists()


def test_every_written_file_gets_the_umask_mode_safetensors_included(tiny_bert_dir, tiny_csv, tmp_path):
    import os
    import stat

    out = tmp_path / "modes"
    old = os.umask(0o022)
    try:
        run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=2, eval_steps=1))
    finally:
        os.umask(old)
    tensors = list(out.rglob("*.safetensors"))
    assert {p.parent.name for p in tensors} >= {"adapter", "checkpoint-2"}
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert {k: v for k, v in modes.items() if v != 0o644} == {}


def test_evaluation_curve_keeps_each_point_once_and_drops_rows_without_metrics():
    from loraplus.experiments.runner import evaluation_curve

    history = [{"loss": 1.0, "step": 2}, {"eval_loss": 0.5, "step": 2}, {"eval_loss": 0.5, "step": 2},
               {"test_loss": 0.4, "step": 2}, {"train_runtime": 1.0, "step": 2}]  # fmt: skip
    assert evaluation_curve(history) == [{"step": 2, "loss": 1.0}, {"step": 2, "eval_loss": 0.5}]


def test_the_final_validation_reuses_an_evaluation_at_the_last_step(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    metrics = run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=4, eval_steps=2))
    evals = [r for r in json.loads((out / "log_history.json").read_text()) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]  # not evaluated a second time at step 4
    assert metrics["validation"]["loss"] == pytest.approx(evals[-1]["eval_loss"])


def test_compare_rerun_with_other_steps_is_refused_naming_them(tiny_bert_dir, tiny_csv, tmp_path):
    from loraplus.experiments.compare import run_compare
    from test_compare import tiny_compare

    out = tmp_path / "cmp"
    small = dict(methods=("lora",), lrs=("1e-3",), seeds=("0",), jobs=1)
    run_compare(tiny_compare(tiny_bert_dir, tiny_csv, out, **small), progress=False)
    with pytest.raises(ValueError, match=r"hold runs of other options or data, e\.g\. .*lr0\.001_seed0' "
                                         r"\(max_steps: 6 -> 8\)"):  # fmt: skip
        run_compare(tiny_compare(tiny_bert_dir, tiny_csv, out, max_steps=8, **small), progress=False)
    result = json.loads((out / "results" / "lora_seed0.json").read_text())
    assert result["config"]["max_steps"] == 6  # the old results were not mixed with the new title
