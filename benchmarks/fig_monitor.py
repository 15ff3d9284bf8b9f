"""Figure 6: the feature-learning monitor's overhead at its default interval (``FeatureLearningMonitor`` default
``every``, sampled once per block of ``every`` optimizer steps), reusing ``benchmarks/monitor_overhead.py``'s block
runner on a real model: minilm-l6, loraplus' LoRA defaults, the LoRA+ optimizer (fused AdamW), batch 16 x 128 BBC texts,
probe 8 x 128 (the Trainer callback's default probe size).

Plain and monitored blocks alternate. Two ratios: the monitor's own time (``before_step`` + ``after_step``) over the
rest of the same monitored steps (primary: immune to load drift between blocks), and the median paired ratio of
monitored / plain block times (catches indirect costs, but noisy on a shared machine). Target <= 1.05.
"""

from __future__ import annotations

import statistics

from benchmarks.common import Context, row

NAME = "monitor_overhead"
TITLE = "6 monitor overhead"


def config(quick: bool) -> dict:
    if quick:
        return {"model": "tiny-bert", "batch": [2, 16], "probe": 2, "repeats": 1}
    return {"model": "minilm-l6", "batch": [16, 128], "probe": 8, "repeats": 3}


def setup(cfg: dict):
    from benchmarks.common import bbc_batch, load_minilm, random_batch, tiny_bert
    from loraplus import create_loraplus_optimizer
    from loraplus.models import LoraOptions, apply_lora
    from loraplus.monitor import FeatureLearningMonitor

    n, seq = cfg["batch"]
    if cfg["model"] == "minilm-l6":
        tokenizer, base = load_minilm()
        data, probe = bbc_batch(tokenizer, n, seq, causal=False), bbc_batch(tokenizer, cfg["probe"], seq, causal=False)
    else:
        base = tiny_bert()
        data, probe = random_batch(n, seq, 1000, causal=False), random_batch(cfg["probe"], seq, 1000, causal=False, seed=1)
    model = apply_lora(base, LoraOptions())
    model.train()
    opt = create_loraplus_optimizer(model, lr=1e-4, fused=True)
    return model, opt, data, FeatureLearningMonitor(model, probe)


def run(ctx: Context, cfg: dict) -> dict:
    from benchmarks.monitor_overhead import run_block

    model, opt, data, monitor = setup(cfg)
    steps = monitor.every  # one sampled step per monitored block
    run_block(model, opt, data, 1, None)  # warm-up
    plain, monitored = [], []
    for r in range(cfg["repeats"]):
        first, second = (plain, None), (monitored, monitor)
        for out, mon in (first, second) if r % 2 == 0 else (second, first):
            out.append(run_block(model, opt, data, steps, mon))
    result = {}
    for clock in ("wall", "cpu"):
        own = sum(b[f"monitor_{clock}_s"] for b in monitored)
        rest = sum(b[f"{clock}_s"] - b[f"monitor_{clock}_s"] for b in monitored)
        blocks = [m[f"{clock}_s"] / p[f"{clock}_s"] for m, p in zip(monitored, plain)]
        result[clock] = {"in_step": 1 + own / rest, "blocks": statistics.median(blocks), "blocks_all": blocks}
    step_s = statistics.median(b["wall_s"] for b in plain) / steps
    rows = [
        row(f"every={monitor.every}: (step + monitor) / step, same steps", wall=result["wall"]["in_step"],
            cpu=result["cpu"]["in_step"], target=("<=", 1.05), value=f"{len(monitor.layers)} layers, plain step {step_s:.3g} s"),
        row("monitored / plain blocks (paired median)", wall=result["wall"]["blocks"], cpu=result["cpu"]["blocks"],
            spread={c: [min(result[c]["blocks_all"]), max(result[c]["blocks_all"])] for c in ("wall", "cpu")},
            note="drift-sensitive cross-check"),
    ]  # fmt: skip
    return {"rows": rows, "data": {"every": monitor.every, "ratios": result, "plain": plain, "monitored": monitored}}
