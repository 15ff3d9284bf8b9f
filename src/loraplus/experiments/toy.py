"""``loraplus toy``: the paper's Section 3 argument, runnable.

Two measurements, both written to one output folder:

1. ``delta_scaling.{json,png}`` — the exact Section 3 rank-1 model under plain GD: how the three parts
   δ¹ (A moves), δ² (B moves), δ³ (both) of one step's output change scale with width n under equal
   Θ(1) rates, equal Θ(1/n) rates and LoRA+ (η_a = c/n, η_b = c). See :mod:`.toy_delta`.
2. ``ratio_exponent.{json,png}`` — a trained teacher–student LoRA toy with Adam over an (lr_A, lr_B)
   grid per width: the optimal lr_B/lr_A per width and its fitted exponent (paper: 1; Su 2024: 1/2).
   See :mod:`.toy_train`.

Source: Hayou et al. 2024, Sec. 3.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import _opt, coerce_fields
from ..io import atomic_write_with
from .toy_delta import SCALINGS, TERMS, DeltaToyConfig, delta_scaling, plot_delta_scaling
from .toy_train import ESTIMATORS, TrainToyConfig, plot_ratio_exponent, ratio_exponent

__all__ = ["ToyCommand", "run_toy", "toy_summary_text", "toy_configs", "DeltaToyConfig", "TrainToyConfig"]

#: Presets: the default run (minutes) and the quick one (seconds, for tests and smoke runs).
DEFAULT_DELTA = DeltaToyConfig()
DEFAULT_TRAIN = TrainToyConfig()
QUICK_DELTA = DeltaToyConfig(widths=(64, 128, 256, 512, 1024), seeds=64)
QUICK_TRAIN = TrainToyConfig(widths=(8, 16, 32), seeds=2, samples=8, steps=20, last_k=2,
                             log2_lr_A=(-8.0, 0.0), log2_lr_B=(-6.0, 0.0))


def toy_configs(*, quick: bool = False, widths: Sequence[int] | None = None, seeds: int | None = None,
                delta_steps: int | None = None, delta_lr: float | None = None,
                train_widths: Sequence[int] | None = None, train_seeds: int | None = None,
                train_steps: int | None = None, regimes: Sequence[str] | None = None,
                samples: int | None = None, rank: int | None = None,
                log2_lr_A: tuple[float, float] | None = None, log2_lr_B: tuple[float, float] | None = None,
                seed: int = 0) -> tuple[DeltaToyConfig, TrainToyConfig]:
    """The two validated configs of :func:`run_toy`: a preset (default or ``quick``) with every option
    that is not None put in its place (train_steps also sets last_k to 10 % of the steps, ≥ 1).
    Raises ValueError naming a bad value."""
    def given(**kw) -> dict:
        return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kw.items() if v is not None}

    delta = replace(QUICK_DELTA if quick else DEFAULT_DELTA,
                    **given(widths=widths, seeds=seeds, steps=delta_steps, lr=delta_lr, seed=seed))
    last_k = None if not isinstance(train_steps, int) else max(1, train_steps // 10)  # the last 10 %
    train = replace(QUICK_TRAIN if quick else DEFAULT_TRAIN,
                    **given(widths=train_widths, seeds=train_seeds, steps=train_steps, last_k=last_k,
                            regimes=regimes, samples=samples, rank=rank, log2_lr_A=log2_lr_A,
                            log2_lr_B=log2_lr_B, seed=seed))
    return delta, train


def run_toy(out_dir: str | Path, *, widths: Sequence[int] | None = None, seeds: int | None = None,
            delta_steps: int | None = None, delta_lr: float | None = None, train: bool = True,
            train_widths: Sequence[int] | None = None, train_seeds: int | None = None,
            train_steps: int | None = None, regimes: Sequence[str] | None = None, samples: int | None = None,
            rank: int | None = None, log2_lr_A: tuple[float, float] | None = None,
            log2_lr_B: tuple[float, float] | None = None, seed: int = 0, quick: bool = False) -> dict:
    """Run the Section 3 toy experiments and write their results to ``out_dir``.

    Writes ``delta_scaling.json`` / ``.png`` and, when ``train``, ``ratio_exponent.json`` / ``.png``
    (each atomically: a temp file in ``out_dir``, then ``os.replace``). Options left at None take the
    preset's value (``quick=False`` / ``quick=True``):

    - widths: δ widths n, powers of two ≥ 2 (2^6..2^13 / 2^6..2^10); seeds: random problems per width
      (256 / 64); delta_steps: GD steps T ≥ 2, statistics over steps 2..T (5); delta_lr: base rate c (0.1).
    - train_widths: (64..2048 / 8..32); train_seeds (5 / 2); train_steps: Adam steps (100 / 20);
      regimes: subset of ("fixed", "population") (both); samples: N training inputs of the fixed
      regime (32 / 8); rank: LoRA r (4); log2_lr_A, log2_lr_B: (low, high) grid ranges
      ((-16, 0), (-12, 0) / (-8, 0), (-6, 0)); seed: base seed (0).

    Returns a summary dict: ``delta`` (slopes per scaling per term, bootstrap std, diverged widths),
    ``ratio`` (per regime: optimal ratio per width for each estimator, exponents ± spread over
    seeds; None when ``train`` is False), ``wall_s``, ``files``, ``out_dir``. Raises ValueError
    naming a bad option. Default run: ~2-4 min on 2 CPU cores (one torch thread). Source: Hayou et al. 2024, Sec. 3.
    """
    delta_cfg, train_cfg = toy_configs(
        quick=quick, widths=widths, seeds=seeds, delta_steps=delta_steps, delta_lr=delta_lr,
        train_widths=train_widths, train_seeds=train_seeds, train_steps=train_steps, regimes=regimes,
        samples=samples, rank=rank, log2_lr_A=log2_lr_A, log2_lr_B=log2_lr_B, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    delta = delta_scaling(delta_cfg)
    delta["wall_s"] = time.perf_counter() - t0
    files = {"delta_scaling.json": _write_json(out / "delta_scaling.json", delta)}
    files["delta_scaling.png"] = atomic_write_with(out / "delta_scaling.png", lambda p: plot_delta_scaling(delta, p))
    ratio = None
    if train:
        t1 = time.perf_counter()
        ratio = ratio_exponent(train_cfg)
        ratio["wall_s"] = time.perf_counter() - t1
        files["ratio_exponent.json"] = _write_json(out / "ratio_exponent.json", ratio)
        files["ratio_exponent.png"] = atomic_write_with(out / "ratio_exponent.png", lambda p: plot_ratio_exponent(ratio, p))
    summary = {"out_dir": str(out), "files": files, "delta": _delta_summary(delta),
               "ratio": None if ratio is None else _ratio_summary(ratio),
               "wall_s": {"delta": delta["wall_s"], "train": None if ratio is None else ratio["wall_s"],
                          "total": time.perf_counter() - t0}}
    return summary


def _write_json(path: Path, obj: dict) -> str:
    """Strict JSON (no NaN/inf: those are stored as null), written atomically."""
    text = json.dumps(obj, indent=1, allow_nan=False)
    return atomic_write_with(path, lambda p: p.write_text(text + "\n", encoding="utf-8"))


def _delta_summary(delta: dict) -> dict:
    """Slopes per scaling per term from :func:`delta_scaling`'s result."""
    sc = delta["scalings"]
    return {"statistic": f"seed-mean of |δ| averaged over steps 2..{delta['steps']} ({delta['seeds']} seeds)",
            "slopes": {s: sc[s]["slopes_mean_2_T"] for s in SCALINGS},
            "slope_std": {s: sc[s]["slope_std_mean_2_T"] for s in SCALINGS},
            "slopes_step2": {s: sc[s]["slopes_step2"] for s in SCALINGS},
            "diverged_widths": {s: [n for n, d in zip(delta["widths"], sc[s]["diverged_seeds"]) if d]
                                for s in SCALINGS}}


