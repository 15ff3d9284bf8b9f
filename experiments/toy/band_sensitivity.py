"""Post-hoc checks on experiments/toy/ratio_exponent.json (no retraining; seed-pooled surfaces only).

Run from the repository root: PYTHONPATH=src .venv/bin/python experiments/toy/band_sensitivity.py
1. Exponent of the band's upper edge (largest near-optimal ratio) for several tolerances.
2. Exponent of the smallest lr_A (and largest lr_B) whose row (column) still gets within 2x of the
   best loss: the two ends of the grid that the upper edge of the band is made of.
"""
import json
import math
from pathlib import Path

import numpy as np

from loraplus.experiments.toy_train import fit_exponent, ratio_estimates

res = json.loads((Path(__file__).parent / "ratio_exponent.json").read_text())
la, lb = np.array(res["log2_lr_A"]), np.array(res["log2_lr_B"])
widths = res["config"]["widths"]
for regime, rec in res["regimes"].items():
    surfaces = [10.0 ** np.array([[np.inf if v is None else v for v in row] for row in rec["train"]["log10_loss_pooled"][str(n)]])
                for n in widths]
    print(f"regime {regime}, widths {widths}")
    for tol in (1.5, 2.0, 4.0, 10.0):
        est = [ratio_estimates(s, la, lb, tol) for s in surfaces]
        hi = [None if e["band_hi_censored"] else e["band_hi"] for e in est]
        print(f"  band_tol {tol:4}: log2 band_hi {[round(h, 2) if h is not None else None for h in hi]}"
              f"  exponent {fit_exponent(widths, hi):+.2f}")
    lo_a, hi_b = [], []
    for s in surfaces:
        ok = s <= 2.0 * s.min()
        lo_a.append(float(la[np.argmax(ok.any(1))]))
        hi_b.append(float(lb[len(lb) - 1 - np.argmax(ok.any(0)[::-1])]))
    print(f"  smallest log2 lr_A within 2x: {lo_a}  exponent {fit_exponent(widths, lo_a):+.2f}")
    print(f"  largest  log2 lr_B within 2x: {hi_b}  exponent {fit_exponent(widths, hi_b):+.2f}")
