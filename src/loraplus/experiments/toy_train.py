"""A trained toy: which lr_B / lr_A ratio does Adam want as a LoRA layer gets wider?

Teacher–student linear model of width n: student ``f(x) = (W* + B A) x`` with ``x: (n,)`` of N(0, 1)
entries, ``W*: (n, n)`` frozen random, ``lora_A: (r, n)`` ~ N(0, 1/n), ``lora_B: (n, r)`` = 0; teacher
``y = (W* + u vᵀ/√r*) x`` with ``u: (n, r*)`` ~ N(0, 1), ``v: (n, r*)`` ~ N(0, 1/n) (so every output
entry is Θ(1)). The residual ``f(x) − y = (B A − u vᵀ/√r*) x`` does not involve W*: it changes neither
loss nor gradients, so it is never materialised. Training: a fixed training set of N samples,
full-batch Adam (β = (0.9, 0.999), ε = 1e-8, no weight decay) with lr_A for A and lr_B for B, on
``L = ‖f(X) − Y‖² / (2 N n)``, over a log₂ grid of (lr_A, lr_B). All grid cells train at once
(batched); the Adam update is torch.optim.Adam's, written batched (tests check it against
``torch.optim.Adam`` with two parameter groups). Losses are reported relative to the loss at init.
Source: Hayou et al. 2024, Sec. 3 (the ratio η_B/η_A = Θ(n) claim) and Sec. 4 (Adam).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class TrainToyConfig:
    """Options of the trained toy; checks itself (ValueError naming the bad value).

    widths: student widths n (powers of two ≥ 2); seeds: independent repeats (≥ 1); rank: LoRA r;
    teacher_rank: r* of the teacher's perturbation; samples: N training inputs (full batch);
    test_samples: fresh inputs for the test loss; steps: Adam steps; last_k: the train metric is the
    mean relative loss of the last k steps; log2_lr_A / log2_lr_B: inclusive (low, high) ranges of
    log₂ lr on a grid of spacing grid_step (same spacing for both, so ratios fall on diagonals).
    """

    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    seeds: int = 3
    rank: int = 4
    teacher_rank: int = 4
    samples: int = 256
    test_samples: int = 1024
    steps: int = 200
    last_k: int = 20
    log2_lr_A: tuple[float, float] = (-16.0, -4.0)
    log2_lr_B: tuple[float, float] = (-10.0, 0.0)
    grid_step: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_widths(self.widths, "train_widths")
        for name in ("seeds", "rank", "teacher_rank", "samples", "test_samples", "steps", "last_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.last_k > self.steps:
            raise ValueError(f"last_k must be <= steps ({self.steps}), got {self.last_k}")
        if not (self.grid_step > 0 and math.isfinite(self.grid_step)):
            raise ValueError(f"grid_step must be > 0, got {self.grid_step!r}")
        for name in ("log2_lr_A", "log2_lr_B"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not all(math.isfinite(v) for v in lo_hi) or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {lo_hi!r}")

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """log₂ lr_A values (a,) and log₂ lr_B values (b,) of the grid."""
        def axis(lo_hi: tuple[float, float]) -> np.ndarray:
            return lo_hi[0] + self.grid_step * np.arange(int((lo_hi[1] - lo_hi[0]) / self.grid_step + 1e-9) + 1)
        return axis(self.log2_lr_A), axis(self.log2_lr_B)


def check_widths(widths: Sequence[int], name: str = "widths") -> None:
    """Raise ValueError unless ``widths`` is a non-empty sequence of distinct powers of two ≥ 2."""
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) < 2:
        raise ValueError(f"{name} must hold at least 2 widths (powers of two >= 2), got {widths!r}")
    for n in widths:
        if not isinstance(n, int) or isinstance(n, bool) or n < 2 or n & (n - 1):
            raise ValueError(f"{name} must be powers of two >= 2, got {n!r} in {widths!r}")
    if len(set(widths)) != len(widths):
        raise ValueError(f"{name} must be distinct, got {widths!r}")


def make_problem(n: int, cfg: TrainToyConfig, seed: int) -> dict[str, torch.Tensor]:
    """One teacher–student problem (float64). X: (N, n); X_test: (N_test, n); u: (n, r*);
    Z = vᵀXᵀ/√r*: (r*, N); Z_test: (r*, N_test); A0: (r, n) ~ N(0, 1/n)."""
    g = torch.Generator().manual_seed(7919 * seed + n)
    kw = {"generator": g, "dtype": torch.float64}
    x = torch.randn(cfg.samples, n, **kw)
    x_test = torch.randn(cfg.test_samples, n, **kw)
    u = torch.randn(n, cfg.teacher_rank, **kw)
    v = torch.randn(n, cfg.teacher_rank, **kw) / math.sqrt(n * cfg.teacher_rank)
    a0 = torch.randn(cfg.rank, n, **kw) / math.sqrt(n)
    return {"x": x, "x_test": x_test, "u": u, "z": v.T @ x.T, "z_test": v.T @ x_test.T, "a0": a0}


def loss_and_grads(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, u: torch.Tensor, z: torch.Tensor,
                   *, grads: bool = True):
    """Loss ``‖B A Xᵀ − u Z‖² / (2 N n)`` per cell and its gradients, in factored form.

    a: (G, r, n); b: (G, n, r); x: (N, n); u: (n, r*); z: (r*, N). Returns (loss (G,), grad_a (G, r, n),
    grad_b (G, n, r)), or (loss, None, None) when grads=False. Never forms the (G, n, N) residual.
    """
    g, r, n = a.shape
    h = (a.reshape(g * r, n) @ x.T).reshape(g, r, -1)  # (G, r, N)
    scale = 1.0 / (x.shape[0] * n)
    hh, hz = h @ h.transpose(1, 2), h @ z.T  # (G, r, r), (G, r, r*)
    btb, btu = b.transpose(1, 2) @ b, b.transpose(1, 2) @ u  # (G, r, r), (G, r, r*)
    uzz = ((u.T @ u) * (z @ z.T)).sum()
    loss = 0.5 * scale * ((btb * hh).sum((1, 2)) - 2 * (btu * hz).sum((1, 2)) + uzz)
    if not grads:
        return loss, None, None
    grad_b = scale * (b @ hh - u @ hz.transpose(1, 2))
    grad_h = scale * (btb @ h - btu @ z)  # (G, r, N)
    grad_a = (grad_h.reshape(g * r, -1) @ x).reshape(g, r, n)
    return loss, grad_a, grad_b


def adam_step_(p: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int,
               lr: torch.Tensor) -> None:
    """torch.optim.Adam's update (no weight decay), in place, with a per-cell lr: (G, 1, 1)."""
    b1, b2 = ADAM_BETAS
    m.lerp_(grad, 1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v.sqrt() / math.sqrt(1 - b2**step)).add_(ADAM_EPS)
    p.sub_(lr / (1 - b1**step) * m / denom)


