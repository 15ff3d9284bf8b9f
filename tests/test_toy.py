"""Tests of the Section 3 toy (loraplus.experiments.toy*): formulas by hand, scaling slopes on a small
grid, the batched Adam against torch.optim.Adam, the trained toy on a tiny grid, options, files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from loraplus.experiments import toy
from loraplus.experiments.toy import run_toy, toy_configs, toy_summary_text
from loraplus.experiments.toy_delta import (DeltaToyConfig, delta_scaling, delta_terms, gd_step,
                                            scaling_lrs, simulate_deltas, single_threaded)
from loraplus.experiments.toy_train import (TrainToyConfig, adam_step_, diagonal_minima, loss_and_grads,
                                            make_problem, ratio_estimates, ratio_exponent)

F64 = torch.float64


def _t(*v: float) -> torch.Tensor:
    """A float64 vector, or a 0-dim tensor for one value."""
    return torch.tensor(v if len(v) > 1 else v[0], dtype=F64)


# --- Section 3 formulas, by hand -------------------------------------------------------------------------

def test_gd_step_and_delta_terms_match_hand_computation():
    # n = 2: x = (1, 2), W* = (0.5, -1), a = (1, -1), b = 2, y = 1, η_a = 0.1, η_b = 0.2.
    x, w, a, b, y = _t(1, 2), _t(0.5, -1), _t(1, -1), _t(2.0), _t(1.0)
    # aᵀx = -1, W*x = -1.5, f = -1.5 + 2·(-1) = -3.5, U = -4.5, ‖x‖² = 5.
    a1, b1, u = gd_step(a, b, x, y, w, lr_a=0.1, lr_b=0.2)
    assert u.item() == pytest.approx(-4.5)
    # a₁ = a − η_a U b x = (1, -1) + 0.9·(1, 2) = (1.9, 0.8); b₁ = b − η_b U (aᵀx) = 2 − 0.9 = 1.1.
    assert a1.tolist() == pytest.approx([1.9, 0.8])
    assert b1.item() == pytest.approx(1.1)
    d1, d2, d3 = delta_terms(a, b, x, u, lr_a=0.1, lr_b=0.2)
    assert d1.item() == pytest.approx(-0.1 * 4 * 5 * -4.5)  # −η_a b² ‖x‖² U = 9.0
    assert d2.item() == pytest.approx(-0.2 * 1 * -4.5)  # −η_b (aᵀx)² U = 0.9
    assert d3.item() == pytest.approx(0.1 * 0.2 * 4.5**2 * 2 * -1 * 5)  # η_a η_b U² b (aᵀx) ‖x‖² = -4.05
    f0, f1 = (w @ x + b * (a @ x)), (w @ x + b1 * (a1 @ x))
    assert (f1 - f0).item() == pytest.approx((d1 + d2 + d3).item())  # Δf = δ¹ + δ² + δ³ exactly


def test_delta_terms_sum_to_output_change_over_a_run():
    g = torch.Generator().manual_seed(3)
    x, w, a = (torch.randn(4, 8, generator=g, dtype=F64) for _ in range(3))
    b, y = torch.zeros(4, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    for _ in range(3):
        a1, b1, u = gd_step(a, b, x, y, w, lr_a=0.05, lr_b=0.3)
        df = (w * x).sum(-1) + b1 * (a1 * x).sum(-1) - (u + y)
        assert torch.allclose(df, sum(delta_terms(a, b, x, u, lr_a=0.05, lr_b=0.3)), rtol=1e-12, atol=1e-12)
        a, b = a1, b1


def test_scaling_lrs():
    assert scaling_lrs("equal_1", 64, 0.1) == (0.1, 0.1)
    assert scaling_lrs("equal_1_over_n", 64, 0.1) == (0.1 / 64, 0.1 / 64)
    assert scaling_lrs("loraplus", 64, 0.1) == (0.1 / 64, 0.1)
    with pytest.raises(ValueError, match="'lora'"):
        scaling_lrs("lora", 64, 0.1)


# --- slopes on a small grid ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_delta():
    return delta_scaling(DeltaToyConfig(widths=(64, 128, 256, 512, 1024), seeds=64))["scalings"]


def test_delta_slopes_on_small_grid(small_delta):
    # Tolerances from the spread of these slopes over base seeds 0..11 (same config; numbers in
    # experiments/toy/README.md): LoRA+ δ¹ −0.05 ± 0.08, δ² +0.01 ± 0.05 (max |·| 0.15);
    # equal-Θ(1) step-2 δ¹ +0.92 ± 0.11 (max |·−1| 0.27); equal-Θ(1/n) δ¹ −2.08 ± 0.15.
    lp = small_delta["loraplus"]["slopes_mean_2_T"]
    assert abs(lp["delta1"]) < 0.35 and abs(lp["delta2"]) < 0.35
    eq1 = small_delta["equal_1"]
    assert abs(eq1["slopes_step2"]["delta1"] - 1.0) < 0.45  # δ¹ = Θ(n) at the first step it is non-zero
    assert eq1["slopes_mean_2_T"]["delta1"] > 5  # and it feeds back: over steps 2..5 it blows up
    assert abs(small_delta["equal_1_over_n"]["slopes_mean_2_T"]["delta1"] + 2.0) < 0.6


def test_divergence_is_recorded_not_raised():
    d = simulate_deltas(1024, scaling="equal_1", seeds=4, steps=30, lr=0.1)
    assert not torch.isfinite(d).all()  # overflow to inf, then nan: kept, not raised
    res = delta_scaling(DeltaToyConfig(widths=(1024, 2048), seeds=4, steps=30))
    eq1 = res["scalings"]["equal_1"]
    assert all(k > 0 for k in eq1["diverged_seeds"]) and eq1["fit_widths"] == []
    assert eq1["slopes_mean_2_T"]["delta1"] is None and eq1["mean_2_T"]["delta1"] == [None, None]
    assert res["scalings"]["loraplus"]["diverged_seeds"] == [0, 0]
    json.dumps(res, allow_nan=False)


# --- trained toy -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("regime", ["fixed", "population"])
@single_threaded()
def test_factored_loss_and_grads_match_autograd(regime):
    cfg = TrainToyConfig(widths=(8, 16), samples=5, rank=2, teacher_rank=3)
    p = make_problem(8, cfg, seed=1)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 2, 8, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(2, 8, 2, generator=g, dtype=F64, requires_grad=True)
    x = p["x"] if regime == "fixed" else None
    loss, ga, gb = loss_and_grads(a.detach(), b.detach(), p["u"], p["vt"], x)
    delta = b @ a - p["u"] @ p["vt"]  # (G, n, n)
    naive = (delta @ x.T).pow(2).sum((1, 2)) / (2 * 5 * 8) if x is not None else delta.pow(2).sum((1, 2)) / 16
    naive.sum().backward()
    assert torch.allclose(loss, naive.detach(), rtol=1e-10)
    assert torch.allclose(ga, a.grad, rtol=1e-10) and torch.allclose(gb, b.grad, rtol=1e-10)


@single_threaded()
def test_batched_adam_matches_torch_adam_with_two_groups():
    cfg = TrainToyConfig(widths=(8, 16), samples=6)
    p = make_problem(16, cfg, seed=2)
    lr_A, lr_B = 0.01, 0.16
    A = p["a0"].clone().requires_grad_()
    B = torch.zeros(16, 4, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([{"params": [A], "lr": lr_A, "name": "lora_A"},
                            {"params": [B], "lr": lr_B, "name": "lora_B"}])
    a, b = p["a0"][None].clone(), torch.zeros(1, 16, 4, dtype=F64)
    state = [torch.zeros_like(a), torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(b)]
    for step in range(1, 6):
        opt.zero_grad()
        ((B @ A - p["u"] @ p["vt"]) @ p["x"].T).pow(2).sum().div(2 * 6 * 16).backward()
        opt.step()
        _, ga, gb = loss_and_grads(a, b, p["u"], p["vt"], p["x"])
        adam_step_(a, ga, state[0], state[1], step, _t(lr_A).view(1, 1, 1))
        adam_step_(b, gb, state[2], state[3], step, _t(lr_B).view(1, 1, 1))
    assert torch.allclose(a[0], A.detach(), rtol=1e-9, atol=1e-12)
    assert torch.allclose(b[0], B.detach(), rtol=1e-9, atol=1e-12)


def test_ratio_estimates_on_a_known_surface():
    la, lb = np.arange(-6.0, 1.0), np.arange(-4.0, 1.0)
    rho = lb[None, :] - la[:, None]  # log₂ ratio of each cell
    loss = np.exp((rho - 2.3) ** 2 + 0.01 * (la[:, None] + 3) ** 2)  # best ratio 2^2.3, best lr_A 2^-3
    est = ratio_estimates(loss, la, lb, band_tol=math.e)  # band = where (ρ − 2.3)² ≤ 1
    assert est["best_cell"] == 2.0 and est["best_log2_lr_A"] == -3.0
    assert est["smoothed"] == pytest.approx(2.3)  # the parabola is exact here
    # the continuous band is ρ ∈ [1.3, 3.3]; the grid's diagonal minima sit at integer ρ and are interpolated
    # linearly in log loss, which moves the edges to 1.375 and 3.2490 (values from this surface, by hand and here)
    assert est["band_lo"] == pytest.approx(1.375) and est["band_hi"] == pytest.approx(3.2490, abs=1e-4)
    assert not est["band_lo_censored"] and not est["band_hi_censored"]
    ratios, y = diagonal_minima(np.log(loss), la, lb)
    assert ratios[0] == -4.0 and ratios[-1] == 6.0 and len(y) == len(la) + len(lb) - 1


def test_trained_toy_tiny_grid_gives_finite_exponents():
    cfg = TrainToyConfig(widths=(8, 16, 32), seeds=2, samples=8, steps=15, last_k=3,
                         log2_lr_A=(-6.0, 0.0), log2_lr_B=(-4.0, 0.0))
    res = ratio_exponent(cfg)
    json.dumps(res, allow_nan=False)
    for regime in ("fixed", "population"):
        ex = res["regimes"][regime]["train"]["exponents"]
        assert math.isfinite(ex["smoothed"]["pooled"]) and math.isfinite(ex["best_cell"]["pooled"])
        assert len(ex["smoothed"]["per_seed"]) == 2


# --- options and files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, needle", [
    ({"widths": (64, 96)}, "96"), ({"widths": (64,)}, "(64,)"), ({"seeds": 0}, "0"),
    ({"delta_steps": 1}, "1"), ({"delta_lr": -0.5}, "-0.5"), ({"train_widths": (8, 8)}, "(8, 8)"),
    ({"train_seeds": 0}, "0"), ({"regimes": ("online",)}, "online"), ({"samples": 0}, "0"),
    ({"log2_lr_A": (0.0, -4.0)}, "(0.0, -4.0)"), ({"widths": [64, True]}, "True"),
])
def test_bad_options_raise_value_error_naming_the_value(tmp_path, kwargs, needle):
    with pytest.raises(ValueError) as err:
        run_toy(tmp_path, quick=True, **kwargs)
    assert needle in str(err.value)
    assert not any(tmp_path.iterdir())  # validated before anything is written


def test_run_toy_writes_all_four_files(tmp_path, monkeypatch):
    s = run_toy(tmp_path / "out", quick=True, widths=(64, 128, 256), seeds=16, train_widths=(8, 16),
                train_steps=10, log2_lr_A=(-4.0, 0.0), log2_lr_B=(-3.0, 0.0))
    names = {"delta_scaling.json", "delta_scaling.png", "ratio_exponent.json", "ratio_exponent.png"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == names  # no temp files left behind
    for name in names:
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(b"\x89PNG") if name.endswith(".png") else json.loads(data)
    assert set(s["delta"]["slopes"]) == {"equal_1", "equal_1_over_n", "loraplus"}
    assert set(s["ratio"]["regimes"]) == {"fixed", "population"}
    assert len(s["ratio"]["regimes"]["fixed"]["optimal_ratio"]["smoothed"]) == 2
    text = toy_summary_text(s)
    assert "loraplus" in text and "\n" not in text
    monkeypatch.setattr(toy, "plot_delta_scaling", lambda res, path: path.write_bytes(b"\x89PNG"))  # speed
    s2 = run_toy(tmp_path / "d", quick=True, widths=(64, 128), seeds=4, train=False)
    assert s2["ratio"] is None and {p.name for p in (tmp_path / "d").iterdir()} == {
        "delta_scaling.json", "delta_scaling.png"}


def test_toy_configs_defaults_and_overrides():
    delta, train = toy_configs()
    assert delta.widths == tuple(2**k for k in range(6, 14)) and train.widths == tuple(2**k for k in range(6, 12))
    delta, train = toy_configs(quick=True, widths=[64, 128], train_steps=4)
    assert delta.widths == (64, 128) and train.steps == 4 and train.last_k <= 4


def test_single_threaded_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
