"""``loraplus compare``: LoRA, LoRA+ and PEFT's other answers to the A/B imbalance, each with its own tuned lr.

Stage 1 tunes: every method runs once per lr of a shared grid (seed ``tune_seed``); the lr with the best final
validation metric wins. Stage 2 runs each method at its lr for every seed. Every run is a trial of its method's
Optuna study (``compare-<method>``, its runs enqueued, in ``OUT/study.db`` or the ``storage`` given) and a
resumable run folder (``runs/<method>/lr<lr>_seed<s>``). Outputs: ``results/<method>_seed<s>.json`` (resolved
config, seed, metric at every evaluation, wall time, package versions), ``summary.md`` (mean ± std of the final
test metric, steps-to-target and speed-up over LoRA), ``summary.json``, and the curves ``metric.png`` and
``train_loss.png``.

Which lr the classification head gets: ``lr`` (= lr_A) for every method, except ``loraplus-head-lrB`` where it
takes lr_B = λ · lr, and ``lorafa`` where PEFT's optimizer gives every trainable tensor ``lr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..config import AUTO, TrainConfig, _opt, check_not_set_by_experiment
from ..io import atomic_write_json, atomic_write_text, save_figure
from .runner import RunSpec, experiment_folder, run_all, run_config
from .studies import check_storage, storage_option

__all__ = ["METHODS", "CompareConfig", "run_compare", "steps_to_target"]

# method -> (uses the comparison's λ, TrainConfig overrides); the others train at ratio 1.
METHODS: dict[str, tuple[bool, dict]] = {
    "lora": (False, {}),
    "loraplus": (True, {}),
    "loraplus-head-lrB": (True, {}),  # the head and other non-LoRA tensors at lr_B = λ · lr
    "rslora": (False, {"use_rslora": True}),
    "dora": (False, {"use_dora": True}),
    "lorafa": (False, {"optimizer": "lorafa"}),
    "riemannian": (False, {"optimizer": "riemannian"}),
}


@dataclass(frozen=True)
class CompareConfig(TrainConfig):
    """A ``TrainConfig`` shared by every run, plus the methods, the lr grid and the seeds; ``loraplus_lr_ratio``
    is the λ of the LoRA+ methods (the others run at 1).

    Raises:
        ValueError: a bad method, lr grid, seed list or metric; ``loraplus_lr_ratio=auto``; an option the
            comparison sets itself (``SET_BY_EXPERIMENT``).
    """

    SET_BY_EXPERIMENT: ClassVar[dict[str, str]] = {"learning_rate": "--lrs (each method's lr is tuned on it)",
                                                   "seed": "--seeds and --tune-seed"}  # fmt: skip

    output_dir: str = _opt("runs/compare", "comparison folder: runs/, results/, summary.md, *.png")
    eval_subset: int = _opt(0, "evaluations during training use the first N validation examples; 0 (compare's "
                            "default): the whole split every time, as steps-to-target reads every evaluation")
    methods: tuple[str, ...] = _opt(tuple(METHODS), f"comma-separated methods: {', '.join(METHODS)}")
    lrs: tuple[str, ...] = _opt(("1e-4", "3e-4", "1e-3"), "comma-separated lr grid (lr_A) every method is tuned on")
    seeds: tuple[str, ...] = _opt(("0", "1", "2"), "comma-separated seeds of the final runs")
    tune_seed: int = _opt(0, "seed of the tuning runs (reused as a final run when it is in seeds)")
    metric: str = _opt("accuracy", "metric: accuracy or macro_f1 (higher is better), or loss")
    target_fraction: float = _opt(0.99, "steps-to-target: first evaluation reaching this share of LoRA's final metric")
    jobs: int = _opt(2, "runs at once (each gets cpu_count / jobs threads)")
    storage: str | None = storage_option()

    def __post_init__(self) -> None:
        check_not_set_by_experiment(self)  # before the task fills in its defaults
        super().__post_init__()
        if self.loraplus_lr_ratio == AUTO:
            raise ValueError("compare needs a number for loraplus_lr_ratio (the λ of the LoRA+ methods), got 'auto'")
        if not self.methods:
            raise ValueError(f"methods is empty; choose from {', '.join(METHODS)}")
        twice = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if twice:
            raise ValueError(f"methods lists {', '.join(twice)} more than once")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown or self.methods!r}; choose from {', '.join(METHODS)}")
        try:
            lrs, seeds = [float(x) for x in self.lrs], [int(s) for s in self.seeds]
        except ValueError:
            raise ValueError(f"lrs must be numbers and seeds integers, got {self.lrs!r} and {self.seeds!r}") from None
        if not lrs or min(lrs) <= 0 or not np.isfinite(lrs).all():
            raise ValueError(f"lrs must be finite numbers > 0, got {self.lrs!r}")
        if len(set(lrs)) != len(lrs):
            raise ValueError(f"lrs lists a value more than once, got {self.lrs!r}")
        if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, got {self.seeds!r}")
        if self.metric not in ("accuracy", "macro_f1", "loss"):
            raise ValueError(f"metric must be accuracy, macro_f1 or loss, got {self.metric!r}")
        if not 0 < self.target_fraction <= 1:
            raise ValueError(f"target_fraction must be in (0, 1], got {self.target_fraction!r}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs!r}")

    def run_config(self, method: str, lr: float, seed: int) -> TrainConfig:
        uses_ratio, options = METHODS[method]
        options = {**options, "loraplus_lr_ratio": self.loraplus_lr_ratio if uses_ratio else 1.0}
        if method == "loraplus-head-lrB":
            options["loraplus_lr_other"] = lr * self.loraplus_lr_ratio
        folder = Path(self.output_dir) / "runs" / method / f"lr{lr:.3g}_seed{seed}"
        return run_config(self, **options, learning_rate=lr, seed=seed, output_dir=str(folder))


def _spec(cfg: CompareConfig, method: str, lr: float, seed: int) -> RunSpec:
    return RunSpec(cfg.run_config(method, lr, seed), {"method": method, "lr": lr, "seed": seed}, study=f"compare-{method}")


def _run(cfg: CompareConfig, specs: list[RunSpec], progress: bool) -> list[dict]:
    return run_all(specs, storage=cfg.storage, folder=cfg.output_dir, metric=cfg.metric, jobs=cfg.jobs,
                   progress=progress, overwrite=cfg.overwrite)  # fmt: skip


def _score(row: dict, metric: str) -> float:
    value = row.get(f"validation_{metric}", np.nan) if row.get("status") == "done" else np.nan
    return -value if metric == "loss" else value


def tune(cfg: CompareConfig, progress: bool) -> dict[str, float]:
    """Stage 1: ``{method: best lr}`` by final validation metric at ``tune_seed``."""
    lrs = [float(x) for x in cfg.lrs]
    specs = [_spec(cfg, m, lr, cfg.tune_seed) for m in cfg.methods for lr in lrs]
    rows = _run(cfg, specs, progress)
    best = {}
    for method in cfg.methods:
        scores = [_score(r, cfg.metric) for r in rows if r["method"] == method]
        if np.isnan(scores).all() and any(r["status"].startswith("running") for r in rows if r["method"] == method):
            raise ValueError(f"the tuning runs of {method} are running in another worker of storage "
                             f"{cfg.storage!r}; run the command again when they have finished")  # fmt: skip
        if np.isnan(scores).all():
            raise RuntimeError(f"every tuning run of {method} failed; see the logs under {cfg.output_dir}/runs/{method}")
        best[method] = lrs[int(np.nanargmax(scores))]
    return best


def steps_to_target(curve: list[dict], key: str, target: float, lower_better: bool = False) -> int | None:
    """First logged step whose ``key`` reaches ``target`` (``<=`` when lower is better), or ``None``."""
    for point in curve:
        if key in point and (point[key] <= target if lower_better else point[key] >= target):
            return int(point["step"])
    return None


def _method_stats(rows: list[dict], cfg: CompareConfig, target: float | None) -> dict:
    """Mean ± std of the final test metric and the steps-to-target over one method's final runs."""
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"].startswith("failed")]  # not: running in another worker
    finals = [r[f"test_{cfg.metric}"] for r in done]
    lower = cfg.metric == "loss"
    hits = [steps_to_target(r["curve"], f"eval_{cfg.metric}", target, lower) for r in done] if target else []
    reached = [h for h in hits if h is not None]
    return {
        "runs": len(done), "failed": len(failed), "elsewhere": len(rows) - len(done) - len(failed),
        "test_mean": float(np.mean(finals)) if finals else None, "test_std": float(np.std(finals)) if finals else None,
        "steps_to_target": _censored_median(hits),
        "reached_target": f"{len(reached)}/{len(hits)}", "seconds_mean": float(np.mean([r["seconds"] for r in done])) if done else None,
    }  # fmt: skip


