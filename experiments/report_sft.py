"""Paired table of the instruction-tuning runs: LoRA vs LoRA+ (λ 4) on seeds 0, 1, 2, and λ 2 / 4 / 16 on seed 0.

Reads only committed files: ``compare-sft-ni/`` (seed 0, lr tuned over 1e-4 and 4e-4), ``compare-sft-ni-seeds/``
(seeds 1 and 2 at the tuned lr 4e-4; each run's ``metrics.json`` copied to ``results/<method>_seed<s>.metrics.json``)
and ``compare-sft-ni-lambda<λ>/`` (LoRA+ at lr_A 4e-4, seed 0) and ``compare-sft-ni-lora-lr1.6e-3/`` (LoRA at LoRA+ λ 4's
lr_B, seed 0). Writes ``compare-sft-ni-seeds/paired.md`` and
``paired.json``. Run: ``.venv/bin/python experiments/report_sft.py``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def final(folder: str, method: str, seed: int) -> dict:
    result = json.loads((HERE / folder / "results" / f"{method}_seed{seed}.json").read_text())
    out = {"test_loss": result["final"]["test_loss"], "validation_loss": result["final"]["validation_loss"],
           "lr": result["lr"], "ratio": result["config"]["loraplus_lr_ratio"] if method == "loraplus" else 1.0}  # fmt: skip
    extra = HERE / folder / "results" / f"{method}_seed{seed}.metrics.json"
    if extra.is_file():
        metrics = json.loads(extra.read_text())
        out["heldout_loss"] = metrics.get("heldout", {}).get("loss")
        out["rougeL"] = {split: g.get("rougeL") for split, g in metrics.get("generation", {}).items()}
    return out


def mmlu(path: Path) -> float | None:
    return json.loads(path.read_text())["cloze"]["micro"] if path.is_file() else None


def main() -> None:
    rows = {}
    for method in ("lora", "loraplus"):
        rows[method] = {0: final("compare-sft-ni", method, 0)}
        rows[method][0]["mmlu_cloze"] = mmlu(HERE / "compare-sft-ni" / "mmlu" / f"{method}.json")
        for seed in (1, 2):
            rows[method][seed] = final("compare-sft-ni-seeds", method, seed)
            rows[method][seed]["mmlu_cloze"] = mmlu(HERE / "compare-sft-ni-seeds" / "mmlu" / f"{method}_seed{seed}.json")
    lambdas = {4.0: rows["loraplus"][0]}
    for lam in (2, 16):
        folder = HERE / f"compare-sft-ni-lambda{lam}"
        if (folder / "results" / "loraplus_seed0.json").is_file():
            lambdas[float(lam)] = final(f"compare-sft-ni-lambda{lam}", "loraplus", 0)
    gaps = [rows["lora"][s]["test_loss"] - rows["loraplus"][s]["test_loss"] for s in (0, 1, 2)]
    summary = {"rows": rows, "lambda_seed0": lambdas, "test_loss_gap_lora_minus_loraplus": gaps,
               "gap_mean": statistics.mean(gaps), "gap_std": statistics.stdev(gaps)}  # fmt: skip
    (HERE / "compare-sft-ni-seeds" / "paired.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| seed | LoRA test loss | LoRA+ test loss | LoRA − LoRA+ | LoRA / LoRA+ held-out loss | LoRA / LoRA+ MMLU cloze |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for seed in (0, 1, 2):
        a, b = rows["lora"][seed], rows["loraplus"][seed]
        held = (f"{a['heldout_loss']:.3f} / {b['heldout_loss']:.3f}" if a.get("heldout_loss") is not None
                else "see the seed-0 table")  # fmt: skip
        lines.append(f"| {seed} | {a['test_loss']:.3f} | {b['test_loss']:.3f} | {a['test_loss'] - b['test_loss']:+.3f} | "
                     f"{held} | {a['mmlu_cloze']:.2f} / {b['mmlu_cloze']:.2f} |")  # fmt: skip
    lines.append(f"\nTest-loss gap LoRA − LoRA+: mean {summary['gap_mean']:+.3f}, std {summary['gap_std']:.3f} over 3 "
                 "seeds (each seed has its own split, so losses are compared within a seed).\n")  # fmt: skip
    lines += ["| λ (seed 0, lr_A 4e-4) | validation loss | test loss |", "|---|---|---|"]
    for lam, row in sorted(lambdas.items()):
        lines.append(f"| {lam:g} | {row['validation_loss']:.3f} | {row['test_loss']:.3f} |")
    lines.append(f"| 1 (LoRA) | {rows['lora'][0]['validation_loss']:.3f} | {rows['lora'][0]['test_loss']:.3f} |")
    wide = HERE / "compare-sft-ni-lora-lr1.6e-3" / "results" / "lora_seed0.json"
    if wide.is_file():  # LoRA at LoRA+ (λ 4)'s lr_B: does a larger lr alone close the gap?
        row = final("compare-sft-ni-lora-lr1.6e-3", "lora", 0)
        summary["lora_lr_1.6e-3_seed0"] = row
        (HERE / "compare-sft-ni-seeds" / "paired.json").write_text(json.dumps(summary, indent=2) + "\n")
        lines.append(f"| 1 (LoRA at lr 1.6e-3) | {row['validation_loss']:.3f} | {row['test_loss']:.3f} |")
    (HERE / "compare-sft-ni-seeds" / "paired.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
