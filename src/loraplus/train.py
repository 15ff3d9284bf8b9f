"""One fine-tuning run: ``TrainConfig`` -> data + PEFT LoRA model -> ``LoraPlusTrainer`` -> artifacts.

The run folder holds ``adapter/`` (PEFT adapter: ``adapter_model.safetensors`` + ``adapter_config.json``,
loadable with ``peft.PeftModel.from_pretrained``), ``metrics.json`` (written last: a run with it is finished),
``config.json`` (resolved options, labels, versions, parameter groups), ``log_history.json`` and ``checkpoints/``.
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from .config import TrainConfig
from .io import atomic_dir, atomic_write_json, write_problem

__all__ = ["compute_metrics", "prepare_output_dir", "run_train"]

logger = logging.getLogger("loraplus")


def prepare_output_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check the run folder before any training: never replace a run silently, fail early if unwritable.

    Raises:
        FileExistsError: ``path`` holds a run (``metrics.json`` or checkpoints) and neither ``overwrite`` nor
            (for an unfinished run) ``resume`` is given.
        FileNotFoundError: ``resume`` with no checkpoint to resume from.
        PermissionError: ``path`` cannot be created or written.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output_dir {str(out)!r} is a file, not a folder; choose another --output-dir")
    finished = (out / "metrics.json").exists()
    has_checkpoint = any((out / "checkpoints").glob("checkpoint-*"))
    started = has_checkpoint or (out / "adapter").exists()
    if resume and finished:
        raise FileExistsError(f"output_dir {str(out)!r} holds a finished run (metrics.json): nothing to resume")
    if resume and not has_checkpoint:
        raise FileNotFoundError(f"--resume: no checkpoint in {str(out / 'checkpoints')!r}")
    if (finished or started) and not (overwrite or resume):
        what = "a finished run (metrics.json)" if finished else "an unfinished run (checkpoints/adapter)"
        raise FileExistsError(
            f"output_dir {str(out)!r} holds {what}; pass --overwrite to replace it, "
            f"{'--resume to continue it, ' if not finished else ''}or choose another --output-dir"
        )
    problem = write_problem(out, create=True)
    if problem:
        raise PermissionError(f"output_dir {str(out)!r} is not writable ({problem}); choose another --output-dir")
    if overwrite:  # what a new run would append to or mix with
        (out / "metrics.json").unlink(missing_ok=True)
        (out / "log.csv").unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    return out


def compute_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1 (unweighted mean of per-class F1, sklearn) from ``(logits, labels)``."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    preds = np.asarray(logits).argmax(-1)
    return {"accuracy": float(accuracy_score(labels, preds)), "macro_f1": float(f1_score(labels, preds, average="macro"))}


def limit_samples(splits, cfg: TrainConfig):
    """A new DatasetDict with ``max_train_samples``/``max_eval_samples`` applied.

    Raises:
        ValueError: the training split is smaller than one batch.
    """
    import datasets

    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "test": cfg.max_eval_samples}
    out = datasets.DatasetDict({
        name: split.select(range(min(limits[name], len(split)))) if limits.get(name) is not None else split
        for name, split in splits.items()
    })  # fmt: skip
    if len(out["train"]) < cfg.batch_size:
        raise ValueError(f"the training split has {len(out['train'])} examples, fewer than batch_size={cfg.batch_size}")
    return out


def _tokenize(data, tokenizer, cfg: TrainConfig):
    """Tokenize the splits (no padding: batches are padded dynamically) after the sample limits; cached on disk."""
    from .data import map_cached

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=cfg.max_length)

    return map_cached(
        limit_samples(data.splits, cfg), encode, tokenizer=tokenizer, key=f"classification max_length={cfg.max_length}",
        desc="tokenizing", remove_columns=["text"],
    )  # fmt: skip


def _training_arguments(cfg: TrainConfig, out: Path):
    import torch

    from .hf import LoraPlusTrainingArguments

    return LoraPlusTrainingArguments(
        output_dir=str(out / "checkpoints"),
        learning_rate=cfg.learning_rate,
        loraplus_lr_ratio=cfg.loraplus_lr_ratio,
        loraplus_lr_embedding=cfg.loraplus_lr_embedding,
        loraplus_lr_other=cfg.loraplus_lr_other,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a fraction of all steps
        lr_scheduler_type=cfg.lr_scheduler_type,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps" if cfg.save_checkpoints else "no",
        save_steps=cfg.eval_steps,
        save_total_limit=2,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[n for n in cfg.report_to if n not in ("none", "csv", "tensorboard")] or "none",  # see reporters
        use_cpu=not torch.cuda.is_available(),  # CPU DDP over gloo needs it; GPUs get NCCL/FSDP/DeepSpeed
        dataloader_num_workers=0,
        disable_tqdm=False,
        logging_nan_inf_filter=False,  # a NaN loss must show (and stop the run: safety.NonFiniteLossCallback)
    )


class CsvLogCallback(TrainerCallback):
    """``report_to=csv``: every log row (train loss, lr, eval metrics) appended to ``path`` as it happens.

    Long format, one line per value: ``step,epoch,name,value``; the file is flushed after each log, so a killed
    run keeps what it logged. A resumed run appends.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "name", "value"])
            for name, value in logs.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.writerow([state.global_step, state.epoch, name, value])


