"""``loraplus sweep``: test metric over an (lr_A, lr_B) grid, the paper's main evidence (Hayou et al. 2024,
Sec. 5, Figures 3–4: the best cells lie above the diagonal lr_A = lr_B).

Each cell is a short ``loraplus train`` run with ``learning_rate = lr_A`` and ``loraplus_lr_ratio = lr_B / lr_A``
(the classification head, like A, gets lr_A). Cells are trials (enqueued) of the Optuna study ``sweep``
(in ``OUT/study.db`` or the ``storage`` given, which workers on several machines may share) and run folders
under ``OUT/cells``: a finished cell is never run again, so an interrupted sweep resumes.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..config import TrainConfig, _opt, check_not_set_by_experiment
from ..io import atomic_write_json, atomic_write_text, save_figure
from .runner import RunSpec, experiment_folder, run_all, run_config
from .studies import check_storage, storage_option

__all__ = ["SweepConfig", "plot_heatmap", "run_sweep", "summarize_grid"]

METRICS = ("accuracy", "macro_f1", "loss", "perplexity")


@dataclass(frozen=True)
class SweepConfig(TrainConfig):
    """A ``TrainConfig`` for every cell plus the grid. lr values are plain floats, log-spaced inclusive.

    Raises:
        ValueError: a bad grid, metric or seed list; an option the sweep sets itself (``SET_BY_EXPERIMENT``).
    """

    SET_BY_EXPERIMENT: ClassVar[dict[str, str]] = {
        "learning_rate": "--lr-a-min/--lr-a-max/--lr-a-points (lr_A of each cell)",
        "loraplus_lr_ratio": "--lr-b-min/--lr-b-max/--lr-b-points (lr_B of each cell; the ratio is lr_B / lr_A)",
        "seed": "--seeds",
    }

    output_dir: str = _opt("runs/sweep", "sweep folder: cells/, results.csv, results.json, heatmap.png")
    lr_a_min: float = _opt(3e-5, "smallest lr_A")
    lr_a_max: float = _opt(1e-3, "largest lr_A")
    lr_a_points: int = _opt(4, "number of lr_A values")
    lr_b_min: float = _opt(3e-5, "smallest lr_B")
    lr_b_max: float = _opt(1e-2, "largest lr_B")
    lr_b_points: int = _opt(5, "number of lr_B values")
    seeds: tuple[str, ...] = _opt(("0",), "comma-separated seeds; each cell is run once per seed")
    metric: str = _opt("accuracy", "metric of the heatmap: accuracy, macro_f1, loss, perplexity")
    jobs: int = _opt(2, "runs at once (each gets cpu_count / jobs threads)")
    storage: str | None = storage_option()

    def __post_init__(self) -> None:
        check_not_set_by_experiment(self)  # before the task fills in its defaults
        super().__post_init__()
        for name in ("lr_a_points", "lr_b_points", "jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for axis in ("a", "b"):
            low, high = getattr(self, f"lr_{axis}_min"), getattr(self, f"lr_{axis}_max")
            if not (0 < low <= high) or not math.isfinite(high):
                raise ValueError(f"need 0 < lr_{axis}_min <= lr_{axis}_max, got {low!r} and {high!r}")
            points = getattr(self, f"lr_{axis}_points")
            if (points == 1) != (low == high):  # one point is one value; several need a range to spread over
                raise ValueError(f"lr_{axis}_points={points} with lr_{axis}_min={low!r} and lr_{axis}_max={high!r}: "
                                 f"give one point for min == max, or min < max for several")  # fmt: skip
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        try:
            seeds = tuple(int(s) for s in self.seeds)
        except ValueError:
            raise ValueError(f"seeds must be integers, got {self.seeds!r}") from None
        if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, got {self.seeds!r}")

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(lr_A values, lr_B values), each log-spaced from min to max inclusive."""
        return (
            np.geomspace(self.lr_a_min, self.lr_a_max, self.lr_a_points),
            np.geomspace(self.lr_b_min, self.lr_b_max, self.lr_b_points),
        )

    def cell_config(self, lr_a: float, lr_b: float, seed: int) -> TrainConfig:
        folder = Path(self.output_dir) / "cells" / f"lrA{lr_a:.3g}_lrB{lr_b:.3g}_seed{seed}"
        with warnings.catch_warnings():  # cells below the diagonal have ratio < 1 on purpose
            warnings.simplefilter("ignore", UserWarning)
            return run_config(self, learning_rate=float(lr_a), loraplus_lr_ratio=float(lr_b / lr_a), seed=seed,
                              output_dir=str(folder))  # fmt: skip


