"""``TrainConfig``: every option of one ``loraplus train`` run, validated on construction."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from .data import check_split_options
from .instruct_data import FORMATS
from .precision import ATTENTION, DEVICES
from .groups import DEFAULT_LORAPLUS_LR_RATIO, LoraPlusConfig, as_float
from .models import LoraOptions
from .tasks import TASKS, get_task
from .threads import THREADS_AUTO

__all__ = ["AUTO", "OPTIMIZERS", "TrainConfig", "check_not_set_by_experiment", "check_report_to", "set_by_experiment"]

OPTIMIZERS = ("loraplus", "lorafa", "riemannian")
AUTO = "auto"  # loraplus_lr_ratio=auto: width_rule.AUTO_RATIO, resolved when the run starts (kept as "auto" in config.json)


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run. Field docs double as the ``loraplus train --help`` text.

    Raises:
        ValueError: any option out of range, naming the option and the bad value.
    """

    task: str = _opt("classification", f"one of {', '.join(TASKS)}: classification (a new head on the model), "
                     "causal-lm (the label as the answer to an instruction prompt; loss on the answer only), or sft "
                     "(instruction tuning on instruction/chat data with TRL)")
    model: str | None = _opt(None, "built-in model name, a local model folder, or a hub id "
                             "(default: minilm-l6 for classification, smollm2-135m for causal-lm)")
    dataset: str | None = _opt(None, "built-in dataset (bbc-news, sms-spam, rotten-tomatoes, multiemo, vitaminc; natural-instructions for sft), a "
                               "csv/tsv/json/jsonl/parquet file, or a hub id (default: bbc-news; sft: natural-instructions)")
    output_dir: str = _opt("runs/train", "run folder: adapter, metrics.json, config.json, log_history.json, checkpoints")
    overwrite: bool = _opt(False, "replace a finished (or unfinished) run in output_dir")
    resume: bool = _opt(False, "continue an unfinished run from the last checkpoint in output_dir")
    text_column: str | None = _opt(None, "text column of a file/hub dataset (default: 'text')")
    label_column: str | None = _opt(None, "label column of a file/hub dataset (default: 'label')")
    text_pair_column: str | None = _opt(None, "second text column of sentence-pair data, encoded as the tokenizer's "
                                        "pair (default: none; vitaminc: its claim)")
    learning_rate: float | None = _opt(None, "lr_A: lr of the lora_A factors and of the classification head "
                                       "(default: 1e-3; sft: 2e-4)")
    loraplus_lr_ratio: float | str = _opt(DEFAULT_LORAPLUS_LR_RATIO, "lr_B / lr_A (LoRA+ λ); 1 = plain LoRA; auto = 4, "
                                          "the rule nearest the ratios measured on real models (see loraplus ratio)")
    loraplus_lr_embedding: float | None = _opt(None, "absolute lr of embedding-LoRA factors (default: as any pair)")
    loraplus_lr_other: float | None = _opt(None, "absolute lr of the classification head and other non-LoRA tensors (default: learning_rate)")
    optimizer: str = _opt("loraplus", "loraplus, or PEFT's lorafa / riemannian (these ignore the LoRA+ options)")
    weight_decay: float = _opt(0.0, "decoupled weight decay (biases, norms, DoRA magnitudes never decay)")
    r: int = _opt(8, "LoRA rank")
    lora_alpha: float = _opt(16.0, "LoRA scale numerator: update = lora_alpha / r · B A x")
    lora_dropout: float = _opt(0.1, "dropout on the LoRA input, in [0, 1)")
    target_modules: tuple[str, ...] | None = _opt(None, "comma-separated module names, or all-linear (every linear layer but the head; default: PEFT's per architecture)")
    use_rslora: bool = _opt(False, "rank-stabilised LoRA scale lora_alpha / sqrt(r)")
    use_dora: bool = _opt(False, "DoRA (weight-decomposed LoRA)")
    epochs: float = _opt(1.0, "passes over the training split")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps, -1: use epochs (default: -1; sft: 40)")
    batch_size: int | None = _opt(None, "training batch size (default: 16; sft: 4)")
    eval_batch_size: int | None = _opt(None, "evaluation batch size (default: 64; sft: 8, its logits span the vocabulary)")
    max_length: int | None = _opt(None, "tokens per example, longer ones are truncated (default: 128; sft: 384)")
    warmup_ratio: float = _opt(0.1, "fraction of steps with linear warm-up")
    lr_scheduler_type: str = _opt("linear", "transformers scheduler: linear, cosine, cosine_with_restarts, polynomial, "
                                  "constant, constant_with_warmup, inverse_sqrt, reduce_lr_on_plateau, greedy")
    eval_steps: int = _opt(25, "evaluate on the validation split (and checkpoint) every N steps")
    eval_subset: int = _opt(64, "evaluations during training use the first N validation examples (a fixed "
                            "subset); the whole split is evaluated at the end; 0: the whole split every time")
    logging_steps: int = _opt(10, "log the training loss every N steps")
    monitor: bool = _opt(False, "feature-learning monitor: δ_A, δ_B of every LoRA layer; writes feature_learning.json/.png")
    monitor_every: int = _opt(10, "monitor every N optimizer steps (steps 1, 1+N, ...)")
    save_checkpoints: bool = _opt(True, "save a checkpoint every eval_steps (the last two are kept)")
    seed: int = _opt(0, "seed of the data split, the head and LoRA initialisation, and data order")
    val_fraction: float = _opt(0.1, "validation share when the data has no validation split")
    test_fraction: float = _opt(0.1, "test share when the data has no test split")
    max_train_samples: int | None = _opt(None, "use only the first N training examples (after shuffling)")
    max_eval_samples: int | None = _opt(None, "use only the first N validation and test examples")
    trust_remote_code: bool = _opt(False, "allow model code from the hub (off unless you trust the source)")
    device: str = _opt("auto", "auto (CUDA if there is a GPU, else CPU), cpu or cuda")
    threads: int | str = _opt(THREADS_AUTO, "CPU threads of torch: a number, or auto (the cores other processes "
                              "leave idle, measured as the run loads; OMP_NUM_THREADS, if set, wins)")
    bf16: bool | None = _opt(None, "bf16 mixed precision (default: on a CUDA GPU that supports it; on CPU it runs "
                             "under CPU autocast); --no-bf16 for fp32")
    fp16: bool = _opt(False, "fp16 mixed precision with a gradient scaler (CUDA only; LoRA parameters stay float32)")
    gradient_accumulation_steps: int = _opt(1, "micro-batches per optimizer step (effective batch = batch_size x "
                                            "this x processes)")
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass (non-reentrant)")
    max_grad_norm: float = _opt(1.0, "clip the gradient norm of each step to this (> 0)")
    load_in_4bit: bool = _opt(False, "QLoRA: load the base in 4 bits (bitsandbytes nf4, double quantisation; CUDA)")
    load_in_8bit: bool = _opt(False, "load the base in 8 bits (bitsandbytes LLM.int8; CUDA)")
    attn_implementation: str = _opt("sdpa", "attention: sdpa, eager, flash_attention_2, flash_attention_3, "
                                    "flex_attention")
    use_liger_kernel: bool = _opt(False, "transformers' Liger kernels (pip install liger-kernel)")
    format: str = _opt("auto", "sft data format: auto (from the columns), prompt-completion, alpaca, messages, sharegpt")
    chat_template: str | None = _opt(None, "sft: a .jinja chat template file (default: the model's own; see README)")
    train_on_prompt: bool = _opt(False, "sft: loss on every token, not only the completion / assistant turns")
    packing: bool = _opt(False, "sft: pack examples into max_length rows (TRL's, padding-free; no cross-attention)")
    eval_generate: int = _opt(16, "sft: greedy generations on this many test examples at the end (0: none)")
    max_new_tokens: int = _opt(64, "sft: tokens generated at most per example (eval_generate, generate)")
    report_to: tuple[str, ...] = _opt(("none",), "where the training logs also go, comma-separated: none, csv "
                                      "(output_dir/log.csv as it trains), tensorboard (output_dir/tensorboard), or "
                                      "another transformers integration (wandb, mlflow, ...)")

    def __post_init__(self) -> None:
        task = get_task(self.task)  # first: the defaults of model, dataset, lr, ... depend on it
        if self.model is None:
            object.__setattr__(self, "model", task.default_model)
        for name, value in task.defaults.items():  # None = "the task's default"
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        coerce_fields(self)  # also " Auto " -> "auto"
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("model", "dataset", "output_dir"):  # "" would mean the current folder
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must not be empty, got {getattr(self, name)!r}")
        if self.overwrite and self.resume:
            raise ValueError("give --overwrite (start over) or --resume (continue), not both")
        as_float("learning_rate", self.learning_rate)
        self.loraplus(1.0 if self.loraplus_lr_ratio == AUTO else None)  # validates ratio, embedding/other lr, decay
        self.lora()  # validates r, alpha, dropout, targets
        for name in ("batch_size", "eval_batch_size", "max_length", "eval_steps", "logging_steps", "monitor_every"):
            _positive_int(name, getattr(self, name))
        if self.max_steps != -1:
            _positive_int("max_steps", self.max_steps)
        if isinstance(self.eval_subset, bool) or not isinstance(self.eval_subset, int) or self.eval_subset < 0:
            raise ValueError(f"eval_subset must be an integer >= 0 (0: the whole validation split), got {self.eval_subset!r}")
        as_float("epochs", self.epochs)
        warmup = as_float("warmup_ratio", self.warmup_ratio, allow_zero=True)
        if warmup >= 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        check_split_options(self.val_fraction, self.test_fraction, self.seed)
        self._check_task_options()
        self._check_hardware_options()
        _check_scheduler(self.lr_scheduler_type)
        object.__setattr__(self, "report_to", tuple(dict.fromkeys(self.report_to)))  # "csv,csv" -> ("csv",)
        check_report_to(self.report_to)

    _SFT_OPTIONS = ("format", "chat_template", "train_on_prompt", "packing")

    def _check_task_options(self) -> None:
        """The sft-only options at their defaults for other tasks; their ranges for sft."""
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        if self.task != "sft":
            given = [name for name in self._SFT_OPTIONS if getattr(self, name) != defaults[name]]
            if given:
                raise ValueError(f"{', '.join('--' + g.replace('_', '-') for g in given)} applies to --task sft only, "
                                 f"got --task {self.task}")  # fmt: skip
        if isinstance(self.eval_generate, bool) or not isinstance(self.eval_generate, int) or self.eval_generate < 0:
            raise ValueError(f"eval_generate must be an integer >= 0, got {self.eval_generate!r}")
        _positive_int("max_new_tokens", self.max_new_tokens)
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(f"format must be auto or one of {', '.join(FORMATS)}, got {self.format!r}")

    def _check_hardware_options(self) -> None:
        """The ranges of the device/precision options (what the machine has is checked when the run starts)."""
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads != THREADS_AUTO and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                             or self.threads < 1):
            raise ValueError(f"threads must be auto or an integer >= 1, got {self.threads!r}")
        if self.attn_implementation not in ATTENTION:
            raise ValueError(f"attn_implementation must be one of {', '.join(ATTENTION)}, got {self.attn_implementation!r}")
        _positive_int("gradient_accumulation_steps", self.gradient_accumulation_steps)
        as_float("max_grad_norm", self.max_grad_norm)
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("give --load-in-4bit or --load-in-8bit, not both")
        if self.bf16 and self.fp16:
            raise ValueError("give --bf16 or --fp16, not both")

    def effective_batch_size(self, processes: int = 1) -> int:
        """Examples per optimizer step: ``batch_size`` x ``gradient_accumulation_steps`` x ``processes``."""
        return self.batch_size * self.gradient_accumulation_steps * processes

    def loraplus(self, ratio: float | None = None) -> LoraPlusConfig:
        """The LoRA+ options as one ``LoraPlusConfig``; ``ratio`` replaces ``loraplus_lr_ratio`` (the number
        ``auto`` resolved to).

        Raises:
            ValueError: ``loraplus_lr_ratio`` is ``auto`` and no ``ratio`` is given.
        """
        if ratio is None and self.loraplus_lr_ratio == AUTO:
            raise ValueError("loraplus_lr_ratio=auto is resolved when the run starts (loraplus.train.resolve_ratio)")
        return LoraPlusConfig(
            self.loraplus_lr_ratio if ratio is None else ratio, self.loraplus_lr_embedding, self.loraplus_lr_other,
            self.weight_decay,
        )  # fmt: skip

    def lora(self) -> LoraOptions:
        return LoraOptions(
            self.r, self.lora_alpha, self.lora_dropout, self.target_modules, self.use_rslora, self.use_dora
        )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def set_by_experiment(cls, name: str) -> str | None:
    """The refusal for option ``name`` of an experiment config ``cls`` that sets that option itself (a sweep sets
    each cell's ``learning_rate``), naming the experiment's own option; ``None`` for an option the user may set.

    Experiment configs list such options in ``SET_BY_EXPERIMENT = {field: "what to use instead"}``."""
    instead = getattr(cls, "SET_BY_EXPERIMENT", {}).get(name)
    if instead is None:
        return None
    flag = "--" + name.replace("_", "-")
    return f"{flag} ({name}) is set by the experiment itself for every run; use {instead}"


