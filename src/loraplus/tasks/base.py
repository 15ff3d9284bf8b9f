"""The task interface: what ``loraplus train``, ``evaluate`` and ``merge`` ask of a task, and nothing else.

A task turns a dataset into model inputs and metrics. The run layer (``loraplus.train``) owns the run folder,
the ``TrainingArguments``, the optimizer and the Trainer; a task never imports it. Adding a task is one module
implementing ``Task`` plus one line in ``loraplus.tasks.TASKS``.

``cfg`` below is the run's ``TrainConfig`` (read only: ``dataset``, ``text_column``, ``label_column``,
``val_fraction``, ``test_fraction``, ``seed``, ``max_length``, ``max_train_samples``, ``max_eval_samples``,
``batch_size``, ``trust_remote_code``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["BaseTask", "Task", "TrainerParts", "limit_samples"]


@dataclass(frozen=True)
class TrainerParts:
    """What the Trainer needs from a task besides the model and the tokenized splits.

    Attributes:
        data_collator: pads a list of encoded examples into a batch.
        compute_metrics: ``EvalPrediction -> {metric: float}`` (the Trainer adds ``loss``).
        preprocess_logits_for_metrics: reduces ``(logits, labels)`` per batch before they are gathered, or None.
        model_accepts_loss_kwargs: False for a loss that is a per-batch mean ignoring ``num_items_in_batch``
            (``LoraPlusMixin`` already sets it for classification heads); None keeps the Trainer's detection.
        trainer_class: a ``LoraPlusMixin`` Trainer class; None = ``loraplus.hf.LoraPlusTrainer``.
        args_class: its arguments class (e.g. TRL's ``SFTConfig``); None = ``LoraPlusTrainingArguments``.
        args_extra: options of ``args_class`` beyond the run's common ones (``max_length``, ``packing``, ...).
        trainer_kwargs: extra keyword arguments of ``trainer_class`` (e.g. ``processing_class``).
        summary: what the task did to the data (JSON-serialisable), recorded in the run's ``config.json``.
    """

    data_collator: Callable | None
    compute_metrics: Callable[[Any], dict[str, float]] | None
    preprocess_logits_for_metrics: Callable | None = None
    model_accepts_loss_kwargs: bool | None = None
    trainer_class: type | None = None
    args_class: type | None = None
    args_extra: dict = field(default_factory=dict)
    trainer_kwargs: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


class Task(Protocol):
    """One kind of fine-tuning. Attributes: ``name`` (the ``--task`` value), ``default_model`` (a built-in
    model name), ``defaults`` (``TrainConfig`` options left unset by the user: ``dataset``, ``learning_rate``,
    ``batch_size``, ``eval_batch_size``, ``max_length``, ``max_steps``), ``peft_task_type`` (PEFT's ``task_type``: ``SEQ_CLS``, ``CAUSAL_LM``), ``metrics`` (names of the
    metrics its splits report, without the split prefix: what an experiment may optimise)."""

    name: str
    default_model: str
    defaults: dict  # TrainConfig options the task sets when the user does not (dataset, learning_rate, ...)
    peft_task_type: str
    metrics: tuple[str, ...]

    def load_data(self, cfg) -> Any:
        """The run's data split in train/validation/test (a ``ClassificationData`` for the label tasks).

        Raises:
            ValueError, FileNotFoundError, ModuleNotFoundError: bad or missing data, naming it.
        """

    def load_model(self, path: str, labels: list[str] | None, *, trust_remote_code: bool = False,
                   hardware=None) -> tuple[Any, Any]:  # fmt: skip
        """``(tokenizer, base model)`` in float32, no LoRA yet; ``labels`` sizes a classification head;
        ``hardware`` (``loraplus.precision.RunHardware``): attention implementation and 4/8-bit loading."""

    def encode(self, data: Any, tokenizer, cfg) -> tuple[Any, TrainerParts]:
        """Tokenize ``data.splits`` after ``limit_samples`` and return ``(DatasetDict, TrainerParts)``.

        Raises:
            ValueError: ``cfg.max_length`` too short for the task's inputs, or fewer examples than one batch.
        """

    def auto_model_class(self) -> type:
        """The ``transformers.AutoModelFor...`` class that reloads a merged model of this task."""

    def adapter_labels(self, adapter, recorded: list[str] | None) -> list[str] | None:
        """Label names for loading a saved adapter: the run's recorded ones, else what the adapter implies."""

    def split_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """One split's metrics (prefix removed) with what the task derives from them (e.g. perplexity)."""

    def final_metrics(self, trainer, tokenizer, tokenized, cfg, out: Path | None) -> dict:
        """Metrics computed once after training (e.g. generations), merged into ``metrics.json``; may write
        files into the run folder ``out`` (None: write nothing)."""

    def check_metric(self, cfg, metric: str) -> None:
        """Raise ValueError when the runs of ``cfg`` cannot report ``metric`` (an experiment checks first)."""


LABEL_TASK_DEFAULTS = {"dataset": "bbc-news", "learning_rate": 1e-3, "batch_size": 16, "eval_batch_size": 64,
                       "max_length": 128, "max_steps": -1}


class BaseTask:
    """Defaults of the optional ``Task`` methods: metrics as the Trainer gives them, nothing after training."""

    defaults = LABEL_TASK_DEFAULTS

    def split_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return metrics

    def final_metrics(self, trainer, tokenizer, tokenized, cfg, out: Path | None) -> dict:
        return {}

    def check_metric(self, cfg, metric: str) -> None:
        """Refuse an experiment ``metric`` this task's runs cannot report, before any run starts.

        Raises:
            ValueError: ``metric`` is not in ``self.metrics`` (or, for a task that says so, not for this data).
        """
        if metric not in self.metrics:
            raise ValueError(f"metric {metric!r} is not reported by --task {self.name} (its runs report "
                             f"{', '.join(self.metrics)}); choose one of those")  # fmt: skip


def limit_samples(splits, cfg):
    """A new DatasetDict with ``cfg.max_train_samples``/``cfg.max_eval_samples`` applied (first N rows).

    Raises:
        ValueError: the training split is smaller than one batch (``cfg.batch_size``).
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
