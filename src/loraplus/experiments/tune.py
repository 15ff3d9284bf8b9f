"""``loraplus tune``: the paper's procedure (set lr_B = λ · lr_A, tune η_A, evaluate, adjust) as one command, on
Optuna.

Optuna's TPE sampler proposes lr_A (log-uniform over ``lr_a_min .. lr_a_max``) and λ (log-uniform over
``ratio_min .. ratio_max``, or fixed by ``loraplus_lr_ratio``); each trial is one ``run_train`` of ``budget``
steps in ``trials/trial-<n>``, reporting the validation metric to Optuna's pruner at every evaluation, which stops
unpromising trials early (Hyperband by default, or successive halving). The study lives in an Optuna storage:
``study.db`` (SQLite) in the output folder by default, or ``storage`` (any Optuna storage URL: PostgreSQL/MySQL,
or ``journal:PATH`` for a journal file on a shared filesystem), so rerunning continues the study and workers on
many machines share it; ``jobs`` worker processes share it on this machine. The search itself is Optuna's: this
module only turns a trial into a run.

After the trials, the best completed trial's options are run at the full ``max_steps`` in ``best/`` (reused when
the trial already ran that long, and when ``best/`` already holds that run) and its test metric reported. Outputs:
``trials.csv`` and ``trials.json`` (one row per trial: number, state, lr_A, λ, validation and test metric, error),
``history.png`` (Optuna's optimisation history), ``params.png`` (lr_A × λ contour, or a slice plot when λ is
fixed) and ``best.yaml``, which ``loraplus train --config best.yaml`` runs as is.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from transformers import TrainerCallback

from ..config import AUTO, TrainConfig, _opt, check_not_set_by_experiment
from ..groups import DEFAULT_LORAPLUS_LR_RATIO
from ..io import atomic_write_json, atomic_write_text, save_figure
from ..runfolder import differences, identity_of
from ..tasks import get_task
from ..train import run_train
from .runner import experiment_folder, run_config, write_run_config
from .studies import check_storage, open_storage, open_study, storage_option, storage_url, worker_seed

__all__ = ["PRUNERS", "TuneConfig", "read_tune_config", "run_tune", "trial_rows", "tune_text"]

logger = logging.getLogger("loraplus")

PRUNERS = ("hyperband", "halving", "none")
LOWER_IS_BETTER = ("loss", "perplexity")
STUDY_NAME = "loraplus-tune"
# options of a trial that the study sets, so two runs of one study may differ in them
_TRIAL_OPTIONS = ("learning_rate", "loraplus_lr_ratio", "output_dir", "max_steps", "overwrite", "resume",
                  "save_checkpoints")  # fmt: skip


@dataclass(frozen=True)
class TuneConfig(TrainConfig):
    """A ``TrainConfig`` shared by every trial, plus the search: trials, budget, ranges, metric, storage, workers.

    ``max_steps`` is the full run's length (the best trial is run at it); ``budget`` the steps of each trial.

    Raises:
        ValueError: ``trials`` < 1; an empty or inverted lr or ratio range; a ``budget`` below one evaluation
            (``eval_steps``) or above ``max_steps``; no step count at all (``max_steps`` -1 and no ``budget``);
            an unknown pruner or a metric the task does not report; ``loraplus_lr_ratio=auto``; an option the
            tuner sets itself (``SET_BY_EXPERIMENT``).
    """

    SET_BY_EXPERIMENT: ClassVar[dict[str, str]] = {
        "learning_rate": "--lr-a-min/--lr-a-max (lr_A is tuned)",
        "resume": "nothing: rerunning the command continues the study",
        "overwrite": "another --study-name or --output-dir (a study's finished trials are never replaced)",
    }

    output_dir: str = _opt("runs/tune", "tuning folder: study.db, trials/, best/, trials.csv, best.yaml, *.png")
    loraplus_lr_ratio: float | str | None = _opt(None, "a fixed λ = lr_B / lr_A (default: λ is tuned over "
                                                 "--ratio-min..--ratio-max)")  # fmt: skip
    trials: int = _opt(12, "trials of the study (a resumed study runs only the missing ones)")
    budget: int | None = _opt(None, "optimizer steps of each trial (default: --max-steps)")
    lr_a_min: float | None = _opt(None, "smallest lr_A (default: the task's learning rate / 10)")
    lr_a_max: float | None = _opt(None, "largest lr_A (default: the task's learning rate x 10)")
    ratio_min: float = _opt(1.0, "smallest λ tried")
    ratio_max: float = _opt(64.0, "largest λ tried")
    metric: str | None = _opt(None, "validation metric to optimise: accuracy, macro_f1, loss, perplexity "
                              "(default: accuracy, or loss for sft)")  # fmt: skip
    pruner: str = _opt("hyperband", f"stops unpromising trials at an evaluation: {', '.join(PRUNERS)}")
    storage: str | None = storage_option()
    study_name: str = _opt(STUDY_NAME, "name of the study in the storage")
    jobs: int = _opt(1, "worker processes on this machine (each gets cpu_count / jobs threads)")

    def __post_init__(self) -> None:
        check_not_set_by_experiment(self)
        ratio = self.loraplus_lr_ratio
        if isinstance(ratio, str) and ratio.strip().lower() == AUTO:
            raise ValueError("tune takes a number for --loraplus-lr-ratio (a fixed λ) or none (λ is tuned), got 'auto'")
        if ratio is not None:  # a fixed λ: the range collapses to it (validated by TrainConfig below)
            object.__setattr__(self, "ratio_min", float(ratio))
            object.__setattr__(self, "ratio_max", float(ratio))
        object.__setattr__(self, "loraplus_lr_ratio", DEFAULT_LORAPLUS_LR_RATIO if ratio is None else ratio)
        super().__post_init__()
        task = get_task(self.task)
        if self.metric is None:
            object.__setattr__(self, "metric", "accuracy" if "accuracy" in task.metrics else "loss")
        if self.metric not in task.metrics:
            raise ValueError(f"metric {self.metric!r} is not reported by --task {self.task} (its runs report "
                             f"{', '.join(task.metrics)})")  # fmt: skip
        for name in ("lr_a_min", "lr_a_max"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.learning_rate * (0.1 if name == "lr_a_min" else 10.0))
        _int_at_least("trials", self.trials, 1)
        _int_at_least("jobs", self.jobs, 1)
        for low, high, what in ((self.lr_a_min, self.lr_a_max, "lr_a"), (self.ratio_min, self.ratio_max, "ratio")):
            if not (0 < low and math.isfinite(high)) or (low >= high if what == "lr_a" else low > high):
                raise ValueError(f"the {what} range must be 0 < {what}_min {'<' if what == 'lr_a' else '<='} "
                                 f"{what}_max (finite), got {low!r} .. {high!r}")  # fmt: skip
        if self.budget is None:
            if self.max_steps == -1:
                raise ValueError("tune needs a step count: give --budget STEPS (each trial) and --max-steps STEPS "
                                 "(the best trial's full run)")  # fmt: skip
            object.__setattr__(self, "budget", self.max_steps)
        _int_at_least("budget", self.budget, self.eval_steps, f" (one evaluation: --eval-steps {self.eval_steps})")
        if self.max_steps == -1:
            object.__setattr__(self, "max_steps", self.budget)
        if self.budget > self.max_steps:
            raise ValueError(f"budget ({self.budget} steps) exceeds max_steps ({self.max_steps}), the full run's length")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if not self.study_name.strip():
            raise ValueError("study_name must not be empty")

    @property
    def ratio_fixed(self) -> bool:
        return self.ratio_min == self.ratio_max

    def storage_url(self) -> str:
        return storage_url(self.output_dir, self.storage)

    def trial_config(self, lr_a: float, ratio: float, number: int | None, steps: int) -> TrainConfig:
        """The run of one trial (``number``) or, with ``number=None``, the best trial's full run (``best/``)."""
        prefix = "" if self.study_name == STUDY_NAME else f"{self.study_name}-"  # studies sharing a folder
        folder = Path(self.output_dir) / (f"{prefix}best" if number is None else f"trials/{prefix}trial-{number}")
        return run_config(self, learning_rate=lr_a, loraplus_lr_ratio=ratio, output_dir=str(folder), max_steps=steps)

    def study_identity(self) -> dict:
        """What a study is for: every option of its trials but those the study sets, the budget, ranges and metric."""
        options = {k: v for k, v in run_config(self).to_dict().items() if k not in _TRIAL_OPTIONS}
        search = {k: getattr(self, k) for k in ("budget", "lr_a_min", "lr_a_max", "ratio_min", "ratio_max", "metric",
                                                "pruner")}  # fmt: skip
        return identity_of({**options, **search})