def check_not_set_by_experiment(options) -> None:
    """Raise ``ValueError`` (see ``set_by_experiment``) when an experiment config ``options`` has a field of its
    ``SET_BY_EXPERIMENT`` at anything but ``TrainConfig``'s default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in getattr(type(options), "SET_BY_EXPERIMENT", {}):
        if getattr(options, name) != defaults[name]:
            raise ValueError(set_by_experiment(type(options), name))


def coerce_fields(options) -> None:
    """Convert every field of the frozen dataclass instance ``options`` to its annotated type (see ``coerce``)."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        object.__setattr__(options, f.name, coerce(f.name, getattr(options, f.name), hints[f.name]))


def coerce(name: str, value, hint):
    """Convert a value read from YAML or the command line to the field's type, or raise ``ValueError``.

    ``"1e-6"`` -> 1e-06 for float fields, ``"8"`` -> 8 for int fields, ``"q,v"`` or ``["q", "v"]`` -> ("q", "v")
    for tuple fields. Ranges are checked afterwards by the config itself.
    """
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO and str in args:  # a number or "auto"
        return AUTO
    kind = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not tuple else hint
    auto = f"{AUTO} or " if str in args else ""
    if typing.get_origin(kind) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(
            isinstance(t, (str, int, float)) and not isinstance(t, bool) for t in items
        ):  # YAML reads 3e-4 as a string but 2.7e-3 as a float: both are fine in a list of lrs
            raise ValueError(f"{name} must be a list or a comma-separated string, got {value!r}")
        return tuple(str(t).strip() for t in items if str(t).strip())
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float (10**400)
            raise ValueError(f"{name} must be {auto}a number, got {value!r}") from None
    if kind is int and not isinstance(value, bool):
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and number.is_integer():
                number = int(number)
        except ValueError:
            number = value
        if isinstance(number, int):
            return number
        raise ValueError(f"{name} must be {auto}an integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


# transformers' schedulers that run with no ``lr_scheduler_kwargs`` (every one scales all groups by one factor, so
# lr_B / lr_A stays λ); the others need options this command does not take
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "greedy")  # fmt: skip
_SCHEDULERS_NEEDING_KWARGS = {"cosine_with_min_lr": "min_lr or min_lr_rate", "cosine_warmup_with_min_lr":
                              "min_lr or min_lr_rate", "warmup_stable_decay": "num_decay_steps"}  # fmt: skip


