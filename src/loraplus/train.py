"""One fine-tuning run: ``TrainConfig`` -> data + PEFT LoRA model -> ``LoraPlusTrainer`` -> artifacts.

The run folder holds ``identity.json`` (options and data fingerprint, written when training starts: see
``runfolder``), ``adapter/`` (PEFT adapter: ``adapter_model.safetensors`` + ``adapter_config.json``, loadable with
``peft.PeftModel.from_pretrained``), ``metrics.json`` (written last: a run with it is finished), ``config.json``
(resolved options, labels, versions, parameter groups), ``log_history.json`` and ``checkpoints/``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Iterator

import torch
from transformers import TrainerCallback

from .config import AUTO, TrainConfig
from .distributed import is_main_process
from .groups import LoraPlusConfig
from .hf import LoraPlusTrainer, LoraPlusTrainingArguments, add_feature_learning_callback
from .io import atomic_dir, atomic_write_json, umask_modes, write_problem
from .models import attach_lora, model_max_length, resolve_model
from .monitor import plot_monitor
from .optim import describe_groups
from .precision import RunHardware, resolve_hardware
from .runfolder import (differences, finish_replace, folder_lock, holds_nothing, identity_of, read_identity,
                        replace_previous, write_identity)
from .safety import NonFiniteLossCallback, last_good_checkpoint
from .tasks import get_task
from .threads import IdleMeter, apply_threads
from .width_rule import AUTO_RATIO

__all__ = ["build_trainer", "prepare_output_dir", "resolve_ratio", "run_folder", "run_train", "split_metrics", "start_run"]

logger = logging.getLogger("loraplus")


def prepare_output_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False,
                       identity: dict | None = None) -> Path:  # fmt: skip
    """Check the run folder before any training: never replace a run silently, fail early if unwritable. Creates
    the folder; deletes nothing (``--overwrite`` replaces the old run only when the new one starts).

    ``identity`` (``runfolder.identity_of`` of the new run's options): with ``resume`` the unfinished run must
    have been started with the same identity.

    Raises:
        FileExistsError: ``path`` holds a run (``metrics.json`` or checkpoints) and neither ``overwrite`` nor
            (for an unfinished run) ``resume`` is given.
        FileNotFoundError: ``resume`` with no checkpoint to resume from.
        ValueError: ``resume`` of a run started with other options or data (names them).
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
    if resume and identity is not None:
        recorded = read_identity(out)
        changed = differences(recorded, identity) if recorded is not None else []
        if changed:
            raise ValueError(f"--resume: the run in {str(out)!r} was started with other options or data "
                             f"({'; '.join(changed)}); resume with the same options, or start over with --overwrite")
    if (finished or started) and not (overwrite or resume):
        what = "a finished run (metrics.json)" if finished else "an unfinished run (checkpoints/adapter)"
        raise FileExistsError(
            f"output_dir {str(out)!r} holds {what}{_compared(out, identity)}; pass --overwrite to replace it, "
            f"{'--resume to continue it, ' if not finished else ''}or choose another --output-dir"
        )
    problem = write_problem(out, create=True)
    if problem:
        raise PermissionError(f"output_dir {str(out)!r} is not writable ({problem}); choose another --output-dir")
    return out


def _compared(out: Path, identity: dict | None) -> str:
    """`` with the same options`` / `` with other options (seed: 0 -> 1)`` for a refusal's message."""
    try:
        recorded = read_identity(out) if identity is not None else None
    except ValueError:  # a malformed record: the refusal stands, without the comparison
        return ""
    if recorded is None:
        return ""
    changed = differences(recorded, identity)
    return f" with other options ({'; '.join(changed)})" if changed else " with the same options"


@contextlib.contextmanager
def run_folder(cfg: TrainConfig, identity: dict) -> Iterator[Path]:
    """The checked and locked run folder of ``cfg`` for the ``with`` block (see ``prepare_output_dir``).

    Under torchrun only the main process locks; the others only check. A folder this call created is removed again
    when the block fails before the run wrote anything into it.

    Raises:
        runfolder.FolderLocked: another process is running in the folder (names its pid); and what
            ``prepare_output_dir`` raises.
    """
    out = Path(cfg.output_dir).expanduser()
    existed = out.exists()
    main = is_main_process()
    if not main:
        yield prepare_output_dir(out, overwrite=cfg.overwrite, resume=cfg.resume, identity=identity)
        return
    if write_problem(out, create=True) is not None:  # the refusal's message comes from prepare_output_dir
        prepare_output_dir(out, overwrite=cfg.overwrite, resume=cfg.resume, identity=identity)
    with folder_lock(out, "output_dir"):
        try:
            yield prepare_output_dir(out, overwrite=cfg.overwrite, resume=cfg.resume, identity=identity)
        except BaseException:
            if not existed and holds_nothing(out):
                shutil.rmtree(out, ignore_errors=True)
            raise


def start_run(out: Path, cfg: TrainConfig, identity: dict) -> None:
    """Every check has passed and training begins: with ``overwrite`` the old run is moved into ``.previous``
    (deleted when this run finishes); ``identity.json`` is written (main process only)."""
    if not is_main_process():
        return
    if cfg.overwrite:
        replace_previous(out)
    write_identity(out, identity)


def training_arguments(cfg: TrainConfig, out: Path, loraplus: LoraPlusConfig, args_class: type | None = None,
                       extra: dict | None = None, hardware: RunHardware | None = None):  # fmt: skip
    """The run's training arguments (checkpoints in ``out/checkpoints``): ``LoraPlusTrainingArguments`` carrying
    ``loraplus``, or ``args_class`` (a task's, e.g. TRL's ``SFTConfig``) with the same options plus ``extra``;
    device and precision from ``hardware`` (default: ``resolve_hardware(cfg)``)."""
    hardware = resolve_hardware(cfg) if hardware is None else hardware
    common = dict(
        output_dir=str(out / "checkpoints"),
        learning_rate=cfg.learning_rate,
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
        use_cpu=hardware.device == "cpu",  # CPU DDP over gloo needs it; GPUs get NCCL/FSDP/DeepSpeed
        bf16=hardware.precision == "bf16",
        fp16=hardware.precision == "fp16",
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5's name of gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        max_grad_norm=cfg.max_grad_norm,
        use_liger_kernel=cfg.use_liger_kernel,
        dataloader_num_workers=0,
        disable_tqdm=False,
        logging_nan_inf_filter=False,  # a NaN loss must show (and stop the run: safety.NonFiniteLossCallback)
        weight_decay=loraplus.weight_decay,
    )
    if args_class is None:
        return LoraPlusTrainingArguments.from_loraplus_config(loraplus, **{**common, **(extra or {})})
    return args_class(**common, **(extra or {}))


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


class FileModeCallback(TrainerCallback):
    """Each checkpoint's ``*.safetensors`` get the umask's mode, like every other file of the run (safetensors
    writes 0600)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            umask_modes(Path(args.output_dir) / f"checkpoint-{state.global_step}")


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


def build_trainer(cfg: TrainConfig, path: str, out: Path, data, callbacks=(), adapter: str | None = None,
                  loraplus: LoraPlusConfig | None = None, hardware: RunHardware | None = None):  # fmt: skip
    """Load the model at ``path`` for ``cfg.task``, inject LoRA, tokenize, and return ``(trainer, tokenizer,
    tokenized splits)``: the one Trainer of every task.

    With ``adapter`` (a saved PEFT adapter folder) that adapter is loaded frozen instead of fresh LoRA: a trainer
    for ``evaluate()`` only (``loraplus evaluate``). ``loraplus``: the LoRA+ options with ``auto`` resolved
    (default ``cfg.loraplus()``).

    Raises:
        ValueError: ``max_length`` above the model's limit or below its special tokens plus one text token, or
            what the task's ``encode`` raises.
    """
    import transformers

    task = get_task(cfg.task)
    loraplus = cfg.loraplus() if loraplus is None else loraplus
    hardware = resolve_hardware(cfg) if hardware is None else hardware
    transformers.set_seed(cfg.seed)
    labels = getattr(data, "label_names", None)
    tokenizer, model = task.load_model(path, labels, trust_remote_code=cfg.trust_remote_code, hardware=hardware)
    prepare_base_(model, hardware, cfg.gradient_checkpointing)
    limit = model_max_length(tokenizer, model)
    if cfg.max_length > limit:
        raise ValueError(f"max_length={cfg.max_length} exceeds the model's limit of {limit} tokens")
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    if cfg.max_length < specials + 1:  # the tokenizer would then not truncate at all
        raise ValueError(f"max_length={cfg.max_length} leaves no room for text: the tokenizer adds {specials} special "
                         f"token(s) to every input; give --max-length {specials + 1} or more")  # fmt: skip
    model = attach_lora(model, cfg.lora(), task.peft_task_type, adapter)
    tokenized, parts = task.encode(data, tokenizer, cfg)
    trainer = (parts.trainer_class or LoraPlusTrainer)(
        model=model,
        optimizers=(peft_optimizer(cfg, model) if adapter is None else None, None),  # None: the LoRA+ groups
        args=training_arguments(cfg, out, loraplus, parts.args_class, parts.args_extra, hardware),
        train_dataset=tokenized["train"],
        eval_dataset=in_training_validation(cfg, tokenized["validation"]),
        data_collator=parts.data_collator,
        compute_metrics=parts.compute_metrics,
        preprocess_logits_for_metrics=parts.preprocess_logits_for_metrics,
        callbacks=list(callbacks),
        loraplus_config=loraplus,
        **parts.trainer_kwargs,
    )
    if parts.model_accepts_loss_kwargs is not None:
        trainer.model_accepts_loss_kwargs = parts.model_accepts_loss_kwargs
    if uses_subset(cfg, tokenized["validation"]):
        trainer.add_callback(NoSubsetEvaluationAtTheEnd())
    trainer.loraplus_task_summary = parts.summary
    return trainer, tokenizer, tokenized


def uses_subset(cfg: TrainConfig, validation) -> bool:
    """Whether evaluations during training use a subset: ``cfg.eval_subset`` is set and smaller than the split."""
    return 0 < cfg.eval_subset < len(validation)


def in_training_validation(cfg: TrainConfig, validation):
    """The validation examples evaluated during training: the first ``cfg.eval_subset`` (the split is already
    shuffled by the run's seed, so they are a fixed random subset), or the whole split when ``eval_subset`` is 0 or
    not smaller. The whole split is always evaluated at the end of the run."""
    return validation.select(range(cfg.eval_subset)) if uses_subset(cfg, validation) else validation


class NoSubsetEvaluationAtTheEnd(TrainerCallback):
    """With a validation subset during training, skip the subset's evaluation at the last step: the run evaluates
    the whole split there, so the validation curve holds one point per step and ends on the whole split."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = False


def prepare_base_(model, hardware: RunHardware, gradient_checkpointing: bool) -> None:
    """Before LoRA: PEFT's ``prepare_model_for_kbit_training`` for a quantised base; with gradient checkpointing
    and frozen input embeddings, ``enable_input_require_grads`` so gradients reach the adapters (without it,
    reentrant checkpointing leaves ``lora_B`` at zero)."""
    if hardware.quantization is not None:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})  # fmt: skip
    if gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def peft_optimizer(cfg: TrainConfig, model):
    """PEFT's LoRA-FA or Riemannian-preconditioned AdamW for ``cfg.optimizer``; ``None`` for LoRA+ (the Trainer's).

    Both give every trainable tensor ``learning_rate`` and ignore the LoRA+ options.
    """
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
    last = last_good_checkpoint(out / "checkpoints")
    if last is None:
        folder = str(out / "checkpoints")
        raise FileNotFoundError(f"--resume: no complete checkpoint in {folder!r}; start over with --overwrite")
    return str(last)


