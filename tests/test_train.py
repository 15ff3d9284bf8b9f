"""End-to-end `loraplus train`: run folder, adapter reload through PEFT, overwrite policy, CLI errors."""

import json
import re

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from loraplus.cli import main
from loraplus.config import TrainConfig
from loraplus.train import run_train


def tiny_config(model_dir, data_path, out, **overrides) -> TrainConfig:
    options = dict(
        model=str(model_dir), dataset=str(data_path), output_dir=str(out), learning_rate=2e-3, max_steps=12,
        batch_size=8, eval_batch_size=16, max_length=16, eval_steps=6, logging_steps=3, target_modules=("query", "value"),
    )  # fmt: skip
    options.update(overrides)
    return TrainConfig(**options)


def test_config_names_the_bad_learning_rate():
    with pytest.raises(ValueError, match="learning_rate must be > 0, got -1.0"):
        TrainConfig(learning_rate=-1.0)


def reload_and_score(run_dir, splits_test, label_names):
    """Load base model + adapter with plain PEFT and score the test split: (accuracy, mean loss)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    adapter = run_dir / "adapter"
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=len(label_names), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    config = json.loads((run_dir / "config.json").read_text())["config"]
    enc = tokenizer(list(splits_test["text"]), truncation=True, max_length=config["max_length"])
    batch = DataCollatorWithPadding(tokenizer)([{k: enc[k][i] for k in enc} for i in range(len(splits_test))])
    labels = torch.tensor(splits_test["label"])
    with torch.no_grad():
        logits = model(**batch).logits
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    return float((logits.argmax(-1) == labels).double().mean()), loss


def test_train_writes_run_folder_and_adapter_reloads_with_peft(tiny_bert_dir, tiny_csv, tmp_path):
    from loraplus.data import load_classification_data

    out = tmp_path / "run"
    metrics = run_train(tiny_config(tiny_bert_dir, tiny_csv, out))
    for name in ("metrics.json", "config.json", "log_history.json", "adapter/adapter_model.safetensors",
                 "adapter/adapter_config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["test"]) == {"accuracy", "macro_f1", "loss"}
    assert saved["train"]["steps"] == 12
    assert any("eval_accuracy" in row for row in json.loads((out / "log_history.json").read_text()))
    groups = json.loads((out / "config.json").read_text())["parameter_groups"]
    assert any(line.startswith("lora_B") for line in groups)
    data = load_classification_data(str(tiny_csv), seed=0)
    accuracy, loss = reload_and_score(out, data.splits["test"], data.label_names)
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert loss == pytest.approx(metrics["test"]["loss"], rel=1e-4)


def test_finished_run_is_not_overwritten_without_flag(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=2, eval_steps=2))
    before = (out / "metrics.json").read_text()
    with pytest.raises(FileExistsError, match="finished run"):
        run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=2, eval_steps=2))
    assert (out / "metrics.json").read_text() == before
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=4, eval_steps=2, overwrite=True))
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 4


def test_ratio_one_run_has_equal_group_lrs(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=2, eval_steps=2, loraplus_lr_ratio=1.0))
    rows = json.loads((out / "config.json").read_text())["parameter_groups"][1:]
    lrs = {row.split()[0]: float(row.split()[3]) for row in rows}
    assert lrs["lora_A"] == lrs["lora_B"] == 2e-3


def test_cli_train_prints_test_metrics(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = main(["train", "--model", str(tiny_bert_dir), "--dataset", str(tiny_csv), "--output-dir", str(out),
                 "--max-steps", "3", "--eval-steps", "3", "--batch-size", "8", "--max-length", "16",
                 "--target-modules", "query,value"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "lora_B" in printed  # the result and the group table


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--learning-rate", "-1", "learning_rate must be > 0"),
        ("--loraplus-lr-ratio", "nan", "loraplus_lr_ratio must be finite"),
        ("--r", "0", "r must be a positive integer"),
        ("--lora-dropout", "1.5", "lora_dropout must be in"),
        ("--batch-size", "0", "batch_size must be a positive integer"),
        ("--model", "no-such-model", "unknown model 'no-such-model'"),
        ("--dataset", "missing.csv", "missing.csv"),
        ("--target-modules", "nope", r"target module\(s\) \['nope'\] not found"),
        ("--max-length", "100000", "max_length=100000 exceeds"),
    ],
)
def test_cli_bad_input_is_one_clear_line(flag, value, message, tiny_bert_dir, tiny_csv, tmp_path, capsys):
    argv = ["train", "--model", str(tiny_bert_dir), "--dataset", str(tiny_csv), "--output-dir", str(tmp_path / "o"),
            "--max-steps", "1", "--max-length", "16", flag, value]  # fmt: skip
    if flag == "--dataset":
        argv[argv.index(str(tiny_csv))] = str(tmp_path / value)
        argv = argv[:-2]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("loraplus train: error: "), err
    assert re.search(message, errors[0]), err
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.realdata
def test_minilm_on_bbc_news_slice_saves_and_reloads(tmp_path):
    """A few real steps of the built-in default (minilm-l6 on bbc-news) on a slice; the adapter reloads."""
    from loraplus.data import load_classification_data

    out = tmp_path / "minilm"
    cfg = TrainConfig(output_dir=str(out), max_steps=6, max_train_samples=96, max_eval_samples=48, max_length=64,
                      eval_steps=6, learning_rate=5e-4)  # fmt: skip
    metrics = run_train(cfg)
    data = load_classification_data("bbc-news", seed=0)
    test = data.splits["test"].select(range(48))
    accuracy, loss = reload_and_score(out, test, data.label_names)
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert np.isfinite(loss) and loss == pytest.approx(metrics["test"]["loss"], rel=1e-4)


class StopAfterSave:
    """A TrainerCallback that kills the run (an exception) right after the checkpoint of step ``step``."""

    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):  # every other callback event: do nothing
        return lambda *args, **kwargs: None

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash after checkpoint {self.step}")


def logged_losses(run_dir):
    rows = json.loads((run_dir / "log_history.json").read_text())
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def test_resume_continues_exactly_where_the_crash_left(tiny_bert_dir, tiny_csv, tmp_path):
    whole = tmp_path / "whole"
    run_train(tiny_config(tiny_bert_dir, tiny_csv, whole))
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(tiny_config(tiny_bert_dir, tiny_csv, crashed), callbacks=[StopAfterSave(6)])
    assert not (crashed / "metrics.json").exists()
    with pytest.raises(FileExistsError, match="--resume to continue"):
        run_train(tiny_config(tiny_bert_dir, tiny_csv, crashed))
    resumed = run_train(tiny_config(tiny_bert_dir, tiny_csv, crashed, resume=True))
    expected = logged_losses(whole)
    got = logged_losses(crashed)
    assert sorted(got) == [3, 6, 9, 12]  # 3 and 6 come back from the checkpoint's trainer state
    for step in (3, 6, 9, 12):
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step
    assert resumed["test"]["loss"] == pytest.approx(json.loads((whole / "metrics.json").read_text())["test"]["loss"], rel=1e-6)


def test_resume_without_checkpoint_is_a_clear_error(tiny_bert_dir, tiny_csv, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_train(tiny_config(tiny_bert_dir, tiny_csv, tmp_path / "empty", resume=True))


def test_monitor_option_writes_feature_learning_json_and_plot(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "monitored"
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, max_steps=6, eval_steps=6, monitor=True, monitor_every=2,
                          warmup_ratio=0.0))  # with warm-up, step 1 has lr 0
    saved = json.loads((out / "feature_learning.json").read_text())
    steps = sorted({row["step"] for row in saved["aggregate"]})
    assert steps == [1, 3, 5]  # steps 1, 1 + every, ...
    first = [row for row in saved["per_layer"] if row["step"] == 1]
    assert len(first) == 4 and all(row["delta_A"] == 0.0 and row["delta_B"] > 0 for row in first)  # B starts at 0
    assert (out / "feature_learning.png").stat().st_size > 0
    logged = [row for row in json.loads((out / "log_history.json").read_text()) if "fl/delta_B" in row]
    assert logged, "monitor values reach the Trainer's log history"


def test_report_to_csv_and_tensorboard_write_into_the_run_folder(tiny_bert_dir, tiny_csv, tmp_path):
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, report_to="csv,tensorboard"))
    rows = list(csv.DictReader((out / "log.csv").open()))
    history = json.loads((out / "log_history.json").read_text())
    losses = [(row["step"], row["loss"]) for row in history if "loss" in row]
    assert [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "loss"] == losses  # steps 3, 6, 9, 12
    assert {r["name"] for r in rows} >= {"loss", "learning_rate", "eval_accuracy", "eval_loss"}
    scalars = {}  # training writes one event file, the evaluations after train() a second one
    for path in sorted((out / "tensorboard").glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path)).Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(events.Scalars(tag))
    assert [e.step for e in scalars["train/loss"]] == [3, 6, 9, 12]
    assert [e.value for e in scalars["train/loss"]] == pytest.approx([loss for _, loss in losses])
    first_eval = next(row for row in history if "eval_accuracy" in row)
    assert scalars["eval/accuracy"][0].value == pytest.approx(first_eval["eval_accuracy"])
    # --overwrite starts both logs afresh
    run_train(tiny_config(tiny_bert_dir, tiny_csv, out, report_to="csv", overwrite=True, max_steps=3, eval_steps=3))
    assert [r["step"] for r in csv.DictReader((out / "log.csv").open()) if r["name"] == "loss"] == ["3"]
    assert not (out / "tensorboard").exists()


@pytest.mark.parametrize(
    "value, message",
    [
        ("tensorbord", "report_to must be among none, csv, azure_ml"),
        ("none,csv", "report_to 'none' cannot be combined with others, got 'none,csv'"),
        ("wandb", "report_to 'wandb' needs its package, which is not installed: pip install wandb"),
        ("", "report_to is empty"),
    ],
)
def test_report_to_is_checked_before_loading(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(report_to=value)


class EvalSizes(TrainerCallback):
    """Records (step, examples evaluated) at every evaluation."""

    def __init__(self):
        self.seen = []

    def on_evaluate(self, args, state, control, metrics=None, eval_dataloader=None, **kwargs):
        self.seen.append((state.global_step, len(eval_dataloader.dataset)))


@pytest.mark.parametrize("eval_subset, max_steps, expected", [
    (4, 5, [(2, 4), (4, 4), (5, 12), (5, 12)]),  # subset during training, the whole split at the end, then test
    (4, 4, [(2, 4), (4, 12), (4, 12)]),  # the last step's subset evaluation is replaced by the whole split
    (0, 5, [(2, 12), (4, 12), (5, 12), (5, 12)]),  # whole split every time; the last one is reused at the end
    (50, 5, [(2, 12), (4, 12), (5, 12), (5, 12)]),  # a subset as large as the split is the split
])  # fmt: skip
def test_validation_subset_during_training_and_whole_split_at_the_end(tiny_bert_dir, tiny_csv, tmp_path, eval_subset,
                                                                       max_steps, expected):
    sizes = EvalSizes()
    out = tmp_path / "run"
    metrics = run_train(TrainConfig(model=str(tiny_bert_dir), dataset=str(tiny_csv), output_dir=str(out), batch_size=4,
                                    max_length=32, max_steps=max_steps, eval_steps=2, eval_subset=eval_subset,
                                    save_checkpoints=False), callbacks=[sizes])  # fmt: skip
    assert sizes.seen == expected  # 120 rows: 12 validation, 12 test
    evaluations = [r for r in json.loads((out / "log_history.json").read_text()) if "eval_loss" in r]
    assert [r["step"] for r in evaluations] == sorted({step for step, _ in expected})
    assert evaluations[-1]["eval_accuracy"] == metrics["validation"]["accuracy"]