def _check_scheduler(name: str) -> None:
    """Refuse an ``lr_scheduler_type`` that cannot run, now, not after the model and data are loaded."""
    if name in _SCHEDULERS_NEEDING_KWARGS:
        raise ValueError(f"lr_scheduler_type {name!r} needs lr_scheduler_kwargs ({_SCHEDULERS_NEEDING_KWARGS[name]}), "
                         f"which loraplus does not take; choose one of {', '.join(SCHEDULERS)}")  # fmt: skip
    if name not in SCHEDULERS:
        raise ValueError(f"lr_scheduler_type must be one of {', '.join(SCHEDULERS)}, got {name!r}")


REPORTERS_OF_OURS = ("none", "csv")  # the rest are transformers integrations


def check_report_to(names: tuple[str, ...]) -> None:
    """Refuse an unknown or uninstalled ``report_to`` now, not after the model and data are loaded.

    Raises:
        ValueError: an empty list, an unknown name, ``none`` with others, or an integration whose package is
            missing (the message names the pip package).
    """
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    known = [*REPORTERS_OF_OURS, *INTEGRATION_TO_CALLBACK]
    if not names:
        raise ValueError("report_to is empty; give none, csv, tensorboard, ...")
    for name in names:
        if name not in known:
            raise ValueError(f"report_to must be among {', '.join(known)}, got {name!r}")
    if "none" in names and len(names) > 1:
        raise ValueError(f"report_to 'none' cannot be combined with others, got {','.join(names)!r}")
    available = set(get_available_reporting_integrations())
    for name in names:
        if name not in REPORTERS_OF_OURS and name not in available:
            package = {"tensorboard": "tensorboard (or loraplus[tensorboard])", "comet_ml": "comet-ml"}.get(name, name)
            raise ValueError(f"report_to {name!r} needs its package, which is not installed: pip install {package}")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