def metrics_text(metrics: dict[str, float]) -> str:
    """``accuracy 0.9811  macro-F1 0.9824  loss 0.2989`` for the metrics present (one split's)."""
    names = {"accuracy": "accuracy", "macro_f1": "macro-F1", "exact_match": "exact-match", "perplexity": "perplexity",
             "loss": "loss"}  # fmt: skip
    return "  ".join(f"{name} {metrics[key]:.4f}" for key, name in names.items() if key in metrics)


def split_metrics(metrics: dict, prefix: str) -> dict[str, float]:
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


def resolve_ratio(cfg: TrainConfig) -> float:
    """``cfg.loraplus_lr_ratio`` as a number: ``auto`` becomes ``width_rule.AUTO_RATIO`` (λ = 4, the rule
    nearest the ratios measured here; see ``width_rule``)."""
    return AUTO_RATIO if cfg.loraplus_lr_ratio == AUTO else float(cfg.loraplus_lr_ratio)


def _hardware_summary(cfg: TrainConfig, hardware: RunHardware, processes: int, train_size: int) -> dict:
    """What ``config.json`` records under ``hardware`` (also printed): device, precision, attention, quantisation,
    processes and the effective batch.

    Raises:
        ValueError: the effective batch (batch x accumulation x processes) exceeds the training split.
    """
    effective = cfg.effective_batch_size(processes)
    if effective > train_size:
        raise ValueError(f"the effective batch ({cfg.batch_size} x {cfg.gradient_accumulation_steps} accumulation x "
                         f"{processes} processes = {effective}) is larger than the {train_size} training examples")
    logger.info("device %s, %s, attention %s%s, effective batch %d (%d x %d accumulation x %d processes)",
                hardware.device, hardware.precision, hardware.attn_implementation,
                f", base in {hardware.quantization}" if hardware.quantization else "", effective, cfg.batch_size,
                cfg.gradient_accumulation_steps, processes)  # fmt: skip
    return {**dataclasses.asdict(hardware), "processes": processes, "effective_batch_size": effective}