def _censored_median(hits: list[int | None]) -> float | None:
    """Median steps-to-target over seeds, a seed that never reached it counting as infinitely many steps;
    ``None`` when fewer than half the seeds reached the target (the median is then not a number of steps)."""
    if not hits:
        return None
    median = float(np.median([np.inf if h is None else h for h in hits]))
    return median if np.isfinite(median) else None


def summarize(rows: list[dict], cfg: CompareConfig, best_lr: dict[str, float]) -> dict:
    """Per-method statistics; the target is ``target_fraction`` × tuned LoRA's mean final validation metric."""
    lora = [r[f"validation_{cfg.metric}"] for r in rows if r["method"] == "lora" and r["status"] == "done"]
    target = None
    if lora:
        base = float(np.mean(lora))
        target = base * cfg.target_fraction if cfg.metric != "loss" else base / cfg.target_fraction
    stats = {m: {"lr": best_lr[m], **_method_stats([r for r in rows if r["method"] == m], cfg, target)} for m in cfg.methods}
    base_steps = stats.get("lora", {}).get("steps_to_target")
    for s in stats.values():
        s["speedup_vs_lora"] = base_steps / s["steps_to_target"] if base_steps and s["steps_to_target"] else None
    return {"metric": cfg.metric, "target": target, "methods": stats}