def reporting_callbacks(cfg: TrainConfig, out: Path) -> list:
    """Callbacks for ``report_to`` entries that write into the run folder: csv (``log.csv``), tensorboard
    (transformers' ``TensorBoardCallback``, event files in ``tensorboard/``); other integrations go through
    ``TrainingArguments.report_to``."""
    callbacks = []
    if "csv" in cfg.report_to:
        callbacks.append(CsvLogCallback(out / "log.csv"))
    if "tensorboard" in cfg.report_to:
        from transformers.integrations import TensorBoardCallback

        board = TensorBoardCallback()
        board.logging_dir = str(out / "tensorboard")
        callbacks.append(board)
    return callbacks


def build_trainer(cfg: TrainConfig, path: str, out: Path, data, callbacks=(), adapter: str | None = None):
    """Load the model at ``path``, inject LoRA, tokenize, and return ``(trainer, tokenizer, tokenized splits)``.

    With ``adapter`` (a saved PEFT adapter folder) that adapter is loaded frozen instead of fresh LoRA: a trainer
    for ``evaluate()`` only (``loraplus evaluate``).
    """
    import transformers
    from transformers import DataCollatorWithPadding

    from .hf import LoraPlusTrainer
    from .models import attach_lora, load_sequence_classifier, model_max_length

    transformers.set_seed(cfg.seed)
    tokenizer, model = load_sequence_classifier(path, data.label_names, trust_remote_code=cfg.trust_remote_code)
    limit = model_max_length(tokenizer, model)
    if cfg.max_length > limit:
        raise ValueError(f"max_length={cfg.max_length} exceeds the model's limit of {limit} tokens")
    model = attach_lora(model, cfg.lora(), "SEQ_CLS", adapter)
    tokenized = _tokenize(data, tokenizer, cfg)
    trainer = LoraPlusTrainer(
        model=model,
        optimizers=(peft_optimizer(cfg, model) if adapter is None else None, None),
        args=_training_arguments(cfg, out),
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
    )
    # A sequence classifier's loss is a per-batch mean that ignores `num_items_in_batch`, though its forward takes
    # **kwargs; left True, transformers 5 multiplies the loss by the number of processes under DDP (2x loss, 2x grads).
    trainer.model_accepts_loss_kwargs = False
    return trainer, tokenizer, tokenized