def _ratio_summary(ratio: dict) -> dict:
    """Optimal ratio per width and exponents per regime (train metric) from :func:`ratio_exponent`."""
    out = {"widths": ratio["config"]["widths"], "seeds": ratio["config"]["seeds"], "regimes": {}}
    for regime, rec in ratio["regimes"].items():
        pw, ex = rec["train"]["per_width"], rec["train"]["exponents"]
        out["regimes"][regime] = {
            "optimal_ratio": {e: [2.0 ** w[e] for w in pw] for e in ESTIMATORS + ("band_lo",)},
            "band_censored": [[w["band_lo_censored"], w["band_hi_censored"]] for w in pw],
            "best_on_grid_edge": [w["best_on_grid_edge"] for w in pw],
            "exponent": {e: ex[e] for e in ESTIMATORS},
            "lr_exponents": {k: ex[f"best_log2_{k}"]["pooled"] for k in ("lr_A", "lr_B")},
            "test_exponent": {e: rec["test"]["exponents"][e] for e in ESTIMATORS}}
    return out


def toy_summary_text(summary: dict) -> str:
    """One plain-text paragraph describing a :func:`run_toy` summary, for printing."""
    d = summary["delta"]
    parts = [f"Section 3 toy ({d['statistic']}): log-log slopes of |δ¹|, |δ²|, |δ³| vs width n —"]
    for s in SCALINGS:
        sl = ", ".join(_f(d["slopes"][s][t]) for t in TERMS)
        div = d["diverged_widths"][s]
        parts.append(f"{s}: {sl}" + (f" (diverged at n = {div})" if div else "") + ";")
    parts.append("theory: equal_1 (≥1, 0, ≥1: blows up), equal_1_over_n (−2, −1, −2 in the first steps), "
                 "loraplus (0, 0, 0).")
    r = summary["ratio"]
    if r is None:
        parts.append("Trained toy skipped.")
    else:
        for regime, rec in r["regimes"].items():
            ex = rec["exponent"]
            est = "; ".join(f"{e} {_f(ex[e]['pooled'])} (seeds {_f(ex[e]['mean'])} ± {_f(ex[e]['std'])})"
                            for e in ESTIMATORS)
            ratios = ", ".join(f"{q:.3g}" for q in rec["optimal_ratio"]["smoothed"])
            edge = sum(rec["best_on_grid_edge"])
            parts.append(f"Trained toy, {regime} regime, widths {r['widths']}, {r['seeds']} seeds: optimal "
                         f"lr_B/lr_A (smoothed) {ratios}"
                         + (f" (best cell on the grid's edge at {edge} of {len(r['widths'])} widths)" if edge else "")
                         + f"; fitted exponent e in ratio ∝ n^e: {est}.")
        parts.append("Paper predicts e = 1, Su (2024) e = 1/2.")
    parts.append(f"Wall time {summary['wall_s']['total']:.0f} s; files in {summary['out_dir']}.")
    return " ".join(parts)


