"""Which rule for ``--loraplus-lr-ratio auto`` lies nearest the ratios measured here (and the paper's LLM advice).

    .venv/bin/python experiments/report_auto.py        # prints the table, writes experiments/auto-rule.json

Measured optima, read from the committed results:
- each sweep (``sweep-bbc32``, ``sweep-smollm2-sms``, ``sweep-multiemo``): the ratios lr_B / lr_A of every cell
  within 0.005 of the best validation metric (the near-optimal cells);
- instruction tuning on smollm2-135m (``compare-sft-ni*``, seed 0): LoRA+ at lr_A 4e-4 with λ 1, 2, 4 and 16 and
  LoRA at 1.6e-3; the λ of every run within 0.005 of the lowest validation loss;
- the paper's advice for Llama-7b (Hayou et al. 2024, Sec. 5): λ between 2¹ and 2² at width 4096 (a range, not
  a measurement here).
A rule's distance from an optimum is |log2(pick / nearest near-optimal ratio)| (0 inside the advice's range);
the rule with the smallest sum is ``auto``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.005
WIDTHS = {"minilm-l6": 384, "smollm2-135m": 576}


def sweep_optimum(folder: str) -> dict:
    saved = json.loads((HERE / folder / "results.json").read_text())
    metric, lower = saved["metric"], saved["metric"] in ("loss", "perplexity")
    sign = -1 if lower else 1
    best = max(sign * v for row in saved["validation_mean"] for v in row if v == v)
    near = sorted({b / a for i, b in enumerate(saved["lr_B"]) for j, a in enumerate(saved["lr_A"])
                   if saved["validation_mean"][i][j] == saved["validation_mean"][i][j]
                   and sign * saved["validation_mean"][i][j] >= best - TOLERANCE})  # fmt: skip
    model = saved["config"]["model"]
    return {"name": f"{folder} ({model}, {saved['config']['dataset']}, {metric})", "width": WIDTHS[model],
            "near_optimal": near}  # fmt: skip


def sft_optimum() -> dict:
    runs = []
    for folder in ("compare-sft-ni", "compare-sft-ni-lambda2", "compare-sft-ni-lambda16", "compare-sft-ni-lora-lr1.6e-3"):
        for file in sorted((HERE / folder / "results").glob("*_seed0.json")):
            result = json.loads(file.read_text())
            runs.append((result["final"]["validation_loss"], float(result["config"]["loraplus_lr_ratio"])))
    best = min(loss for loss, _ in runs)
    near = sorted({ratio for loss, ratio in runs if loss <= best + TOLERANCE})
    return {"name": "compare-sft-ni* (smollm2-135m, natural-instructions, validation loss, seed 0)", "width": 576,
            "near_optimal": near}  # fmt: skip


PAPER_LLAMA = {"name": "paper: Llama-7b advice, λ in 2¹..2² (not measured here)", "width": 4096, "range": [2.0, 4.0]}

RULES = {
    "width rule 16·(n/768)^0.918 (toy exponent)": lambda n: 16.0 * (n / 768) ** 0.918,
    "√n (Su 2024), 16 at n = 768": lambda n: 16.0 * math.sqrt(n / 768),
    "paper default, λ = 16": lambda n: 16.0,
    "paper's LLM advice, λ = 2¹": lambda n: 2.0,
    "paper's LLM advice, λ = 2²": lambda n: 4.0,
}


def distance(pick: float, optimum: dict) -> float:
    if "range" in optimum:
        low, high = optimum["range"]
        return 0.0 if low <= pick <= high else min(abs(math.log2(pick / low)), abs(math.log2(pick / high)))
    return min(abs(math.log2(pick / r)) for r in optimum["near_optimal"])


def report() -> dict:
    optima = [sweep_optimum("sweep-bbc32"), sweep_optimum("sweep-smollm2-sms"), sweep_optimum("sweep-multiemo"),
              sft_optimum(), PAPER_LLAMA]  # fmt: skip
    rules = {}
    for name, rule in RULES.items():
        picks = [rule(o["width"]) for o in optima]
        dists = [distance(p, o) for p, o in zip(picks, optima)]
        rules[name] = {"picks": picks, "distances": dists, "sum": sum(dists)}
    nearest = min(rules, key=lambda r: rules[r]["sum"])
    return {"tolerance": TOLERANCE, "optima": optima, "rules": rules, "nearest": nearest,
            "nearest_at_width": {str(n): RULES[nearest](n) for n in (384, 576, 768, 4096)}}  # fmt: skip


def markdown(result: dict) -> str:
    optima = result["optima"]
    head = ["rule"] + [f"{o['name'].split(' (')[0].split(':')[0]} (n {o['width']}): "
                       + (f"{o['range'][0]:g}–{o['range'][1]:g}" if "range" in o
                          else ", ".join(f"{r:.3g}" for r in o["near_optimal"])) for o in optima] + ["sum"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result["rules"].items():
        cells = [f"{p:.3g} ({d:.2f})" for p, d in zip(r["picks"], r["distances"])]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['sum']:.2f} |")
    lines.append(f"\nEach cell: the rule's pick (its distance in factors of 2 from the nearest near-optimal ratio). "
                 f"Nearest rule: {result['nearest']}.")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    result = report()
    (HERE / "auto-rule.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
