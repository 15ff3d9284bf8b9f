"""The Section 3 toy model of LoRA+: how the three parts of one step's output change scale with width.

Model (rank 1, one training pair): ``f(x) = (W* + b aᵀ) x`` with ``x: (n,)``, ``W*: (1, n)`` frozen,
``a: (n,)`` (the "A" factor), ``b`` a scalar (the "B" factor). Init ``b0 = 0``, ``a0 ~ N(0, Iₙ/n)``.
Loss ``½ (f(x) − y)²``, ``U = f(x) − y``. Plain gradient descent::

    a_t = a_{t−1} − η_a U b_{t−1} x
    b_t = b_{t−1} − η_b U (a_{t−1}ᵀ x)

and the output change of step t splits exactly as ``Δf_t = δ¹ + δ² + δ³``::

    δ¹ = −η_a b² ‖x‖² U          (A moves)
    δ² = −η_b (aᵀx)² U           (B moves)
    δ³ =  η_a η_b U² b (aᵀx) ‖x‖²  (both move)

all evaluated at ``(a_{t−1}, b_{t−1})``. Source: Hayou et al. 2024, Sec. 3.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

#: The three learning-rate scalings compared (c is the base rate, n the width).
SCALINGS = ("equal_1", "equal_1_over_n", "loraplus")
SCALING_LABELS = {
    "equal_1": "equal lrs Θ(1): η_a = η_b = c",
    "equal_1_over_n": "equal lrs Θ(1/n): η_a = η_b = c/n",
    "loraplus": "LoRA+: η_a = c/n, η_b = c",
}
TERMS = ("delta1", "delta2", "delta3")


def check_widths(widths: Sequence[int], name: str = "widths") -> None:
    """Raise ValueError unless ``widths`` holds ≥ 2 distinct powers of two ≥ 2 (plain ints)."""
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) < 2:
        raise ValueError(f"{name} must hold at least 2 widths (powers of two >= 2), got {widths!r}")
    for n in widths:
        if not isinstance(n, int) or isinstance(n, bool) or n < 2 or n & (n - 1):
            raise ValueError(f"{name} must be powers of two >= 2, got {n!r} in {widths!r}")
    if len(set(widths)) != len(widths):
        raise ValueError(f"{name} must be distinct, got {widths!r}")


@dataclass(frozen=True)
class DeltaToyConfig:
    """Options of the δ-scaling measurement; checks itself (ValueError naming the bad value).

    widths: n values (distinct powers of two ≥ 2, at least 2); seeds: random problems per width (≥ 1);
    steps: GD steps T (≥ 2, statistics use steps 2..T); lr: the base rate c (> 0); seed: base seed.
    """

    widths: tuple[int, ...] = tuple(2**k for k in range(6, 14))
    seeds: int = 256
    steps: int = 5
    lr: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check_widths(self.widths, "widths")
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 1:
            raise ValueError(f"seeds must be an int >= 1, got {self.seeds!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 2:
            raise ValueError(f"delta steps must be an int >= 2 (δ¹ needs b ≠ 0, from step 2), got {self.steps!r}")
        lr_ok = isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and math.isfinite(self.lr)
        if not (lr_ok and self.lr > 0):
            raise ValueError(f"delta lr must be a finite float > 0, got {self.lr!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops on one intra-op thread inside the block, restoring the previous count after.

    The toy's tensors are small and batched; on the 2-core reference machine, under load, two intra-op
    threads made a training step 2-100× slower (thread hand-off dominates), so the toy runs on one.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def scaling_lrs(scaling: str, n: int, c: float) -> tuple[float, float]:
    """Return ``(η_a, η_b)`` for one scaling at width ``n`` with base rate ``c``.

    ``equal_1``: (c, c); ``equal_1_over_n``: (c/n, c/n); ``loraplus``: (c/n, c).
    Raises ValueError for an unknown scaling. Source: Hayou et al. 2024, Sec. 3.
    """
    if scaling == "equal_1":
        return c, c
    if scaling == "equal_1_over_n":
        return c / n, c / n
    if scaling == "loraplus":
        return c / n, c
    raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")


def delta_terms(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, u: torch.Tensor, *,
                lr_a: float, lr_b: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three parts of one GD step's output change, batched over leading dims.

    a, x: (..., n); b, u: (...) with ``u = f(x) − y`` at the current (a, b).
    Returns ``(δ¹, δ², δ³)``, each (...). Source: Hayou et al. 2024, Sec. 3.
    """
    z = (a * x).sum(-1)
    xx = (x * x).sum(-1)
    d1 = -lr_a * b**2 * xx * u
    d2 = -lr_b * z**2 * u
    d3 = lr_a * lr_b * u**2 * b * z * xx
    return d1, d2, d3


