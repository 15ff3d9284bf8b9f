"""Figure 2: LoRA+ parameter-group building on a 7B-shaped Llama (meta device: no weight memory) with PEFT LoRA r=16
on all linear layers (224 adapted layers, 448 factors, 739 tensors).

Two pairs, interleaved:
- groups only: ``loraplus.loraplus_param_groups`` vs PEFT's ``create_loraplus_optimizer`` given an optimizer class that
  only keeps the groups it is handed (so PEFT's call does nothing but build groups either);
- full call: ``loraplus.create_loraplus_optimizer`` vs PEFT's ``create_loraplus_optimizer``, both with
  ``torch.optim.AdamW`` (builds the optimizer too; loraplus also formats its group table for the log).
Target: loraplus <= 1.5x PEFT (groups only).
"""

from __future__ import annotations

import warnings

from benchmarks.common import Context, interleaved, medians, paired_ratio, ratio_row

NAME = "group_build"
TITLE = "2 group building"


def config(quick: bool) -> dict:
    layers = 2 if quick else 32
    llama = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": layers, "num_attention_heads": 32,
             "vocab_size": 32000}  # fmt: skip
    return {"llama": llama, "r": 16, "target_modules": "all-linear", "repeats": 3 if quick else 31, "calls": 1 if quick else 3}


class KeepGroups:
    """An "optimizer" that only keeps its parameter groups (to time group building alone)."""

    def __init__(self, params, **defaults):
        self.param_groups, self.defaults = list(params), defaults


def build(cfg: dict):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = LlamaForCausalLM(LlamaConfig(**cfg["llama"]))
        lora = LoraConfig(r=cfg["r"], lora_alpha=2 * cfg["r"], target_modules=cfg["target_modules"], task_type="CAUSAL_LM")
        return get_peft_model(base, lora)


def run(ctx: Context, cfg: dict) -> dict:
    import torch
    from peft.optimizers import create_loraplus_optimizer as peft_create

    from loraplus import create_loraplus_optimizer, loraplus_param_groups

    model = build(cfg)
    calls = cfg["calls"]

    def repeat(fn):
        def block() -> None:
            for _ in range(calls):
                fn()

        return block

    variants = {
        "loraplus_groups": repeat(lambda: loraplus_param_groups(model, lr=1e-4, loraplus_lr_ratio=16.0)),
        "peft_groups": repeat(lambda: peft_create(model, KeepGroups, lr=1e-4, loraplus_lr_ratio=16.0)),
        "loraplus_adamw": repeat(lambda: create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=16.0)),
        "peft_adamw": repeat(lambda: peft_create(model, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=16.0)),
    }
    samples = interleaved(variants, repeats=cfg["repeats"])
    per_call = medians(samples, per=calls)
    params = list(model.named_parameters())
    shape = (f"{cfg['llama']['num_hidden_layers']}-layer 7B-shaped Llama on meta, {len(params)} tensors, "
             f"{sum(p.requires_grad for _, p in params)} trainable")  # fmt: skip
    ms = {k: f"{1e3 * v['wall_s']:.3g} ms" for k, v in per_call.items()}
    rows = [
        ratio_row("groups only: loraplus / PEFT", paired_ratio(samples, "loraplus_groups", "peft_groups"), ("<=", 1.5),
                  value=f"loraplus {ms['loraplus_groups']}, PEFT {ms['peft_groups']}; {shape}"),
        ratio_row("full call with AdamW: loraplus / PEFT", paired_ratio(samples, "loraplus_adamw", "peft_adamw"), ("<=", 1.5),
                  value=f"loraplus {ms['loraplus_adamw']}, PEFT {ms['peft_adamw']}"),
    ]  # fmt: skip
    return {"rows": rows, "data": {"per_call_s": per_call, "samples": samples}}
