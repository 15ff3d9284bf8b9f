"""The "bare" reference of figures 4, 5 and 7: a typical user script, Hugging Face Trainer + PEFT LoRA + PEFT's LoRA+.

What a user writes without loraplus: ``AutoModelForSequenceClassification`` + PEFT LoRA r=8 (alpha 16, dropout 0.1)
on query,value + ``peft.optimizers.create_loraplus_optimizer`` (AdamW, lr 2e-4, ratio 16) + ``Trainer``; the texts are
tokenized once, padded to ``max_length`` = 128; one epoch at batch 16, seed 0; the test accuracy is measured after
training.
The train/test split is loraplus' own (``load_classification_data("bbc-news", seed=0)``), so both sides see the
same examples; nothing else of loraplus is used.

Run: ``.venv/bin/python benchmarks/bare_trainer.py [--model PATH] [--output-dir DIR]`` (prints the metrics as JSON).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, set_seed

from loraplus.data import load_classification_data  # the split only


def accuracy(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.asarray(logits).argmax(-1) == labels).mean())}


def run(model_path: str, output_dir: str, *, lr: float = 2e-4, epochs: float = 1.0, batch_size: int = 16,
        max_length: int = 128, max_train_samples: int | None = None, max_eval_samples: int | None = None,
        max_steps: int = -1, callbacks=()) -> dict:  # fmt: skip
    """Train (``max_steps`` > 0: stop after that many optimizer steps) and evaluate; returns ``{"test_accuracy",
    "train_runtime_s", "train_samples_per_second", "train_samples", "wall_time_s"}`` (wall time from the call to the
    end of the test evaluation)."""
    start = time.perf_counter()
    set_seed(0)  # the new head and the LoRA A factors are drawn at load time, before the Trainer seeds anything
    data = load_classification_data("bbc-news", seed=0)
    train, test = data.splits["train"], data.splits["test"]
    if max_train_samples:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples:
        test = test.select(range(min(max_eval_samples, len(test))))

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(data.label_names))
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))  # fmt: skip

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, padding="max_length", max_length=max_length)

    train = train.map(tokenize, batched=True, remove_columns=["text"])
    test = test.map(tokenize, batched=True, remove_columns=["text"])

    optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=16)
    args = TrainingArguments(
        output_dir=output_dir, learning_rate=lr, num_train_epochs=epochs, max_steps=max_steps,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=64, seed=0, report_to="none",
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=test, optimizers=(optimizer, None),
                      compute_metrics=accuracy, callbacks=list(callbacks))  # fmt: skip
    result = trainer.train()
    metrics = trainer.evaluate()
    return {
        "test_accuracy": metrics["eval_accuracy"],
        "train_runtime_s": result.metrics["train_runtime"],
        "train_samples_per_second": result.metrics["train_samples_per_second"],
        "train_samples": len(train),
        "wall_time_s": time.perf_counter() - start,
    }


def main() -> None:
    from loraplus.models import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the built-in minilm-l6)")
    parser.add_argument("--output-dir", default=None, help="Trainer output folder (default: a temporary folder)")
    options = parser.parse_args()
    model = options.model or resolve_model("minilm-l6")
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(model, options.output_dir or tmp), indent=2))


if __name__ == "__main__":
    main()
