"""Print the learning curves of experiments/curve-*: validation accuracy / macro-F1 at every evaluation of each
run, and its test metrics.

    .venv/bin/python experiments/report_curves.py

Reads experiments/curve-*/results/<method>_seed<seed>.json (written by `loraplus compare`); writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def curve_section(folder: Path) -> str:
    lines = [f"**{folder.name}**: validation accuracy / macro-F1 by step", ""]
    for i, path in enumerate(sorted((folder / "results").glob("*.json"))):
        run = json.loads(path.read_text())
        evals = [e for e in run["evaluations"] if "eval_accuracy" in e]
        if i == 0:
            lines += ["| run | " + " | ".join(str(e["step"]) for e in evals) + " | test |", "|---" * (len(evals) + 2) + "|"]
        cfg, final = run["config"], run["final"]
        targets = ",".join(cfg["target_modules"] or ["default targets"])
        name = f"{run['method']} lr {run['lr']:g} seed {run['seed']} (r {cfg['r']}, {targets}, λ {cfg['loraplus_lr_ratio']:g})"
        cells = [f"{e['eval_accuracy']:.3f} / {e['eval_macro_f1']:.3f}" for e in evals]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {final['test_accuracy']:.3f} / {final['test_macro_f1']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    for folder in sorted(HERE.glob("curve-*")):
        print(curve_section(folder), end="\n\n")


if __name__ == "__main__":
    main()
