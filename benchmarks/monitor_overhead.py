"""Step time with and without the feature-learning monitor at its default interval (every=10).

Model: a 4-layer BERT built in code (hidden 256, 4 heads, intermediate 1024, vocab 2000; random weights), PEFT LoRA
r=8 on query/value with dropout 0.1, sequence classification; batch 16 × 128 tokens; AdamW over LoRA+ groups (λ 16).
Probe: 8 examples × 128 tokens (the Trainer callback's default probe size). Blocks of ``--steps`` optimizer steps
alternate between plain and monitored training (so load drift hits both alike). Two measures, in wall-clock and in
this process's CPU time: the ratio of the median block times (monitored / plain), and the monitor's own time
(``before_step`` + ``after_step``) over the rest of the monitored steps, which does not suffer from drift between
blocks on a shared machine. Writes ``monitor_overhead.json`` next to itself.

Run: ``.venv/bin/python benchmarks/monitor_overhead.py [--repeats 7] [--steps 10]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from loraplus.groups import loraplus_param_groups
from loraplus.monitor import FeatureLearningMonitor

BATCH, SEQ, PROBE = 16, 128, 8


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=2000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=SEQ, num_labels=2)  # fmt: skip
    lora = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.1)
    return get_peft_model(BertForSequenceClassification(config), lora)


def batch(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 2000, (n, SEQ), generator=g),
        "attention_mask": torch.ones(n, SEQ, dtype=torch.long),
        "labels": torch.randint(0, 2, (n,), generator=g),
    }


def run_block(model, opt, data: dict, steps: int, monitor: FeatureLearningMonitor | None) -> dict:
    """Seconds (wall and this process's CPU) of ``steps`` optimizer steps, and of the monitor's share of them."""
    clocks = (time.perf_counter, time.process_time)
    total, in_monitor = [-c() for c in clocks], [0.0, 0.0]
    for _ in range(steps):
        model(**data).loss.backward()
        if monitor is None:
            opt.step()
        else:
            t0 = [c() for c in clocks]
            monitor.before_step()
            t1 = [c() for c in clocks]
            opt.step()
            t2 = [c() for c in clocks]
            monitor.after_step()
            t3 = [c() for c in clocks]
            in_monitor = [m + (b - a) + (d - c) for m, a, b, c, d in zip(in_monitor, t0, t1, t2, t3)]
        opt.zero_grad(set_to_none=True)
    total = [t + c() for t, c in zip(total, clocks)]
    return {"wall_s": total[0], "cpu_s": total[1], "monitor_wall_s": in_monitor[0], "monitor_cpu_s": in_monitor[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per block (a multiple of every=10)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    model = build_model()
    model.train()
    opt = torch.optim.AdamW(loraplus_param_groups(model, lr=1e-4, loraplus_lr_ratio=16.0))
    monitor = FeatureLearningMonitor(model, batch(PROBE, seed=1), every=10)
    data = batch(BATCH, seed=0)
    run_block(model, opt, data, 3, None)  # warm-up
    plain, monitored = [], []
    for _ in range(options.repeats):
        plain.append(run_block(model, opt, data, options.steps, None))
        monitored.append(run_block(model, opt, data, options.steps, monitor))
    result = {
        "model": "BERT 4x256 (built in code), PEFT LoRA r=8 query/value", "batch": [BATCH, SEQ], "probe": [PROBE, SEQ],
        "every": monitor.every, "steps_per_block": options.steps, "repeats": options.repeats,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
    }  # fmt: skip
    for clock in ("wall", "cpu"):
        t_plain = statistics.median(b[f"{clock}_s"] for b in plain) / options.steps
        t_mon = statistics.median(b[f"{clock}_s"] for b in monitored) / options.steps
        # the monitor's own time against the rest of the same steps: immune to drift between blocks
        share = sum(b[f"monitor_{clock}_s"] for b in monitored) / sum(
            b[f"{clock}_s"] - b[f"monitor_{clock}_s"] for b in monitored
        )
        result[clock] = {"step_s_plain": t_plain, "step_s_monitored": t_mon, "ratio_blocks": t_mon / t_plain,
                         "ratio_in_step": 1 + share}  # fmt: skip
        print(f"{clock:>4}: step plain {t_plain * 1e3:.0f} ms, monitored {t_mon * 1e3:.0f} ms, "
              f"ratio of block medians {t_mon / t_plain:.3f}; monitor's own share {100 * share:.2f} %")  # fmt: skip
    result["blocks_plain"], result["blocks_monitored"] = plain, monitored
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