def run_train(cfg: TrainConfig, callbacks=()) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.dataset`` with LoRA+ for ``cfg.task`` and write the run folder.

    Returns the metrics dict also written to ``metrics.json``:
    ``{"test": {"accuracy", "macro_f1", "loss"}, "validation": {...}, "train": {...}, "wall_time_s": float}``;
    with ``task="causal-lm"`` the splits also carry ``perplexity`` and ``exact_match``; with ``task="sft"`` the
    splits carry ``loss`` and ``perplexity``, a ``heldout`` split may be added, and ``generation`` holds the
    end-of-run generation scores.

    Raises:
        FileExistsError, PermissionError: see ``prepare_output_dir``; ``runfolder.FolderLocked`` (a
            ``FileExistsError``) when another process runs in ``cfg.output_dir``.
        ValueError: bad options, data or model (from the loaders), or a split smaller than one batch.
    """
    start, meter = time.perf_counter(), IdleMeter()  # --threads auto: idle CPUs while the run loads
    hardware = resolve_hardware(cfg)  # no GPU for --fp16 / --load-in-4bit: refused before anything is written
    loraplus = cfg.loraplus(resolve_ratio(cfg))
    identity = identity_of(cfg.to_dict())
    with run_folder(cfg, identity) as out:
        metrics = _train_in(out, cfg, identity, hardware, loraplus, callbacks, start, meter)
    return metrics


def _train_in(out: Path, cfg: TrainConfig, identity: dict, hardware: RunHardware, loraplus: LoraPlusConfig,
              callbacks, start: float, meter: IdleMeter | None = None) -> dict:  # fmt: skip
    path = resolve_model(cfg.model)  # a bad model name fails before the data is read
    data = get_task(cfg.task).load_data(cfg)
    callbacks = [NonFiniteLossCallback(), FileModeCallback(), *reporting_callbacks(cfg, out), *callbacks]
    trainer, tokenizer, tokenized = build_trainer(cfg, path, out, data, callbacks, loraplus=loraplus, hardware=hardware)
    sizes = {name: len(split) for name, split in tokenized.items()}
    used = getattr(getattr(trainer.model, "config", None), "_attn_implementation", None)  # eager where sdpa is missing
    if isinstance(used, str) and used != hardware.attn_implementation:
        hardware = dataclasses.replace(hardware, attn_implementation=used)
    threads = apply_threads(cfg.threads, meter, hardware.device)
    trainer.loraplus_hardware = {**_hardware_summary(cfg, hardware, trainer.args.world_size, sizes["train"]), **threads}
    logger.info("torch threads %d (%s)", threads["threads"], threads["threads_from"])
    labels = getattr(data, "label_names", None)
    logger.info("data %s: %s%s", data.source, sizes, f", {len(labels)} classes" if labels else "")
    monitor = None
    if cfg.monitor:
        monitor = add_feature_learning_callback(trainer, every=cfg.monitor_every, save_json=False)
    start_run(out, cfg, identity)  # every check passed: only now is an old run moved aside
    train_result = trainer.train(resume_from_checkpoint=_resume_point(out) if cfg.resume else None)
    reuse = not uses_subset(cfg, tokenized["validation"])  # the last evaluation in training was of the whole split
    validation = (_last_evaluation(trainer) if reuse else None) or trainer.evaluate(tokenized["validation"])
    test = trainer.evaluate(tokenized["test"], metric_key_prefix="test")
    task = get_task(cfg.task)
    extra = {name: trainer.evaluate(tokenized[name], metric_key_prefix=name)
             for name in tokenized if name not in ("train", "validation", "test")}  # e.g. held-out tasks
    metrics = {
        "test": task.split_metrics(split_metrics(test, "test")),
        "validation": task.split_metrics(split_metrics(validation, "eval")),
        **{name: task.split_metrics(split_metrics(values, name)) for name, values in extra.items()},
        "train": {
            "loss": float(train_result.training_loss),
            "steps": int(trainer.state.global_step),
            "runtime_s": float(train_result.metrics.get("train_runtime", 0.0)),
            "samples_per_second": float(train_result.metrics.get("train_samples_per_second", 0.0)),
        },
    }
    main = trainer.is_world_process_zero()
    metrics.update(task.final_metrics(trainer, tokenizer, tokenized, cfg, out if main else None))
    metrics["wall_time_s"] = time.perf_counter() - start
    if main:  # under torchrun/accelerate only rank 0 writes
        if monitor is not None:
            _write_monitor(out, monitor.monitor)
        _write_artifacts(out, cfg, trainer, tokenizer, data, sizes, metrics, loraplus)
        finish_replace(out)
    return metrics


def _last_evaluation(trainer) -> dict | None:
    """The validation metrics logged at the last step, when training ended with an evaluation (the final
    ``evaluate()`` would compute them again); ``None`` otherwise."""
    history = trainer.state.log_history
    rows = [r for r in history if "eval_loss" in r]
    if rows and rows[-1].get("step") == trainer.state.global_step:
        return rows[-1]
    return None


def _write_monitor(out: Path, monitor) -> None:
    """``feature_learning.json`` (per layer and aggregate δ_A, δ_B) and its plot ``feature_learning.png``."""
    monitor.save_json(out / "feature_learning.json")
    plot_monitor(monitor.history, out / "feature_learning.png")


def _write_artifacts(out: Path, cfg: TrainConfig, trainer, tokenizer, data, sizes: dict, metrics: dict,
                     loraplus: LoraPlusConfig) -> None:  # fmt: skip
    """Adapter, config.json, log_history.json, then metrics.json last (its presence marks a finished run).

    config.json holds the options as given (``loraplus_lr_ratio`` may be ``"auto"``) and, under ``loraplus``,
    the LoRA+ options used (the number ``auto`` resolved to)."""
    with atomic_dir(out / "adapter") as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    run_config = {
        "config": cfg.to_dict(),
        "loraplus": dataclasses.asdict(loraplus),
        "hardware": getattr(trainer, "loraplus_hardware", None),
        "model_path": str(trainer.model.peft_config["default"].base_model_name_or_path),
        "labels": getattr(data, "label_names", None),
        "data": {"source": data.source, "sizes": sizes, "duplicates_removed": data.num_duplicates_removed,
                 **({"missing_removed": data.num_missing_removed} if hasattr(data, "num_missing_removed") else {}),
                 **trainer.loraplus_task_summary},
        "parameter_groups": describe_groups(trainer.optimizer).splitlines(),
        "versions": _versions(),
    }
    atomic_write_json(out / "config.json", run_config)
    atomic_write_json(out / "log_history.json", trainer.state.log_history)
    atomic_write_json(out / "metrics.json", metrics)
