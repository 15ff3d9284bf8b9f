"""Figure 1: optimizer step time of ``loraplus.create_loraplus_optimizer`` vs PEFT's ``create_loraplus_optimizer`` vs
plain ``torch.optim.AdamW`` over the same trainable parameters (one group, weight_decay 0 everywhere).

Each is built three ways: the for-loop AdamW (torch's CPU default), ``foreach=True`` and ``fused=True`` (torch >= 2.4 has
a fused CPU AdamW). Gradients are random and fixed; a block is ``steps`` calls of ``optimizer.step()``; the 9 variants
are interleaved. Reported, no target any more: the old target (LoRA+ step <= 1.01x plain AdamW with the same
implementation) measured a fixed per-group cost of torch's foreach/fused kernels (LoRA+ needs at least two
learning rates, so two groups), about 0.16 ms of a 2.9 s training step: immaterial to a run.

Models: minilm-l6 with PEFT LoRA r=8 on query,value + the classification head (PEFT's BERT default; 26 tensors,
~76 k parameters), and a SmolLM2-135M-shaped Llama (30 layers, hidden 576) with LoRA r=16 on all linear layers
(420 tensors, 4.9 M parameters; the base is allocated uninitialised, only the LoRA factors get values).
"""

from __future__ import annotations

from benchmarks.common import Context, interleaved, medians, paired_ratio, ratio_row, skipped_row

NAME = "optimizer_step"
TITLE = "1 optimizer step"
IMPLS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def config(quick: bool) -> dict:
    if quick:
        return {"models": {"tiny-bert-qv": {"steps": 5}, "tiny-llama-all-linear": {"steps": 5}}, "repeats": 3}
    return {"models": {"minilm-l6-qv-r8": {"steps": 50}, "smollm2-shape-all-linear-r16": {"steps": 3}}, "repeats": 31}


def build(name: str):
    """The PEFT model of a configuration, with random fixed gradients on its trainable tensors."""
    import torch
    from peft import LoraConfig, get_peft_model

    from benchmarks.common import load_minilm, tiny_bert, tiny_llama
    from loraplus.models import LoraOptions, apply_lora

    if name == "minilm-l6-qv-r8":
        model = apply_lora(load_minilm()[1], LoraOptions())
    elif name == "tiny-bert-qv":
        model = apply_lora(tiny_bert(), LoraOptions())
    elif name == "tiny-llama-all-linear":
        model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    else:
        model = smollm2_shaped_lora()
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p) * 1e-3
    return model


def smollm2_shaped_lora():
    """SmolLM2-135M's shape (Llama, 30 x 576, GQA 9/3 heads, vocab 49152) + LoRA r=16 all-linear; frozen weights
    uninitialised (``to_empty``), LoRA factors random."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)  # fmt: skip
    with torch.device("meta"):
        model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    return model


def optimizers(model, impl: dict) -> dict:
    """``{"loraplus", "peft", "adamw"}`` optimizers over ``model``'s trainable tensors with the options ``impl``."""
    import torch
    from peft.optimizers import create_loraplus_optimizer as peft_create

    from loraplus import create_loraplus_optimizer

    trainable = [p for p in model.parameters() if p.requires_grad]
    adamw = torch.optim.AdamW
    return {
        "loraplus": create_loraplus_optimizer(model, adamw, lr=1e-4, loraplus_lr_ratio=16.0, **impl),
        "peft": peft_create(model, adamw, lr=1e-4, loraplus_lr_ratio=16.0, **impl),
        "adamw": adamw(trainable, lr=1e-4, weight_decay=0.0, **impl),
    }


def _block(opt, steps: int):
    def run() -> None:
        for _ in range(steps):
            opt.step()

    return run


def measure_model(name: str, steps: int, repeats: int) -> tuple[list[dict], dict]:
    model = build(name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    variants, counts, unavailable = {}, {}, {}
    for impl, options in IMPLS.items():
        try:
            opts = optimizers(model, options)
            for opt in opts.values():
                opt.step()  # fails here if this implementation does not run on CPU
        except (RuntimeError, TypeError, ValueError) as err:
            unavailable[impl] = f"{type(err).__name__}: {err}"
            continue
        for who, opt in opts.items():
            variants[f"{who}/{impl}"] = _block(opt, steps)
            counts[who] = sum(1 for g in opt.param_groups if g["params"])
    samples = interleaved(variants, repeats=repeats)
    per_step = medians(samples, per=steps)
    numel = sum(p.numel() for p in trainable)
    rows = []
    for impl in IMPLS:
        if impl in unavailable:
            rows.append(skipped_row(f"{name} {impl}: loraplus / AdamW", f"unavailable: {unavailable[impl]}"))
            continue
        ms = 1e3 * per_step[f"adamw/{impl}"]["wall_s"]
        info = f"AdamW {ms:.3g} ms/step; {len(trainable)} tensors, {numel:,} params; non-empty groups loraplus {counts['loraplus']}, PEFT {counts['peft']}"
        rows.append(ratio_row(f"{name} {impl}: loraplus / AdamW", paired_ratio(samples, f"loraplus/{impl}", f"adamw/{impl}"),
                              None, value=info))  # fmt: skip
        rows.append(ratio_row(f"{name} {impl}: PEFT / AdamW", paired_ratio(samples, f"peft/{impl}", f"adamw/{impl}"), None))
    data = {"tensors": len(trainable), "parameters": numel, "groups": counts, "unavailable": unavailable,
            "per_step_s": per_step, "samples": samples}  # fmt: skip
    return rows, data


def run(ctx: Context, cfg: dict) -> dict:
    rows, data = [], {}
    for name, options in cfg["models"].items():
        ctx.log(f"[{NAME}] {name}")
        model_rows, data[name] = measure_model(name, options["steps"], cfg["repeats"])
        rows += model_rows
    return {"rows": rows, "data": data}