def peft_optimizer(cfg: TrainConfig, model):
    """PEFT's LoRA-FA or Riemannian-preconditioned AdamW for ``cfg.optimizer``; ``None`` for LoRA+ (the Trainer's).

    Both give every trainable tensor ``learning_rate`` and ignore the LoRA+ options.
    """
    import torch
    from peft.optimizers import create_lorafa_optimizer, create_riemannian_optimizer

    if cfg.optimizer == "lorafa":  # freezes A, preconditions B's gradient
        return create_lorafa_optimizer(
            model, r=cfg.r, lora_alpha=cfg.lora_alpha, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
            use_rslora=cfg.use_rslora,
        )  # fmt: skip
    if cfg.optimizer == "riemannian":
        return create_riemannian_optimizer(model, torch.optim.AdamW, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return None


def _resume_point(out: Path) -> str:
    """The newest complete checkpoint (a kill while saving leaves a partial ``checkpoint-N``; it is skipped)."""
    from .safety import last_good_checkpoint

    last = last_good_checkpoint(out / "checkpoints")
    if last is None:
        folder = str(out / "checkpoints")
        raise FileNotFoundError(f"--resume: no complete checkpoint in {folder!r}; start over with --overwrite")
    return str(last)


def metrics_text(metrics: dict[str, float]) -> str:
    """``accuracy 0.9764  macro-F1 0.9779  loss 0.2819`` for the metrics present (one split's)."""
    names = {"accuracy": "accuracy", "macro_f1": "macro-F1", "exact_match": "exact-match", "perplexity": "perplexity",
             "loss": "loss"}  # fmt: skip
    return "  ".join(f"{name} {metrics[key]:.4f}" for key, name in names.items() if key in metrics)


def _split_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    keys = ("accuracy", "macro_f1", "loss", "perplexity", "exact_match")
    return {k: float(metrics[f"{prefix}_{k}"]) for k in keys if f"{prefix}_{k}" in metrics}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ("loraplus", "torch", "transformers", "peft", "accelerate", "datasets")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_train(cfg: TrainConfig, callbacks=()) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.dataset`` with LoRA+ and write the run folder.

    Returns the metrics dict also written to ``metrics.json``:
    ``{"test": {"accuracy", "macro_f1", "loss"}, "validation": {...}, "train": {...}, "wall_time_s": float}``;
    with ``task="causal-lm"`` the splits also carry ``perplexity`` and ``exact_match``.

    Raises:
        FileExistsError, PermissionError: see ``prepare_output_dir``.
        ValueError: bad options, data or model (from the loaders), or a split smaller than one batch.
    """
    from .causal import build_causal_trainer
    from .data import load_classification_data
    from .models import resolve_model
    from .safety import NonFiniteLossCallback

    start = time.perf_counter()
    out = prepare_output_dir(cfg.output_dir, overwrite=cfg.overwrite, resume=cfg.resume)
    path = resolve_model(cfg.model)  # a bad model name fails before the data is read
    data = load_classification_data(
        cfg.dataset, text_column=cfg.text_column, label_column=cfg.label_column,
        val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed,
    )  # fmt: skip
    build = build_causal_trainer if cfg.task == "causal-lm" else build_trainer
    callbacks = [NonFiniteLossCallback(), *reporting_callbacks(cfg, out), *callbacks]
    trainer, tokenizer, tokenized = build(cfg, path, out, data, callbacks)
    sizes = {name: len(split) for name, split in tokenized.items()}
    logger.info("data %s: %s, %d classes", data.source, sizes, len(data.label_names))
    monitor = None
    if cfg.monitor:
        from .monitor import add_feature_learning_callback

        monitor = add_feature_learning_callback(trainer, every=cfg.monitor_every, save_json=False)
    train_result = trainer.train(resume_from_checkpoint=_resume_point(out) if cfg.resume else None)
    validation = trainer.evaluate()
    test = trainer.evaluate(tokenized["test"], metric_key_prefix="test")
    metrics = {
        "test": _split_metrics(test, "test"),
        "validation": _split_metrics(validation, "eval"),
        "train": {
            "loss": float(train_result.training_loss),
            "steps": int(trainer.state.global_step),
            "runtime_s": float(train_result.metrics.get("train_runtime", 0.0)),
            "samples_per_second": float(train_result.metrics.get("train_samples_per_second", 0.0)),
        },
        "wall_time_s": time.perf_counter() - start,
    }
    if trainer.is_world_process_zero():  # under torchrun/accelerate only rank 0 writes
        if monitor is not None:
            _write_monitor(out, monitor.monitor)
        _write_artifacts(out, cfg, trainer, tokenizer, data, sizes, metrics)
    return metrics


def _write_monitor(out: Path, monitor) -> None:
    """``feature_learning.json`` (per layer and aggregate δ_A, δ_B) and its plot ``feature_learning.png``."""
    import json

    from .monitor import plot_monitor

    monitor.save_json(out / "feature_learning.json")
    plot_monitor(json.loads((out / "feature_learning.json").read_text()), out / "feature_learning.png")


def _write_artifacts(out: Path, cfg: TrainConfig, trainer, tokenizer, data, sizes: dict, metrics: dict) -> None:
    """Adapter, config.json, log_history.json, then metrics.json last (its presence marks a finished run)."""
    from .optim import describe_groups

    with atomic_dir(out / "adapter") as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    run_config = {
        "config": cfg.to_dict(),
        "model_path": str(trainer.model.peft_config["default"].base_model_name_or_path),
        "labels": data.label_names,
        "data": {"source": data.source, "sizes": sizes, "duplicates_removed": data.num_duplicates_removed},
        "parameter_groups": describe_groups(trainer.optimizer).splitlines(),
        "versions": _versions(),
    }
    atomic_write_json(out / "config.json", run_config)
    atomic_write_json(out / "log_history.json", trainer.state.log_history)
    atomic_write_json(out / "metrics.json", metrics)