def gd_step(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w_star: torch.Tensor, *,
            lr_a: float, lr_b: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One plain gradient-descent step on ``½ (f(x) − y)²``, batched over leading dims.

    a, x, w_star: (..., n); b, y: (...). Returns ``(a_new, b_new, u)`` with ``u = f(x) − y``
    before the step. Source: Hayou et al. 2024, Sec. 3.
    """
    z = (a * x).sum(-1)
    u = (w_star * x).sum(-1) + b * z - y
    a_new = a - lr_a * (u * b).unsqueeze(-1) * x
    b_new = b - lr_b * u * z
    return a_new, b_new, u


def init_toy(n: int, seeds: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw ``seeds`` independent toy problems of width n (float64).

    x: (seeds, n) ~ N(0, 1) entries (so ‖x‖² ≈ n); W*: (seeds, n) ~ N(0, 1/n) (so W*x = Θ(1));
    y: (seeds,) ~ N(0, 1); a0: (seeds, n) ~ N(0, 1/n); b0 = 0. Source: Hayou et al. 2024, Sec. 3.
    """
    def draw(*shape: int, std: float = 1.0) -> torch.Tensor:
        return std * torch.randn(*shape, generator=generator, dtype=torch.float64)

    sd = 1.0 / math.sqrt(n)
    return {"x": draw(seeds, n), "w_star": draw(seeds, n, std=sd), "y": draw(seeds),
            "a": draw(seeds, n, std=sd), "b": torch.zeros(seeds, dtype=torch.float64)}


def simulate_deltas(n: int, *, scaling: str, seeds: int, steps: int, lr: float,
                    seed: int = 0) -> torch.Tensor:
    """|δ¹|, |δ²|, |δ³| of steps 1..steps for ``seeds`` random problems of width n.

    Returns (3, seeds, steps) float64; a diverged run shows inf/nan from that step on
    (recorded, never raised). Source: Hayou et al. 2024, Sec. 3.
    """
    lr_a, lr_b = scaling_lrs(scaling, n, lr)
    gen = torch.Generator().manual_seed(1_000_003 * seed + n)
    p = init_toy(n, seeds, gen)
    a, b = p["a"], p["b"]
    out = torch.empty(3, seeds, steps, dtype=torch.float64)
    for t in range(steps):
        a_new, b_new, u = gd_step(a, b, p["x"], p["y"], p["w_star"], lr_a=lr_a, lr_b=lr_b)
        for i, d in enumerate(delta_terms(a, b, p["x"], u, lr_a=lr_a, lr_b=lr_b)):
            out[i, :, t] = d.abs()
        a, b = a_new, b_new
    return out


def fit_loglog_slope(ns: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(n); nan if fewer than 2 finite positive points."""
    ns_arr, v = np.asarray(ns, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns_arr[ok]), np.log(v[ok]), 1)[0])


def _window_means(d: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-seed statistics from (3, seeds, steps): mean over steps 2..T and step 2 alone; non-finite → inf."""
    stats = {"mean_2_T": d[:, :, 1:].mean(-1), "step2": d[:, :, 1]}
    return {k: torch.where(torch.isfinite(v), v, torch.full_like(v, math.inf)) for k, v in stats.items()}


def _bootstrap_slope_std(widths: Sequence[int], per_seed: np.ndarray, rng: np.random.Generator,
                         reps: int = 200) -> float:
    """Std of the slope of log(seed-mean) vs log(n) over seed resamples. per_seed: (widths, seeds)."""
    seeds = per_seed.shape[1]
    slopes = []
    for _ in range(reps):
        idx = rng.integers(0, seeds, seeds)
        s = fit_loglog_slope(widths, per_seed[:, idx].mean(1))
        if math.isfinite(s):
            slopes.append(s)
    return float(np.std(slopes)) if len(slopes) > 1 else float("nan")


def delta_scaling(cfg: DeltaToyConfig) -> dict:
    """Measure how |δ¹|, |δ²|, |δ³| scale with width under the three scalings.

    For each scaling and width n: ``cfg.seeds`` random problems, ``cfg.steps`` GD steps at base rate
    ``cfg.lr``. Statistics:
    ``mean_2_T`` = seed-mean of (per-seed mean of |δ| over steps 2..T) — step 1 is left out since
    b0 = 0 makes δ¹ = δ³ = 0 there; ``step2`` = seed-mean of |δ| at step 2 alone (the first step where
    all three terms are non-zero). Slopes are least-squares fits of log(stat) vs log(n) over the widths
    where no seed diverged; diverged runs (inf/nan) are counted, not raised. ``slope_std`` is a
    bootstrap over seeds. Returns a JSON-ready dict (non-finite numbers as None). Runs on one torch
    thread (see :func:`single_threaded`). Source: Hayou et al. 2024, Sec. 3.
    """
    with single_threaded():
        return _delta_scaling(cfg)


def _delta_scaling(cfg: DeltaToyConfig) -> dict:
    """The body of :func:`delta_scaling`."""
    rng = np.random.default_rng(cfg.seed)
    widths = cfg.widths
    res: dict = {"widths": list(widths), "seeds": cfg.seeds, "steps": cfg.steps, "lr": cfg.lr, "scalings": {}}
    for sc in SCALINGS:
        per = {"mean_2_T": [], "step2": []}
        curves, diverged = [], []
        for n in widths:
            d = simulate_deltas(n, scaling=sc, seeds=cfg.seeds, steps=cfg.steps, lr=cfg.lr, seed=cfg.seed)
            for k, v in _window_means(d).items():
                per[k].append(v.numpy())  # (3, seeds)
            curves.append(d.mean(1).numpy())  # (3, steps)
            diverged.append(int((~torch.isfinite(d)).any(0).any(-1).sum()))
        res["scalings"][sc] = _scaling_record(sc, widths, per, curves, diverged, rng)
    return res


def _scaling_record(scaling: str, widths: Sequence[int], per: dict, curves: list, diverged: list[int],
                    rng: np.random.Generator) -> dict:
    """Seed means, slopes and bootstrap spreads for one scaling (helper of :func:`delta_scaling`)."""
    rec: dict = {"label": SCALING_LABELS[scaling], "diverged_seeds": diverged, "per_step_mean": {}}
    for k, arrs in per.items():
        stack = np.stack(arrs)  # (widths, 3, seeds)
        means = stack.mean(-1)  # (widths, 3)
        rec[k] = {t: [json_number(v) for v in means[:, i]] for i, t in enumerate(TERMS)}
        rec[f"slopes_{k}"] = {t: json_number(fit_loglog_slope(widths, means[:, i])) for i, t in enumerate(TERMS)}
        rec[f"slope_std_{k}"] = {t: json_number(_bootstrap_slope_std(widths, stack[:, i, :], rng))
                                 for i, t in enumerate(TERMS)}
    for i, t in enumerate(TERMS):
        rec["per_step_mean"][t] = [[json_number(v) for v in c[i]] for c in curves]  # (widths, steps)
    rec["fit_widths"] = [n for n, dv in zip(widths, diverged) if dv == 0]
    return rec


def json_number(v: float) -> float | None:
    """A float for JSON, or None for inf/nan."""
    v = float(v)
    return v if math.isfinite(v) else None


def plot_delta_scaling(res: dict, path) -> None:
    """Log-log |δ| vs width, one panel per scaling, fitted slopes in the legend; saves a PNG to ``path``.

    Solid lines: seed-mean of |δ| averaged over steps 2..T (the headline statistic); dotted: step 2 alone.
    Widths where a seed diverged are left out of the line (noted in the title). Uses the Agg backend.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = np.asarray(res["widths"], dtype=float)
    colors = {"delta1": "tab:blue", "delta2": "tab:orange", "delta3": "tab:green"}
    names = {"delta1": "δ¹ (A moves)", "delta2": "δ² (B moves)", "delta3": "δ³ (both)"}
    fig, axes = plt.subplots(1, len(SCALINGS), figsize=(5.2 * len(SCALINGS), 4.6))
    for ax, sc in zip(axes, SCALINGS):
        rec = res["scalings"][sc]
        for t in TERMS:
            for key, style in (("mean_2_T", "-o"), ("step2", ":")):
                v = np.array([np.nan if x is None else x for x in rec[key][t]])
                s = rec[f"slopes_{key}"][t]
                lab = f"{names[t]}: slope {s:+.2f}" if key == "mean_2_T" else f"  step 2 only: {s:+.2f}"
                ax.plot(widths, v, style, color=colors[t], label=lab if s is not None else None, ms=4)
        n_div = sum(1 for d in rec["diverged_seeds"] if d)
        title = SCALING_LABELS[sc] + (f"\n{n_div} width(s) with diverged seeds" if n_div else "")
        ax.set(xscale="log", yscale="log", xlabel="width n", title=title)
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=8, loc="best")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(f"seed-mean |δ| ({res['seeds']} seeds, c = {res['lr']})")
    fig.suptitle(f"Section 3 toy: output change per GD step vs width (mean over steps 2..{res['steps']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
