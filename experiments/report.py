"""Print the markdown of README's "Does LoRA+ help? Measured here" tables from the committed results.

    .venv/bin/python experiments/report.py

Reads experiments/sweep-*/results.json and experiments/compare-*/summary.{json,md}; writes nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sweep_section(folder: Path) -> str:
    saved = json.loads((folder / "results.json").read_text())
    cfg, metric = saved["config"], saved["metric"]
    lines = [f"**{folder.name}** — `{cfg['model']}` on `{cfg['dataset']}` ({cfg.get('task', 'classification')}), max length "
             f"{cfg['max_length']}, {cfg['max_steps']} steps of {cfg['batch_size']}, seeds {','.join(cfg['seeds'])}; "
             f"validation / test {metric} per (lr_A, lr_B):", "",
             "| lr_B \\ lr_A | " + " | ".join(f"{a:.1e}" for a in saved["lr_A"]) + " |",
             "|---" * (len(saved["lr_A"]) + 1) + "|"]  # fmt: skip
    for lr_b, val, test in zip(saved["lr_B"], saved["validation_mean"], saved["test_mean"]):
        cells = [("—" if math.isnan(v) else f"{v:.3f} / {t:.3f}") for v, t in zip(val, test)]
        lines.append(f"| {lr_b:.1e} | " + " | ".join(cells) + " |")
    best = saved["best"]
    lines += ["", f"Best cell on validation: lr_A {best['lr_A']:.2g}, lr_B {best['lr_B']:.2g} (ratio "
              f"{best['ratio']:.3g}), test {metric} {best['test_' + metric]:.3f}. Heatmap: `{folder.name}/heatmap.png`."]  # fmt: skip
    ties = _ties(saved)
    if len(ties) > 1:
        lines.append("Cells within 0.005 of the best validation score (ratio: test): " + ", ".join(ties) + ".")
    return "\n".join(lines)


def _ties(saved: dict) -> list[str]:
    lower = saved["metric"] in ("loss", "perplexity")
    best = saved["best"]["validation_" + saved["metric"]]
    out = []
    for i, lr_b in enumerate(saved["lr_B"]):
        for j, lr_a in enumerate(saved["lr_A"]):
            v = saved["validation_mean"][i][j]
            if not math.isnan(v) and (v <= best + 0.005 if lower else v >= best - 0.005):
                out.append(f"{lr_b / lr_a:.3g}: {saved['test_mean'][i][j]:.3f}")
    return out


def main() -> None:
    for folder in sorted(HERE.glob("sweep-*")):
        if (folder / "results.json").exists():
            print(sweep_section(folder), end="\n\n")
    for folder in sorted(HERE.glob("compare-*")):
        if (folder / "summary.md").exists():
            cfg = json.loads((folder / "summary.json").read_text())["config"]
            print(f"**{folder.name}** — `{cfg['model']}` on `{cfg['dataset']}` ({cfg.get('task', 'classification')}), max length "
                  f"{cfg['max_length']}, {cfg['max_steps']} steps of {cfg['batch_size']}, lr grid "
                  f"{', '.join(cfg['lrs'])}, seeds {','.join(cfg['seeds'])}:\n")  # fmt: skip
            print((folder / "summary.md").read_text())


if __name__ == "__main__":
    main()