def _head_lr(method: str, lr: float, cfg: CompareConfig) -> str:
    """The classification head's lr under ``method`` at ``lr``: lr_B for ``loraplus-head-lrB``, ``lr`` for PEFT's
    optimizers (they take no LoRA+ options), else ``--loraplus-lr-other`` when given, else ``lr``."""
    if cfg.task != "classification":
        return "— (no head)"
    if method == "loraplus-head-lrB":
        return f"{lr * cfg.loraplus_lr_ratio:.3g} (lr_B)"
    if cfg.loraplus_lr_other is not None and METHODS[method][1].get("optimizer") is None:
        return f"{cfg.loraplus_lr_other:.3g} (fixed)"
    return f"{lr:.3g}"


def summary_markdown(summary: dict, cfg: CompareConfig) -> str:
    """The summary table in markdown."""
    metric, fmt = summary["metric"], (lambda x, d=4: "—" if x is None else f"{x:.{d}f}")
    lines = [
        f"| method | lr (A) | lr of the head | test {metric} (mean ± std, {len(cfg.seeds)} seed{'s' if len(cfg.seeds) > 1 else ''}) | "
        f"steps to {cfg.target_fraction:g}× LoRA (median; seeds that reached it) | speed-up vs LoRA |",
        "|---|---|---|---|---|---|",
    ]
    for method, s in summary["methods"].items():
        lines.append(
            f"| {method} | {s['lr']:.3g} | {_head_lr(method, s['lr'], cfg)} | {fmt(s['test_mean'])} ± "
            f"{fmt(s['test_std'])} | {fmt(s['steps_to_target'], 1)} ({s['reached_target']}) | "
            f"{fmt(s['speedup_vs_lora'], 2)} |"
        )
    target = "—" if summary["target"] is None else f"{summary['target']:.4f}"
    lines.append(f"\nTarget: validation {metric} {target} ({cfg.target_fraction:g} × tuned LoRA's final).")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], key: str, path: Path, ylabel: str) -> None:
    """Mean over seeds of ``key`` against step, one line per method (band: min–max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method in dict.fromkeys(r["method"] for r in rows):
        curves = [{p["step"]: p[key] for p in r["curve"] if key in p} for r in rows if r["method"] == method and r["status"] == "done"]
        steps = sorted(set().union(*curves)) if curves else []
        if not steps:
            continue
        values = np.array([[c.get(s, np.nan) for s in steps] for c in curves])
        ax.plot(steps, np.nanmean(values, 0), label=method)
        ax.fill_between(steps, np.nanmin(values, 0), np.nanmax(values, 0), alpha=0.15)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if ax.lines:  # no finished run: an empty plot, without matplotlib's "no artists" warning
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def _write_results(rows: list[dict], cfg: CompareConfig) -> None:
    for row in rows:
        if row["status"] != "done":
            continue
        resolved = row["record"]  # the run's config.json, kept in its trial (the run may be another machine's)
        atomic_write_json(Path(cfg.output_dir) / "results" / f"{row['method']}_seed{row['seed']}.json", {
            "method": row["method"], "seed": row["seed"], "lr": row["lr"], "config": resolved["config"],
            "versions": resolved["versions"], "parameter_groups": resolved["parameter_groups"],
            "wall_time_s": row["seconds"], "final": {k: v for k, v in row.items() if k.startswith(("validation_", "test_"))},
            "evaluations": row["curve"],
        })  # fmt: skip


def run_compare(cfg: CompareConfig, *, progress: bool = True) -> dict:
    """Tune each method's lr, run every seed, and write results/, summary.md, summary.json and the plots."""
    check_storage(cfg.storage)  # a bad URL is refused before the folder is made
    with experiment_folder(cfg, cfg.metric):
        return _run_compare(cfg, progress)


def _run_compare(cfg: CompareConfig, progress: bool) -> dict:
    best_lr = tune(cfg, progress)
    specs = [_spec(cfg, m, best_lr[m], int(s)) for m in cfg.methods for s in cfg.seeds]
    rows = _run(cfg, specs, progress)
    summary = summarize(rows, cfg, best_lr)
    out = Path(cfg.output_dir)
    _write_results(rows, cfg)
    atomic_write_text(out / "summary.md", summary_markdown(summary, cfg))
    atomic_write_json(out / "summary.json", {"config": cfg.to_dict(), **summary})
    plot_curves(rows, f"eval_{cfg.metric}", out / "metric.png", f"validation {cfg.metric}")
    plot_curves(rows, "loss", out / "train_loss.png", "training loss")
    return summary