def _f(v: float | None) -> str:
    """Signed number with 2 decimals, or 'n/a' (not finite / not measured)."""
    return "n/a" if v is None else f"{v:+.2f}"


@dataclass(frozen=True)
class ToyCommand:
    """Options of ``loraplus toy`` (defaults: the committed run in ``experiments/toy``)."""

    output_dir: str = _opt("runs/toy", "folder for delta_scaling.json/.png and ratio_exponent.json/.png")
    quick: bool = _opt(False, "small widths, seeds and grids: seconds instead of minutes")
    train: bool = _opt(True, "also run the trained toy (optimal lr_B / lr_A against width); --no-train skips it")
    widths: tuple[str, ...] | None = _opt(None, "widths n of the δ experiment, comma-separated (default 2^6..2^13)")
    seeds: int | None = _opt(None, "seeds of the δ experiment (default 256)")
    train_widths: tuple[str, ...] | None = _opt(None, "widths of the trained toy (default 2^6..2^11)")
    train_seeds: int | None = _opt(None, "seeds of the trained toy (default 5)")

    def __post_init__(self) -> None:
        coerce_fields(self)

    def run(self) -> dict:
        def ints(name, values):
            try:
                return None if values is None else [int(v) for v in values]
            except ValueError:
                raise ValueError(f"{name} must be integers, got {values!r}") from None

        return run_toy(
            self.output_dir, widths=ints("widths", self.widths), seeds=self.seeds, train=self.train,
            train_widths=ints("train_widths", self.train_widths), train_seeds=self.train_seeds, quick=self.quick,
        )  # fmt: skip