def train_grid(n: int, cfg: TrainToyConfig, seed: int) -> dict[str, np.ndarray]:
    """Train every (lr_A, lr_B) cell of the grid on one problem of width n, all cells batched.

    Returns {"train": (a, b), "test": (a, b)} relative losses (loss / loss at init): train = mean of
    the last ``last_k`` steps' full-batch loss, test = final loss on fresh inputs; a diverged cell
    (inf/nan) reads inf. Source: Hayou et al. 2024, Sec. 3-4.
    """
    log2_a, log2_b = cfg.grid()
    na, nb = len(log2_a), len(log2_b)
    p = make_problem(n, cfg, seed)
    lr_a = torch.tensor(2.0 ** np.repeat(log2_a, nb), dtype=torch.float64).view(-1, 1, 1)
    lr_b = torch.tensor(2.0 ** np.tile(log2_b, na), dtype=torch.float64).view(-1, 1, 1)
    a = p["a0"].expand(na * nb, -1, -1).clone()
    b = torch.zeros(na * nb, n, cfg.rank, dtype=torch.float64)
    state = [torch.zeros_like(a), torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(b)]
    with torch.no_grad():
        loss0, _, _ = loss_and_grads(a[:1], b[:1], p["x"], p["u"], p["z"], grads=False)
        tail = torch.zeros(na * nb, dtype=torch.float64)
        for step in range(1, cfg.steps + 1):
            loss, ga, gb = loss_and_grads(a, b, p["x"], p["u"], p["z"])
            if step >= cfg.steps - cfg.last_k + 2:  # loss after step (step - 1)
                tail += loss
            adam_step_(a, ga, state[0], state[1], step, lr_a)
            adam_step_(b, gb, state[2], state[3], step, lr_b)
        tail = (tail + loss_and_grads(a, b, p["x"], p["u"], p["z"], grads=False)[0]) / cfg.last_k
        test0, _, _ = loss_and_grads(p["a0"][None], b[:1] * 0, p["x_test"], p["u"], p["z_test"], grads=False)
        test, _, _ = loss_and_grads(a, b, p["x_test"], p["u"], p["z_test"], grads=False)
    return {"train": _finite_or_inf(tail / loss0).reshape(na, nb), "test": _finite_or_inf(test / test0).reshape(na, nb)}


def _finite_or_inf(t: torch.Tensor) -> np.ndarray:
    """Tensor → numpy array with inf wherever the value is not finite (a diverged cell)."""
    t = torch.where(torch.isfinite(t), t, torch.full_like(t, math.inf))
    return t.numpy()
