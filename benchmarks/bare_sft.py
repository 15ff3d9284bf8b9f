"""The "bare" reference of figure 10: a typical instruction-tuning script, TRL SFTTrainer + PEFT LoRA + PEFT's LoRA+.

What a user writes without loraplus: each row becomes TRL's conversational prompt/completion (one user turn, one
assistant turn), rendered by the model's own chat template; ``SFTTrainer`` with ``completion_only_loss`` (loss on
the completion tokens only), ``max_length`` = 384, packing off (``--packing``: TRL's best-fit packing); PEFT LoRA r=8
(alpha 16, dropout 0.1) on q_proj,v_proj; ``peft.optimizers.create_loraplus_optimizer`` (AdamW, lr 2e-4, ratio 16),
linear schedule with 10 % warm-up; batch 4, 40 steps, seed 0; no evaluation, no checkpoints; float32 without
activation checkpointing (bf16 on a CUDA GPU that supports it), as ``loraplus train`` (SFTConfig's own defaults
differ: checkpointing on, bf16 on, on CPU too).

The rows are loraplus' own split (``load_instruction_data(dataset, seed=0)``, default the built-in
natural-instructions), so both sides see the same examples; nothing else of loraplus is used. Examples whose prompt
fills ``max_length`` carry no loss after truncation: without packing TRL drops them (loraplus drops the same ones
before TRL); with ``--packing`` TRL keeps them, truncated, in rows of their own.

Run: ``.venv/bin/python benchmarks/bare_sft.py [--model PATH] [--dataset NAME_OR_PATH] [--max-steps N] [--packing]``
(prints the metrics as JSON).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

from loraplus.instruct_data import load_instruction_data  # the rows only


def conversational(example: dict) -> dict:
    """prompt/completion strings -> TRL's conversational prompt/completion (a user turn, an assistant turn)."""
    return {"prompt": [{"role": "user", "content": example["prompt"]}],
            "completion": [{"role": "assistant", "content": example["completion"]}]}  # fmt: skip


def run(model_path: str, output_dir: str, *, dataset: str = "natural-instructions", lr: float = 2e-4,
        max_steps: int = 40, batch_size: int = 4, max_length: int = 384, packing: bool = False,
        logging_steps: int = 10, callbacks=()) -> dict:  # fmt: skip
    """Train for ``max_steps`` optimizer steps; returns ``{"train_loss", "train_runtime_s", "train_examples",
    "train_rows", "steps", "wall_time_s"}`` (``train_rows``: rows after TRL's preparation, packed rows with
    ``packing``; wall time from the call to the end of training)."""
    start = time.perf_counter()
    set_seed(0)  # the LoRA A factors are drawn at load time, before the Trainer seeds anything
    train = load_instruction_data(dataset, seed=0).splits["train"]
    train = train.map(conversational, remove_columns=["prompt", "completion"])

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["q_proj", "v_proj"]))  # fmt: skip

    optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=16)
    cuda = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=output_dir, learning_rate=lr, max_steps=max_steps, per_device_train_batch_size=batch_size,
        warmup_steps=0.1, lr_scheduler_type="linear", logging_steps=logging_steps, save_strategy="no",
        eval_strategy="no", max_length=max_length, packing=packing, completion_only_loss=True, seed=0,
        report_to="none", use_cpu=not cuda,
        # SFTConfig's own defaults are activation checkpointing on and bf16 on (CPU autocast included)
        activation_checkpointing=False, bf16=cuda and torch.cuda.is_bf16_supported(),
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         optimizers=(optimizer, None), callbacks=list(callbacks))  # fmt: skip
    result = trainer.train()
    return {
        "train_loss": float(result.training_loss),
        "train_runtime_s": result.metrics["train_runtime"],
        "train_examples": len(train),
        "train_rows": len(trainer.train_dataset),
        "steps": trainer.state.global_step,
        "wall_time_s": time.perf_counter() - start,
    }


def main() -> None:
    from loraplus.models import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the built-in smollm2-135m)")
    parser.add_argument("--dataset", default="natural-instructions", help="built-in name, file or data folder")
    parser.add_argument("--max-steps", type=int, default=40, help="optimizer steps (default 40)")
    parser.add_argument("--max-length", type=int, default=384, help="tokens per row (default 384)")
    parser.add_argument("--packing", action="store_true", help="TRL's best-fit packing into max_length rows")
    parser.add_argument("--output-dir", default=None, help="Trainer output folder (default: a temporary folder)")
    options = parser.parse_args()
    model = options.model or resolve_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(model, options.output_dir or tmp, dataset=options.dataset, max_steps=options.max_steps,
                             max_length=options.max_length, packing=options.packing), indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
