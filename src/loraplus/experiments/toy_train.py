"""A trained toy: which lr_B / lr_A ratio does Adam want as a LoRA layer gets wider?

Teacher–student linear model of width n: student ``f(x) = (W* + B A) x`` with ``x: (n,)`` of N(0, 1)
entries, ``W*: (n, n)`` frozen random, ``lora_A: (r, n)`` ~ N(0, 1/n), ``lora_B: (n, r)`` = 0; teacher
``y = (W* + u vᵀ) x`` with ``u: (n, r*)`` ~ N(0, 1), ``v: (n, r*)`` ~ N(0, 1/(n r*)) (every output entry
has variance 1). The residual ``f(x) − y = (B A − u vᵀ) x`` does not involve W*: it changes neither loss
nor gradients, so it is never materialised. Loss ``L = E‖f(x) − y‖² / (2 n)`` over one of two regimes:

- ``"fixed"``: a fixed training set of N inputs (N held fixed as n grows — the regime of the paper's
  infinite-width analysis), full-batch;
- ``"population"``: the exact expectation over x ~ N(0, Iₙ) (infinite data, no sampling noise),
  ``L = ‖B A − u vᵀ‖²_F / (2 n)``.

Training: Adam (β = (0.9, 0.999), ε = 1e-8, no weight decay) with lr_A for A and lr_B for B, over a
log₂ grid of (lr_A, lr_B); all cells train at once (batched over a leading grid dimension G). The
update is torch.optim.Adam's, written batched with a per-cell lr (tests check it against
``torch.optim.Adam`` with two parameter groups). Losses are relative to the loss at init (B = 0).
Source: Hayou et al. 2024, Sec. 3 (η_B/η_A = Θ(n)) and Sec. 4 (Adam); Su 2024 argues Θ(√n).
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .toy_delta import check_widths, json_number, single_threaded

REGIMES = ("fixed", "population")
ESTIMATORS = ("best_cell", "smoothed", "band_hi")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class TrainToyConfig:
    """Options of the trained toy; checks itself (ValueError naming the bad value).

    widths: student widths n (distinct powers of two ≥ 2, at least 2 of them); seeds: independent
    repeats (≥ 1); regimes: subset of ("fixed", "population"); rank: LoRA r; teacher_rank: r*;
    samples: N training inputs of the "fixed" regime; steps: Adam steps; last_k: the train metric is
    the mean relative loss of the last k steps; log2_lr_A / log2_lr_B: inclusive (low, high) log₂ lr
    ranges on a grid of spacing grid_step (shared, so each ratio is a diagonal of the grid);
    band_tol: the near-optimal band holds the ratios whose best loss is within this factor of the best.
    """

    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    seeds: int = 5
    regimes: tuple[str, ...] = REGIMES
    rank: int = 4
    teacher_rank: int = 4
    samples: int = 32
    steps: int = 100
    last_k: int = 10
    log2_lr_A: tuple[float, float] = (-16.0, 0.0)
    log2_lr_B: tuple[float, float] = (-12.0, 0.0)
    grid_step: float = 1.0
    band_tol: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_widths(self.widths, "train_widths")
        for name in ("seeds", "rank", "teacher_rank", "samples", "steps", "last_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.last_k > self.steps:
            raise ValueError(f"last_k must be <= steps ({self.steps}), got {self.last_k}")
        if not self.regimes or any(r not in REGIMES for r in self.regimes):
            raise ValueError(f"regimes must be a non-empty subset of {REGIMES}, got {self.regimes!r}")
        for name in ("grid_step", "band_tol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0) or (name == "band_tol" and v <= 1):
                raise ValueError(f"{name} must be > {1 if name == 'band_tol' else 0}, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        for name in ("log2_lr_A", "log2_lr_B"):
            lo_hi = getattr(self, name)
            try:
                ok = len(lo_hi) == 2 and all(math.isfinite(v) for v in lo_hi) and lo_hi[0] <= lo_hi[1]
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {lo_hi!r}")
        if min(len(g) for g in self.grid()) < 2:
            raise ValueError(f"the lr grid needs >= 2 values per axis, got {self.log2_lr_A!r}, {self.log2_lr_B!r}")

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """log₂ lr_A values (a,) and log₂ lr_B values (b,) of the grid."""
        def axis(lo_hi: tuple[float, float]) -> np.ndarray:
            count = int((lo_hi[1] - lo_hi[0]) / self.grid_step + 1e-9) + 1
            return lo_hi[0] + self.grid_step * np.arange(count)
        return axis(self.log2_lr_A), axis(self.log2_lr_B)


def make_problem(n: int, cfg: TrainToyConfig, seed: int) -> dict[str, torch.Tensor]:
    """One teacher–student problem (float64): x: (N, n) training inputs; u: (n, r*); vt = vᵀ: (r*, n);
    a0: (r, n) ~ N(0, 1/n). Same draw for every grid cell (common random numbers)."""
    g = torch.Generator().manual_seed(7919 * seed + n)
    kw = {"generator": g, "dtype": torch.float64}
    x = torch.randn(cfg.samples, n, **kw)
    u = torch.randn(n, cfg.teacher_rank, **kw)
    vt = torch.randn(cfg.teacher_rank, n, **kw) / math.sqrt(n * cfg.teacher_rank)
    a0 = torch.randn(cfg.rank, n, **kw) / math.sqrt(n)
    return {"x": x, "u": u, "vt": vt, "a0": a0}


def loss_and_grads(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, vt: torch.Tensor,
                   x: torch.Tensor | None = None, *, grads: bool = True):
    """Loss ``‖(B A − u vᵀ) Xᵀ‖² / (2 N n)`` per grid cell and its gradients, in factored form.

    a: (G, r, n); b: (G, n, r); u: (n, r*); vt: (r*, n); x: (N, n) training inputs, or None for the
    population loss (x ~ N(0, Iₙ)): ``‖B A − u vᵀ‖²_F / (2 n)``. Returns (loss (G,), grad_a (G, r, n),
    grad_b (G, n, r)); the gradients are None when grads=False. Never forms a (G, n, N) tensor.
    """
    g, r, n = a.shape
    if x is None:  # E[x xᵀ] = I: the moments below are exact expectations
        h, z = a, vt
    else:
        s = 1.0 / math.sqrt(x.shape[0])
        h = (a.reshape(g * r, n) @ x.T).reshape(g, r, -1) * s  # (G, r, N)
        z = (vt @ x.T) * s  # (r*, N)
    hh, hz = h @ h.transpose(1, 2), h @ z.T  # (G, r, r), (G, r, r*)
    btb, btu = b.transpose(1, 2) @ b, b.transpose(1, 2) @ u  # (G, r, r), (G, r, r*)
    uzz = ((u.T @ u) * (z @ z.T)).sum()
    loss = (0.5 / n) * ((btb * hh).sum((1, 2)) - 2 * (btu * hz).sum((1, 2)) + uzz)
    if not grads:
        return loss, None, None
    grad_b = (b @ hh - u @ hz.transpose(1, 2)) / n
    grad_h = (btb @ h - btu @ z) / n  # (G, r, N) or (G, r, n)
    grad_a = grad_h if x is None else (grad_h.reshape(g * r, -1) @ x).reshape(g, r, n) * s
    return loss, grad_a, grad_b


def adam_step_(p: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int,
               lr: torch.Tensor) -> None:
    """torch.optim.Adam's update (no weight decay, step counted from 1), in place; lr: (G, 1, 1)."""
    b1, b2 = ADAM_BETAS
    m.lerp_(grad, 1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = v.sqrt().div_(math.sqrt(1 - b2**step)).add_(ADAM_EPS)
    p.addcdiv_(m * lr, denom, value=-1.0 / (1 - b1**step))


def train_grid(n: int, cfg: TrainToyConfig, seed: int, regime: str) -> dict[str, np.ndarray]:
    """Train every (lr_A, lr_B) cell of the grid on one problem of width n, all cells batched.

    Returns {"train": (a, b), "test": (a, b)} losses relative to init: train = mean of the last
    ``last_k`` steps' training loss (the regime's loss); test = final population loss (x ~ N(0, Iₙ)).
    A diverged cell (inf/nan) reads inf. Source: Hayou et al. 2024, Sec. 3-4.
    """
    log2_a, log2_b = cfg.grid()
    p = make_problem(n, cfg, seed)
    x = p["x"] if regime == "fixed" else None
    lr_a = torch.tensor(2.0 ** np.repeat(log2_a, len(log2_b))).view(-1, 1, 1)
    lr_b = torch.tensor(2.0 ** np.tile(log2_b, len(log2_a))).view(-1, 1, 1)
    a = p["a0"].expand(len(lr_a), -1, -1).clone()
    b = torch.zeros(len(lr_a), n, cfg.rank, dtype=torch.float64)
    m_a, v_a, m_b, v_b = (torch.zeros_like(t) for t in (a, a, b, b))
    tail = torch.zeros(len(lr_a), dtype=torch.float64)
    with torch.no_grad():
        for step in range(1, cfg.steps + 1):
            loss, ga, gb = loss_and_grads(a, b, p["u"], p["vt"], x)
            if step == 1:
                loss0 = loss[0].item()
            if step >= cfg.steps - cfg.last_k + 2:  # loss after step (step - 1)
                tail += loss
            adam_step_(a, ga, m_a, v_a, step, lr_a)
            adam_step_(b, gb, m_b, v_b, step, lr_b)
        tail = (tail + loss_and_grads(a, b, p["u"], p["vt"], x, grads=False)[0]) / cfg.last_k
        test = loss_and_grads(a, b, p["u"], p["vt"], grads=False)[0]
        test0 = loss_and_grads(a[:1], b[:1] * 0, p["u"], p["vt"], grads=False)[0]
    shape = (len(log2_a), len(log2_b))
    return {"train": _finite_or_inf(tail / loss0).reshape(shape), "test": _finite_or_inf(test / test0).reshape(shape)}


def _finite_or_inf(t: torch.Tensor) -> np.ndarray:
    """Tensor → numpy: inf where not finite (a diverged cell); values below 1e-15 (float64 round-off
    of the factored loss) are clipped to 1e-15."""
    return torch.where(torch.isfinite(t), t.clamp_min(1e-15), torch.full_like(t, math.inf)).numpy()


def diagonal_minima(log_loss: np.ndarray, log2_a: np.ndarray, log2_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best log-loss per ratio: for each diagonal lr_B/lr_A = const of the grid, the minimum over lr_A.

    log_loss: (a, b) on grids of equal log₂ spacing. Returns (log₂ ratios (a+b−1,), minima (a+b−1,)).
    """
    na, nb = log_loss.shape
    step = log2_a[1] - log2_a[0]
    ks = np.arange(-(na - 1), nb)
    best = np.array([min(log_loss[i, i + k] for i in range(na) if 0 <= i + k < nb) for k in ks])
    return log2_b[0] - log2_a[0] + ks * step, best


def _vertex_offset(y: np.ndarray, k: int) -> float:
    """Sub-grid offset in [−1, 1] of the parabola through y[k−1], y[k], y[k+1] (0 when undefined)."""
    if 0 < k < len(y) - 1 and np.all(np.isfinite(y[k - 1:k + 2])):
        curv = y[k - 1] - 2 * y[k] + y[k + 1]
        if curv > 0:
            return float(np.clip(0.5 * (y[k - 1] - y[k + 1]) / curv, -1.0, 1.0))
    return 0.0


def _band_edge(y: np.ndarray, k: int, thr: float, direction: int) -> tuple[float, bool]:
    """Fractional index where y first rises above thr walking from k in ``direction`` (±1); the
    boolean is True when the band reaches the end of the grid (the edge is censored)."""
    j = k
    while 0 <= j + direction < len(y) and y[j + direction] <= thr:
        j += direction
    if not 0 <= j + direction < len(y):
        return float(j), True
    nxt = y[j + direction]
    frac = 0.0 if not np.isfinite(nxt) else (thr - y[j]) / (nxt - y[j])
    return j + direction * float(frac), False


def ratio_estimates(loss: np.ndarray, log2_a: np.ndarray, log2_b: np.ndarray, band_tol: float) -> dict:
    """Optimal-ratio estimates (log₂ lr_B/lr_A) from one (a, b) loss surface.

    best_cell: the argmin cell; smoothed: argmin over ratio of the best loss per ratio (minimum over
    lr_A along each diagonal), refined by a parabola through the minimum and its two neighbours in
    (log₂ ratio, log loss); band_lo / band_hi: where that best-per-ratio curve crosses ``band_tol`` × its
    minimum (linear interpolation in log loss; ``*_censored`` when the band runs off the grid).
    """
    log_loss = np.log(loss)
    i, j = np.unravel_index(np.argmin(log_loss), log_loss.shape)
    ratios, y = diagonal_minima(log_loss, log2_a, log2_b)
    k = int(np.argmin(y))
    step = ratios[1] - ratios[0]
    thr = y[k] + math.log(band_tol)
    lo, lo_c = _band_edge(y, k, thr, -1)
    hi, hi_c = _band_edge(y, k, thr, +1)
    return {"best_cell": float(log2_b[j] - log2_a[i]), "smoothed": float(ratios[k] + step * _vertex_offset(y, k)),
            "band_lo": float(ratios[0] + step * lo), "band_hi": float(ratios[0] + step * hi),
            "band_lo_censored": lo_c, "band_hi_censored": hi_c, "best_log2_lr_A": float(log2_a[i]),
            "best_log2_lr_B": float(log2_b[j]), "best_loss": float(loss[i, j]),
            "best_on_grid_edge": bool(i in (0, len(log2_a) - 1) or j in (0, len(log2_b) - 1))}


def fit_exponent(widths: Sequence[int], log2_values: Sequence[float | None]) -> float:
    """Slope of log₂(value) against log₂(n) (least squares over the non-None values; nan if < 2)."""
    pts = [(math.log2(n), v) for n, v in zip(widths, log2_values) if v is not None and math.isfinite(v)]
    if len(pts) < 2:
        return float("nan")
    xs, ys = zip(*pts)
    return float(np.polyfit(xs, ys, 1)[0])


def ratio_exponent(cfg: TrainToyConfig) -> dict:
    """Train the grid for every regime, seed and width; estimate the optimal ratio per width and fit
    its exponent ``ratio ∝ n^e``. Returns a JSON-ready dict (non-finite numbers as None).

    Per regime and metric ("train": the regime's loss over the last k steps, "test": final population
    loss): ``per_width`` estimates from the seed-pooled surface (geometric mean of the relative loss
    over seeds), and ``exponents[estimator]`` = {"pooled", "per_seed", "mean", "std"} for the
    estimators of :func:`ratio_estimates` (censored band edges are left out of the fits). Runs on one
    torch thread (see :func:`single_threaded`). Source: Hayou et al. 2024, Sec. 3-4.
    """
    with single_threaded():
        return _ratio_exponent(cfg)


def _ratio_exponent(cfg: TrainToyConfig) -> dict:
    """The body of :func:`ratio_exponent`."""
    log2_a, log2_b = cfg.grid()
    out = {"config": asdict(cfg), "log2_lr_A": log2_a.tolist(), "log2_lr_B": log2_b.tolist(), "regimes": {}}
    for regime in cfg.regimes:
        t0 = time.perf_counter()
        runs = {m: np.empty((cfg.seeds, len(cfg.widths), len(log2_a), len(log2_b))) for m in ("train", "test")}
        for s in range(cfg.seeds):
            for w, n in enumerate(cfg.widths):
                res = train_grid(n, cfg, cfg.seed + s, regime)
                for m in runs:
                    runs[m][s, w] = res[m]
        rec = {m: _summarize_metric(cfg, arr, log2_a, log2_b) for m, arr in runs.items()}
        rec["wall_s"] = time.perf_counter() - t0
        out["regimes"][regime] = rec
    return out


def _summarize_metric(cfg: TrainToyConfig, arr: np.ndarray, log2_a: np.ndarray, log2_b: np.ndarray) -> dict:
    """Estimates and exponents for one regime and metric. arr: (seeds, widths, a, b) relative losses."""
    with np.errstate(invalid="ignore"):
        pooled = np.exp(np.log(arr).mean(0))  # (widths, a, b); inf if any seed diverged
    est = [ratio_estimates(p, log2_a, log2_b, cfg.band_tol) for p in pooled]
    per_seed = [[ratio_estimates(p, log2_a, log2_b, cfg.band_tol) for p in arr[s]] for s in range(cfg.seeds)]
    exps = {}
    for e in ESTIMATORS + ("best_log2_lr_A", "best_log2_lr_B"):
        seed_exps = [fit_exponent(cfg.widths, _fit_values(ps, e)) for ps in per_seed]
        finite = [v for v in seed_exps if math.isfinite(v)]
        exps[e] = {"pooled": json_number(fit_exponent(cfg.widths, _fit_values(est, e))),
                   "per_seed": [json_number(v) for v in seed_exps],
                   "mean": json_number(np.mean(finite)) if finite else None,
                   "std": json_number(np.std(finite, ddof=1)) if len(finite) > 1 else None}
    log10 = {str(n): [[json_number(v) for v in row] for row in np.log10(p)] for n, p in zip(cfg.widths, pooled)}
    return {"per_width": est, "exponents": exps, "log10_loss_pooled": log10}


def _fit_values(estimates: list[dict], key: str) -> list[float | None]:
    """The values of one estimator across widths, None where a band edge is censored by the grid."""
    return [None if e.get(f"{key}_censored") else e[key] for e in estimates]


def plot_ratio_exponent(res: dict, path, metric: str = "train") -> None:
    """One row per regime: optimal ratio vs width (log-log, fits and seeds) and the loss heatmap of
    the largest width. Saves a PNG to ``path`` (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(res["regimes"])
    fig, axes = plt.subplots(len(regimes), 2, figsize=(13, 4.8 * len(regimes)), squeeze=False)
    for row, regime in zip(axes, regimes):
        rec = res["regimes"][regime][metric]
        _plot_ratio_panel(row[0], res["config"]["widths"], rec, regime)
        _plot_heatmap_panel(row[1], res, rec, regime)
    cfg = res["config"]
    fig.suptitle(f"Trained toy (Adam, rank {cfg['rank']}, {cfg['steps']} steps, {cfg['seeds']} seeds): "
                 f"optimal lr_B/lr_A vs width, metric = {metric} loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _plot_ratio_panel(ax, widths: Sequence[int], rec: dict, regime: str) -> None:
    """Estimated optimal ratio per width (pooled over seeds), the near-optimal band, fitted slopes."""
    ns = np.asarray(widths, dtype=float)
    pw, ex = rec["per_width"], rec["exponents"]
    lo, hi = (np.array([2.0 ** e[k] for e in pw]) for k in ("band_lo", "band_hi"))
    cens = " (lower edge at grid edge)" if any(e["band_lo_censored"] for e in pw) else ""
    ax.fill_between(ns, lo, hi, color="tab:blue", alpha=0.12, label=f"near-optimal band, pooled{cens}")
    styles = {"best_cell": ("s", "tab:red"), "smoothed": ("o", "tab:blue"), "band_hi": ("^", "tab:green")}
    for key, (marker, color) in styles.items():
        ys = _fit_values(pw, key)
        e = ex[key]
        lab = f"{key}: e = {_fmt(e['pooled'])} (seeds {_fmt(e['mean'])} ± {_fmt(e['std'])})"
        ax.plot(ns, [np.nan if y is None else 2.0**y for y in ys], marker, color=color, label=lab)
        pts = [(math.log2(n), y) for n, y in zip(ns, ys) if y is not None]
        if len(pts) >= 2:
            k, c = np.polyfit(*zip(*pts), 1)
            ax.plot(ns, 2.0 ** (c + k * np.log2(ns)), "-", color=color, lw=1)
    mid = 2.0 ** np.mean([e["band_hi"] for e in pw])
    for slope, style, lab in ((1.0, "--", "reference ∝ n (paper)"), (0.5, ":", "reference ∝ √n (Su)")):
        ax.plot(ns, mid * (ns / np.sqrt(ns[0] * ns[-1])) ** slope, style, color="gray", lw=1, label=lab)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set(xlabel="width n", ylabel="lr_B / lr_A", title=f"regime: {regime}")
    ax.legend(fontsize=7.5, loc="upper left")
    ax.grid(True, alpha=0.3)


def _plot_heatmap_panel(ax, res: dict, rec: dict, regime: str) -> None:
    """log₁₀ relative loss over the (lr_A, lr_B) grid at the largest width, with the estimates drawn."""
    n = str(res["config"]["widths"][-1])
    la, lb = np.asarray(res["log2_lr_A"]), np.asarray(res["log2_lr_B"])
    z = np.array([[np.nan if v is None else v for v in row] for row in rec["log10_loss_pooled"][n]])
    h = (la[1] - la[0]) / 2
    im = ax.imshow(z, origin="lower", aspect="auto", cmap="viridis", vmax=0.0,
                   extent=(lb[0] - h, lb[-1] + h, la[0] - h, la[-1] + h))
    ax.figure.colorbar(im, ax=ax, label="log₁₀ loss / loss at init (pooled)")
    est = rec["per_width"][-1]
    ax.plot(est["best_log2_lr_B"], est["best_log2_lr_A"], "rx", ms=10, mew=2, label="best cell")
    for key, style, color in (("smoothed", "-", "magenta"), ("band_lo", "--", "orange"), ("band_hi", "--", "orange")):
        cens = " (grid edge)" if est.get(f"{key}_censored") else ""
        ax.plot(lb, lb - est[key], style, color=color, lw=1.5, label=f"{key}: ratio 2^{est[key]:.1f}{cens}")
    ax.set(xlim=(lb[0] - h, lb[-1] + h), ylim=(la[0] - h, la[-1] + h), xlabel="log₂ lr_B",
           ylabel="log₂ lr_A", title=f"{regime}, n = {n} (grey: diverged)")
    ax.set_facecolor("0.6")
    ax.legend(fontsize=7.5, loc="lower right")


def _fmt(v: float | None) -> str:
    """A number with 2 decimals, or 'n/a'."""
    return "n/a" if v is None else f"{v:+.2f}"
