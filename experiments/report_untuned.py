"""The untuned user's view: LoRA and LoRA+ at the learning rates copied from the anchors' examples, paired by seed.

    .venv/bin/python experiments/report_untuned.py     # prints the table, writes experiments/untuned-multiemo.json

Reads experiments/untuned-multiemo-lr*/results/<method>_seed<s>.json (written by run_harder.sh's
untuned_multiemo): per lr, the final test and validation accuracy of each method (mean ± std over seeds) and the
paired gap LoRA+ − LoRA (mean ± std over seeds; each seed draws its own split, so seeds pair within a row).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)


def report() -> list[dict]:
    rows = []
    for folder in sorted(HERE.glob("untuned-multiemo-lr*"), key=lambda f: float(f.name.split("lr", 1)[1])):
        runs = {}
        for file in (folder / "results").glob("*_seed*.json"):
            result = json.loads(file.read_text())
            runs[(result["method"], result["seed"])] = result["final"]
        seeds = sorted({s for m, s in runs if (("lora", s) in runs and ("loraplus", s) in runs)})
        if not seeds:
            continue
        row = {"lr": float(folder.name.split("lr", 1)[1]), "seeds": seeds}
        for split in ("validation", "test"):
            for method in ("lora", "loraplus"):
                row[f"{method}_{split}"] = _mean_std([runs[(method, s)][f"{split}_accuracy"] for s in seeds])
            row[f"gap_{split}"] = _mean_std([runs[("loraplus", s)][f"{split}_accuracy"]
                                             - runs[("lora", s)][f"{split}_accuracy"] for s in seeds])  # fmt: skip
        row["per_seed_test"] = {s: [runs[("lora", s)]["test_accuracy"], runs[("loraplus", s)]["test_accuracy"]]
                                for s in seeds}  # fmt: skip
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| lr (= lr_A; head at lr) | seeds | LoRA test accuracy | LoRA+ (λ 16) test accuracy | LoRA+ − LoRA, test "
             "(paired) | LoRA+ − LoRA, validation (paired) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        fmt = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731
        gap = lambda ms: f"{ms[0]:+.3f} ± {ms[1]:.3f}"  # noqa: E731
        lines.append(f"| {r['lr']:g} | {len(r['seeds'])} | {fmt(r['lora_test'])} | {fmt(r['loraplus_test'])} | "
                     f"{gap(r['gap_test'])} | {gap(r['gap_validation'])} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    result = report()
    (HERE / "untuned-multiemo.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
