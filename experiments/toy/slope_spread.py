"""Spread of the δ slopes over base seeds 0..11 at the small grid used by tests/test_toy.py.

Run from the repository root: PYTHONPATH=src .venv/bin/python experiments/toy/slope_spread.py
Prints mean, std and max deviation (from the theory value) of each slope; the test tolerances are
set at about 4 standard deviations / above the largest deviation seen here.
"""
import numpy as np

from loraplus.experiments.toy_delta import DeltaToyConfig, delta_scaling

CHECKS = {  # name: (scaling, statistic, term, theory value)
    "loraplus delta1": ("loraplus", "slopes_mean_2_T", "delta1", 0.0),
    "loraplus delta2": ("loraplus", "slopes_mean_2_T", "delta2", 0.0),
    "equal_1 delta1 step 2": ("equal_1", "slopes_step2", "delta1", 1.0),
    "equal_1 delta1 steps 2..5": ("equal_1", "slopes_mean_2_T", "delta1", float("nan")),
    "equal_1_over_n delta1": ("equal_1_over_n", "slopes_mean_2_T", "delta1", -2.0),
}
rows = []
for seed in range(12):
    sc = delta_scaling(DeltaToyConfig(widths=(64, 128, 256, 512, 1024), seeds=64, seed=seed))["scalings"]
    rows.append([sc[s][stat][t] for s, stat, t, _ in CHECKS.values()])
a = np.array(rows)
for i, (name, (_, _, _, theory)) in enumerate(CHECKS.items()):
    dev = np.abs(a[:, i] - theory).max()
    print(f"{name:28s} mean {a[:, i].mean():+7.3f}  std {a[:, i].std():6.3f}  min {a[:, i].min():+7.3f}  "
          f"max {a[:, i].max():+7.3f}  max|dev from {theory:+.0f}| {dev:.3f}")
