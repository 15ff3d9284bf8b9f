"""Figure 9: the tuner's own overhead. ``loraplus tune`` with ``trials`` trials of ``steps`` steps (no pruning,
``budget == max_steps`` so the best trial is not run again) against ``trials`` bare ``loraplus train`` runs
(``run_train``) of the same options and steps, timed side by side (shuffled order, fresh folders every repeat,
both in this process). The tuner's part is everything around the runs: opening the Optuna study (SQLite), the
sampler's proposals, the pruner's reports at each evaluation, the trial records, ``trials.csv``/``trials.json``,
``best.yaml`` and the two plots. Target: tune's time / the bare runs' time <= 1.05. Also reported: the overhead in
seconds per trial.
"""

from __future__ import annotations

import statistics

from benchmarks.common import Context, interleaved, paired_ratio, ratio_row

NAME = "tune_overhead"
TITLE = "9 tuner overhead"


def config(quick: bool) -> dict:
    if quick:
        return {"model": "tiny-bert-folder", "trials": 2, "steps": 2, "eval_steps": 1, "repeats": 1,
                "limits": {"max_train_samples": 32, "max_eval_samples": 16, "max_length": 16}}  # fmt: skip
    return {"model": "minilm-l6", "trials": 3, "steps": 40, "eval_steps": 20, "repeats": 3,
            "limits": {"max_length": 32, "max_eval_samples": 212}}  # fmt: skip


def run(ctx: Context, cfg: dict) -> dict:
    from benchmarks.fig_train_runs import model_path
    from loraplus.config import TrainConfig
    from loraplus.experiments.tune import TuneConfig, run_tune
    from loraplus.train import run_train

    options = dict(model=model_path(ctx, cfg["model"]), dataset="bbc-news", max_steps=cfg["steps"], batch_size=16,
                   eval_steps=cfg["eval_steps"], logging_steps=cfg["eval_steps"], **cfg["limits"])  # fmt: skip
    counter = iter(range(10**6))

    def tune():
        folder = ctx.workdir / f"tune-{next(counter)}"
        run_tune(TuneConfig(**options, output_dir=str(folder), trials=cfg["trials"], budget=cfg["steps"],
                            pruner="none", lr_a_min=5e-4, lr_a_max=2e-3, loraplus_lr_ratio=16.0))  # fmt: skip

    def train():
        for _ in range(cfg["trials"]):
            run_train(TrainConfig(**options, output_dir=str(ctx.workdir / f"train-{next(counter)}"), learning_rate=1e-3,
                                  save_checkpoints=False))  # fmt: skip

    samples = interleaved({"tune": tune, "train": train}, repeats=cfg["repeats"])
    pr = paired_ratio(samples, "tune", "train")
    per_trial = statistics.median(t["wall_s"] - b["wall_s"] for t, b in zip(samples["tune"], samples["train"])) / cfg["trials"]
    name = f"tune / {cfg['trials']} bare train runs ({cfg['model']}, {cfg['trials']} trials of {cfg['steps']} steps)"
    rows = [ratio_row(name, pr, ("<=", 1.05), value=f"overhead {per_trial:+.2f} s per trial (wall)")]
    return {"rows": rows, "data": {"samples": samples, "overhead_s_per_trial": per_trial}}