def _int_at_least(name: str, value, low: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{why}, got {value!r}")


class OptunaReporter(TrainerCallback):
    """Reports the validation ``metric`` to the Optuna ``trial`` at every evaluation; raises ``optuna.TrialPruned``
    when the pruner says so (the run stops there)."""

    def __init__(self, trial, metric: str):
        self.trial, self.key = trial, f"eval_{metric}"

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        import optuna

        if metrics and self.key in metrics:
            self.trial.report(float(metrics[self.key]), state.global_step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {state.global_step} ({self.key} {metrics[self.key]:.4g})")


def _study(cfg: TuneConfig):
    """The study in ``cfg``'s storage (created if missing); refuses a study made for other data, model or search.

    Raises:
        ValueError: the storage cannot be opened, or its study was made with other options (names them).
    """
    import optuna

    url = cfg.storage_url()
    storage = open_storage(url)
    pruner = {"hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=cfg.eval_steps, max_resource=cfg.budget),
              "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.eval_steps),
              "none": optuna.pruners.NopPruner}[cfg.pruner]()  # fmt: skip
    direction = "minimize" if cfg.metric in LOWER_IS_BETTER else "maximize"
    study = open_study(storage, url, cfg.study_name, direction=direction, pruner=pruner,
                       sampler=optuna.samplers.TPESampler(seed=cfg.seed))  # fmt: skip  # reseeded below
    study.sampler = optuna.samplers.TPESampler(
        seed=_sampler_seed(cfg, len(study.get_trials(deepcopy=False))), n_startup_trials=min(4, cfg.trials),
        constant_liar=True)  # fmt: skip  # constant liar: running trials count as tried
    identity = cfg.study_identity()
    recorded = study.user_attrs.get("identity")
    if recorded is None:
        study.set_user_attr("identity", identity)
    else:
        changed = differences(recorded, identity)
        if changed:
            raise ValueError(f"study {cfg.study_name!r} in {url!r} was made for other options or data "
                             f"({'; '.join(changed)}); give another --study-name or --output-dir")  # fmt: skip
    return study


WORKER_ENV = "LORAPLUS_TUNE_WORKER"


def _sampler_seed(cfg: TuneConfig, existing: int) -> int:
    """The sampler's seed (``studies.worker_seed``): shared when this is one of several worker processes
    (``jobs`` > 1) or the storage is given (another machine may work on it)."""
    return worker_seed(cfg.seed, existing, shared=os.environ.get(WORKER_ENV) is not None or cfg.storage is not None)


def _objective(cfg: TuneConfig):
    def objective(trial) -> float:
        lr_a = trial.suggest_float("lr_A", cfg.lr_a_min, cfg.lr_a_max, log=True)
        ratio = cfg.ratio_min if cfg.ratio_fixed else trial.suggest_float("ratio", cfg.ratio_min, cfg.ratio_max, log=True)
        trial.set_user_attr("ratio", ratio)
        run = cfg.trial_config(lr_a, ratio, trial.number, cfg.budget)
        try:
            metrics = run_train(run, callbacks=[OptunaReporter(trial, cfg.metric)])
        except Exception as err:
            import optuna

            if not isinstance(err, optuna.TrialPruned):
                trial.set_user_attr("error", f"{type(err).__name__}: {' '.join(str(err).split())}"[:500])
            raise
        trial.set_user_attr("test", metrics["test"].get(cfg.metric))
        trial.set_user_attr("steps", metrics["train"]["steps"])
        value = metrics["validation"].get(cfg.metric)
        if value is None or not math.isfinite(value):
            raise ValueError(f"the run reported no finite validation {cfg.metric}")
        return float(value)

    return objective


def _trial_count(study) -> int:
    """Trials of the study in any state (a running one of another worker, or a killed one, counts)."""
    return len(study.get_trials(deepcopy=False))


def _work(cfg: TuneConfig, study=None) -> None:
    """One worker: run trials until the study holds ``cfg.trials`` (counting running ones of other workers);
    ``study``: the study already open in this process (else it is opened)."""
    import optuna

    study = study or _study(cfg)
    if _trial_count(study) >= cfg.trials:
        return
    study.optimize(_objective(cfg), n_trials=cfg.trials, catch=(Exception,),
                   callbacks=[optuna.study.MaxTrialsCallback(cfg.trials, states=None)])  # fmt: skip


def _run_workers(cfg: TuneConfig, study) -> None:
    """``cfg.jobs`` worker processes (``python -m loraplus.experiments.tune CONFIG``), or this process for one."""
    if cfg.jobs == 1:
        _work(cfg, study)
        return
    out = Path(cfg.output_dir)
    config_file = out / "tune.yaml"  # the same TuneConfig: lr and λ as ranges, not as the placeholders they resolved to
    drop = (*cfg.SET_BY_EXPERIMENT, *(() if cfg.ratio_fixed else ("loraplus_lr_ratio",)))  # refused in a config file
    write_run_config(cfg, config_file, drop=drop)
    threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    procs = []
    for i in range(cfg.jobs):
        log = open(out / f"worker-{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "loraplus.experiments.tune", str(config_file)],
                                       stdout=log, stderr=subprocess.STDOUT, env={**env, WORKER_ENV: str(i)}), log))  # fmt: skip
    try:
        codes = [proc.wait() for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.terminate()
            log.close()
    if any(codes):
        bad = next(i for i, c in enumerate(codes) if c)
        raise RuntimeError(f"tune worker {bad} exited with status {codes[bad]}; see {out / f'worker-{bad}.log'}")


def run_tune(cfg: TuneConfig) -> dict:
    """Run (or continue) the study, then the best trial at the full ``max_steps``; write the outputs.

    Returns ``{"best": {"trial", "lr_A", "ratio", "validation", "test", "steps"}, "trials": [rows], "counts":
    {state: n}, "storage", "steps_used"}`` (``steps_used``: optimizer steps of every trial and the final run).

    Raises:
        ValueError: see ``TuneConfig`` and ``_study``; no trial completed.
        runfolder.FolderLocked: another process is tuning in ``output_dir`` (workers elsewhere share a storage, not
            an output folder).
    """
    check_storage(cfg.storage)  # a bad URL is refused before the folder is made
    with experiment_folder(cfg, cfg.metric):
        study = _study(cfg)  # a bad storage or a study of other options: refused before any trial
        _run_workers(cfg, study)
        study = study if cfg.jobs == 1 else _study(cfg)  # the workers' trials, read afresh
        rows = trial_rows(study, cfg)
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if not complete:
            errors = sorted({r["error"] for r in rows if r.get("error")})
            raise ValueError(f"no trial of study {cfg.study_name!r} completed ({len(rows)} ran)"
                             + (f"; first error: {errors[0]}" if errors else ""))  # fmt: skip
        best = study.best_trial
        lr_a, ratio = best.params["lr_A"], best.user_attrs["ratio"]
        final = cfg.trial_config(lr_a, ratio, None, cfg.max_steps)
        trial = cfg.trial_config(lr_a, ratio, best.number, cfg.budget)
        if cfg.budget == cfg.max_steps and (Path(trial.output_dir) / "metrics.json").is_file():
            final = trial  # the trial already ran the full length here (not on another machine of the storage)
            metrics = json.loads((Path(final.output_dir) / "metrics.json").read_text())
        elif (Path(final.output_dir) / "metrics.json").exists():
            metrics = _reuse(final)
        else:
            metrics = run_train(final)
        summary = _write_outputs(cfg, study, rows, final, best, metrics)
    return summary


def _reuse(final: TrainConfig) -> dict:
    """A finished ``best/`` run of exactly these options (else it is run again with ``overwrite``)."""
    from ..runfolder import read_identity

    out = Path(final.output_dir)
    if not differences(read_identity(out) or {}, identity_of(final.to_dict())):
        return json.loads((out / "metrics.json").read_text())
    return run_train(TrainConfig(**{**final.to_dict(), "overwrite": True}))


def trial_rows(study, cfg: TuneConfig) -> list[dict]:
    """One row per trial: ``number``, ``state``, ``lr_A``, ``ratio``, ``lr_B``, ``validation`` (the objective),
    ``test``, ``steps`` (reached), ``error`` (a failed trial's message)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        lr_a, ratio = t.params.get("lr_A"), t.user_attrs.get("ratio")
        last = t.last_step
        rows.append({
            "number": t.number, "state": t.state.name, "lr_A": lr_a, "ratio": ratio,
            "lr_B": lr_a * ratio if lr_a is not None and ratio is not None else None,
            "validation": t.value if t.value is not None else (t.intermediate_values.get(last) if last is not None else None),
            "test": t.user_attrs.get("test"), "steps": t.user_attrs.get("steps", last), "error": t.user_attrs.get("error"),
        })  # fmt: skip
    return rows


def _write_outputs(cfg: TuneConfig, study, rows: list[dict], final: TrainConfig, best, metrics: dict) -> dict:
    import csv
    import io

    out = Path(cfg.output_dir)
    reused = Path(final.output_dir).parent.name == "trials"  # the best trial itself, not a run of its own
    steps_used = sum(r["steps"] or 0 for r in rows) + (0 if reused else metrics["train"]["steps"])
    counts = dict(Counter(row["state"] for row in rows))
    summary = {
        "best": {"trial": best.number, "lr_A": best.params["lr_A"], "ratio": best.user_attrs["ratio"],
                 "validation": metrics["validation"].get(cfg.metric), "test": metrics["test"].get(cfg.metric),
                 "steps": metrics["train"]["steps"], "run": str(final.output_dir)},  # fmt: skip
        "metric": cfg.metric, "trials": rows, "counts": counts, "storage": cfg.storage_url(), "steps_used": steps_used,
    }
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "trials.csv", buffer.getvalue())
    atomic_write_json(out / "trials.json", {"config": cfg.to_dict(), **summary})
    rerun = TrainConfig(**{**final.to_dict(), "output_dir": str(out / "retrained"), "save_checkpoints": True})
    write_run_config(rerun, out / "best.yaml")
    _plots(study, cfg, out)
    return summary


def _plots(study, cfg: TuneConfig, out: Path) -> None:
    """Optuna's matplotlib plots: optimisation history, and lr_A × λ contour (slice when λ is fixed or too few)."""
    import warnings

    import optuna.visualization.matplotlib as vis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        ax = vis.plot_optimization_history(study)
        ax.figure.tight_layout()
        save_figure(ax.figure, out / "history.png")
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if not cfg.ratio_fixed and len(complete) >= 3:
            axes = vis.plot_contour(study, params=["lr_A", "ratio"])
        else:
            axes = vis.plot_slice(study)
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        figure.set_size_inches(7, 5)
        figure.tight_layout()
        save_figure(figure, out / "params.png")


def tune_text(summary: dict) -> str:
    best, counts = summary["best"], summary["counts"]
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    return (f"{sum(counts.values())} trials ({states}); best: trial {best['trial']}, lr_A {best['lr_A']:.3g}, "
            f"λ {best['ratio']:.3g} (lr_B {best['lr_A'] * best['ratio']:.3g}); full run of {best['steps']} steps: "
            f"validation {summary['metric']} {best['validation']:.4f}, test {summary['metric']} {best['test']:.4f}; "
            f"{summary['steps_used']} training steps in all")  # fmt: skip


def read_tune_config(path: Path) -> TuneConfig:
    """The ``TuneConfig`` of a worker's ``tune.yaml`` (written by ``_run_workers``)."""
    from ..configfile import read_config_file

    return TuneConfig(**read_config_file(path, TuneConfig))


if __name__ == "__main__":  # a worker process of run_tune: run trials until the study is full
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    _work(read_tune_config(Path(sys.argv[1])))
