"""`loraplus compare`: per-method lr tuning, seeds, summary table, steps-to-target, head lr by method."""

import json

import optuna
import pytest

from loraplus.experiments.compare import METHODS, CompareConfig, run_compare, steps_to_target


def tiny_compare(model_dir, data_path, out, **overrides):
    options = dict(
        model=str(model_dir), dataset=str(data_path), output_dir=str(out), max_steps=6, batch_size=8,
        eval_batch_size=16, max_length=16, eval_steps=2, logging_steps=2, target_modules=("query", "value"),
        methods=("lora", "loraplus-head-lrB", "lorafa", "riemannian"), lrs=("1e-3", "4e-3"),
        seeds=("0", "1"), loraplus_lr_ratio=8.0, jobs=2,
    )  # fmt: skip
    options.update(overrides)
    return CompareConfig(**options)


def group_lrs(run_dir):
    rows = json.loads((run_dir / "config.json").read_text())["parameter_groups"][1:]
    return {row.split()[0]: float(row.split()[3]) for row in rows}


def test_compare_tunes_each_method_and_writes_summary(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "cmp"
    cfg = tiny_compare(tiny_bert_dir, tiny_csv, out)
    summary = run_compare(cfg, progress=False)
    methods = summary["methods"]
    assert list(methods) == list(cfg.methods)
    for name, stats in methods.items():
        assert stats["lr"] in (1e-3, 4e-3) and stats["runs"] == 2 and stats["failed"] == 0, name
        for seed in (0, 1):
            result = json.loads((out / "results" / f"{name}_seed{seed}.json").read_text())
            assert result["seed"] == seed and result["evaluations"] and "torch" in result["versions"]
    assert methods["lora"]["speedup_vs_lora"] in (None, 1.0)
    for name in ("summary.md", "summary.json", "metric.png", "train_loss.png"):
        assert (out / name).stat().st_size > 0
    table = (out / "summary.md").read_text()
    assert "| loraplus-head-lrB |" in table and "(lr_B)" in table
    lr = methods["loraplus-head-lrB"]["lr"]
    head = group_lrs(out / "runs" / "loraplus-head-lrB" / f"lr{lr:.3g}_seed0")
    assert head["other"] == pytest.approx(8 * lr) and head["lora_B"] == pytest.approx(8 * lr)
    plain = group_lrs(out / "runs" / "lora" / f"lr{methods['lora']['lr']:.3g}_seed0")
    assert plain["other"] == plain["lora_B"] == pytest.approx(methods["lora"]["lr"])
    storage = f"sqlite:///{out / 'study.db'}"  # one Optuna study per method: 2 tuning runs + the other seed
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert studies == {f"compare-{m}": 3 for m in cfg.methods}
    runs = optuna.load_study(study_name="compare-lora", storage=storage).trials
    assert sorted(t.user_attrs["run"] for t in runs) == sorted(
        ["lora/lr0.001_seed0", "lora/lr0.004_seed0", f"lora/lr{methods['lora']['lr']:.3g}_seed1"])  # fmt: skip


def test_steps_to_target_is_the_first_evaluation_reaching_it():
    curve = [{"step": 2, "eval_accuracy": 0.5}, {"step": 3, "loss": 1.0}, {"step": 4, "eval_accuracy": 0.9},
             {"step": 6, "eval_accuracy": 0.95}]  # fmt: skip
    assert steps_to_target(curve, "eval_accuracy", 0.9) == 4
    assert steps_to_target(curve, "eval_accuracy", 0.99) is None
    assert steps_to_target([{"step": 2, "eval_loss": 0.3}], "eval_loss", 0.4, lower_better=True) == 2


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(methods=("lora", "qlora")), r"unknown method\(s\) \['qlora'\]"),
        (dict(lrs=("0",)), "lrs must be finite numbers > 0"),
        (dict(seeds=("1", "x")), r"seeds integers, got .*'x'"),
        (dict(target_fraction=1.5), "target_fraction must be in"),
        (dict(metric="bleu"), "metric must be"),
    ],
)
def test_bad_compare_options_name_the_value(bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        CompareConfig(output_dir=str(tmp_path), **bad)


def test_every_method_maps_to_valid_train_options(tmp_path):
    cfg = CompareConfig(output_dir=str(tmp_path), methods=tuple(METHODS))
    for method in METHODS:
        run = cfg.run_config(method, 1e-4, 0)
        assert run.learning_rate == 1e-4
        assert run.loraplus_lr_ratio == (16.0 if method.startswith("loraplus") else 1.0)
        assert run.eval_subset == 0  # steps-to-target reads every evaluation: the whole validation split
    assert CompareConfig(output_dir=str(tmp_path), eval_subset=64).run_config("lora", 1e-4, 0).eval_subset == 64


def test_steps_to_target_median_counts_a_seed_that_never_reached_it_as_infinite():
    from loraplus.experiments.compare import _censored_median

    assert _censored_median([10, 30, None]) == 30.0
    assert _censored_median([10, None, None]) is None
    assert _censored_median([20, 40]) == 30.0


def test_the_summary_names_the_heads_lr_of_each_method():
    """With --loraplus-lr-other the head trains at that lr under the LoRA+ optimizer (it was reported as lr)."""
    from loraplus.experiments.compare import summary_markdown

    cfg = CompareConfig(methods=("lora", "loraplus", "loraplus-head-lrB", "lorafa"), lrs=("1e-3",), seeds=("0",),
                        loraplus_lr_ratio=16.0, loraplus_lr_other=5e-4)  # fmt: skip
    stats = {"lr": 2e-3, "test_mean": 0.5, "test_std": 0.0, "steps_to_target": None, "reached_target": "0/1",
             "speedup_vs_lora": None}  # fmt: skip
    table = summary_markdown({"metric": "accuracy", "target": None, "methods": {m: stats for m in cfg.methods}}, cfg)
    heads = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in table.splitlines()[2:6]}
    assert heads == {"lora": "0.0005 (fixed)", "loraplus": "0.0005 (fixed)", "loraplus-head-lrB": "0.032 (lr_B)",
                     "lorafa": "0.002"}  # fmt: skip