def summarize_grid(rows: list[dict], lr_a: np.ndarray, lr_b: np.ndarray, metric: str) -> dict:
    """Mean/std of ``test_<metric>`` and ``validation_<metric>`` per cell over seeds, and the best cell.

    The best cell is chosen on the validation mean (lower is better for loss/perplexity), so the test number
    reported for it is not selected on test data.
    """
    shape = (len(lr_b), len(lr_a))
    sums = {split: [[[] for _ in lr_a] for _ in lr_b] for split in ("validation", "test")}
    for row in rows:
        if row.get("status") != "done":
            continue
        i, j = int(np.argmin(abs(lr_b - row["lr_B"]))), int(np.argmin(abs(lr_a - row["lr_A"])))
        for split in sums:
            if f"{split}_{metric}" in row:
                sums[split][i][j].append(row[f"{split}_{metric}"])
    mean = {s: np.array([[np.mean(c) if c else np.nan for c in r] for r in v]).reshape(shape) for s, v in sums.items()}
    std = {s: np.array([[np.std(c) if c else np.nan for c in r] for r in v]).reshape(shape) for s, v in sums.items()}
    lower_better = metric in ("loss", "perplexity")
    score = -mean["validation"] if lower_better else mean["validation"]
    best = None
    if np.isfinite(score).any():
        i, j = np.unravel_index(np.nanargmax(np.where(np.isfinite(score), score, -np.inf)), shape)
        best = {"lr_A": float(lr_a[j]), "lr_B": float(lr_b[i]), "ratio": float(lr_b[i] / lr_a[j]),
                f"validation_{metric}": float(mean["validation"][i, j]), f"test_{metric}": float(mean["test"][i, j])}  # fmt: skip
    return {
        "metric": metric, "lr_A": lr_a.tolist(), "lr_B": lr_b.tolist(),
        "test_mean": mean["test"].tolist(), "test_std": std["test"].tolist(),
        "validation_mean": mean["validation"].tolist(), "best": best,
    }  # fmt: skip


def plot_heatmap(summary: dict, path: str | Path, title: str = "", head: bool = True) -> None:
    """Heatmap of the test metric over (lr_A, lr_B), the diagonal lr_A = lr_B dashed, the best cell boxed.

    ``head``: the model has a classification head trained at lr_A (said on the x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    grid = np.array(summary["test_mean"], dtype=float)
    lr_a, lr_b = np.array(summary["lr_A"]), np.array(summary["lr_B"])
    fig, ax = plt.subplots(figsize=(1.2 * len(lr_a) + 2.5, 1.0 * len(lr_b) + 1.8))
    image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, "—" if np.isnan(value) else f"{value:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(lr_a)), [f"{v:.1e}" for v in lr_a], rotation=45)
    ax.set_yticks(range(len(lr_b)), [f"{v:.1e}" for v in lr_b])
    ax.set_xlabel("lr_A (= lr of the head)" if head else "lr_A")
    ax.set_ylabel("lr_B")
    diag = np.interp(np.log(lr_a), np.log(lr_b), np.arange(len(lr_b)), left=np.nan, right=np.nan)
    ax.plot(np.arange(len(lr_a)), diag, "w--", lw=1, label="lr_A = lr_B")
    if summary["best"]:
        j, i = list(lr_a).index(summary["best"]["lr_A"]), list(lr_b).index(summary["best"]["lr_B"])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5, label="best (validation)"))
    ax.legend(loc="upper left", fontsize=7, framealpha=0.6)
    fig.colorbar(image, ax=ax, label=f"test {summary['metric']}")
    ax.set_title(title or f"test {summary['metric']} over (lr_A, lr_B)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _rows_csv(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k != "curve"] if rows else []
    for row in rows:
        keys += [k for k in row if k not in keys and k != "curve"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def run_sweep(cfg: SweepConfig, *, progress: bool = True) -> dict:
    """Run (or resume) the sweep and write ``results.csv``, ``results.json`` and ``heatmap.png`` in ``output_dir``.

    Returns the summary (see ``summarize_grid``) with ``"rows"``, one per cell and seed.
    """
    check_storage(cfg.storage)  # a bad URL is refused before the folder is made
    with experiment_folder(cfg, cfg.metric):
        return _run_sweep(cfg, progress)


def _run_sweep(cfg: SweepConfig, progress: bool) -> dict:
    lr_a, lr_b = cfg.grid()
    specs = [
        RunSpec(cfg.cell_config(a, b, int(seed)), {"lr_A": float(a), "lr_B": float(b), "ratio": float(b / a), "seed": int(seed)},
                study="sweep")
        for seed in cfg.seeds for b in lr_b for a in lr_a
    ]  # fmt: skip
    rows = [{k: v for k, v in row.items() if k != "record"} for row in run_all(
        specs, storage=cfg.storage, folder=cfg.output_dir, metric=cfg.metric, jobs=cfg.jobs, progress=progress,
        overwrite=cfg.overwrite)]  # fmt: skip
    summary = summarize_grid(rows, lr_a, lr_b, cfg.metric)
    out = Path(cfg.output_dir)
    atomic_write_text(out / "results.csv", _rows_csv(rows))
    atomic_write_json(out / "results.json", {"config": cfg.to_dict(), **summary, "rows": rows})
    title = f"{cfg.model} on {cfg.dataset}: test {cfg.metric}, seeds {','.join(cfg.seeds)}"
    plot_heatmap(summary, out / "heatmap.png", title, head=cfg.task == "classification")
    return {**summary, "rows": rows}
