"""Sequence classification: a new head on an encoder (or any model with a sequence-classification head).

Metrics: ``accuracy`` and ``macro_f1`` (unweighted mean of per-class F1, sklearn), plus the Trainer's ``loss``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import PAIR_COLUMN, load_classification_data, map_cached
from ..models import load_sequence_classifier
from .base import BaseTask, TrainerParts, limit_samples

__all__ = ["ClassificationTask", "compute_metrics"]


def compute_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1 (unweighted mean of per-class F1, sklearn) from ``(logits, labels)``."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    preds = np.asarray(logits).argmax(-1)
    return {"accuracy": float(accuracy_score(labels, preds)), "macro_f1": float(f1_score(labels, preds, average="macro"))}


def load_labelled_data(cfg):
    """The ``ClassificationData`` of ``cfg`` (dataset, columns, fractions, seed): shared by the label tasks."""
    return load_classification_data(
        cfg.dataset, text_column=cfg.text_column, label_column=cfg.label_column, text_pair_column=cfg.text_pair_column,
        val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed,
    )  # fmt: skip


class ClassificationTask(BaseTask):
    """``--task classification``: ``AutoModelForSequenceClassification`` with a new head over ``labels``."""

    name = "classification"
    default_model = "minilm-l6"
    peft_task_type = "SEQ_CLS"
    metrics = ("accuracy", "macro_f1", "loss")

    def load_data(self, cfg):
        return load_labelled_data(cfg)

    def load_model(self, path: str, labels: list[str] | None, *, trust_remote_code: bool = False, hardware=None):
        if not labels:
            raise ValueError("a classification model needs its label names")
        return load_sequence_classifier(path, labels, trust_remote_code=trust_remote_code, hardware=hardware)

    def encode(self, data, tokenizer, cfg):
        """Tokenize the splits (no padding: batches are padded dynamically) after the sample limits; cached."""
        from transformers import DataCollatorWithPadding

        max_length = cfg.max_length

        def encode(batch):  # a pair: the tokenizer's pair encoding, truncated longest first
            return tokenizer(batch["text"], batch.get("text_pair"), truncation=True, max_length=max_length)

        splits = limit_samples(data.splits, cfg)
        text_columns = [c for c in ("text", PAIR_COLUMN) if c in splits["train"].column_names]
        tokenized = map_cached(
            splits, encode, tokenizer=tokenizer, key=f"classification max_length={max_length}",
            desc="tokenizing", remove_columns=text_columns,
        )  # fmt: skip
        parts = TrainerParts(DataCollatorWithPadding(tokenizer), compute_metrics)
        return tokenized, parts

    def auto_model_class(self) -> type:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def adapter_labels(self, adapter, recorded: list[str] | None) -> list[str]:
        """The run's labels, else ``LABEL_i`` for each row of the adapter's saved head (a plain PEFT adapter)."""
        return recorded or [f"LABEL_{i}" for i in range(_head_outputs(Path(adapter)))]


def _head_outputs(adapter: Path) -> int:
    """Number of classes of a plain PEFT SEQ_CLS adapter: rows of its saved head (``classifier``/``score``)."""
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if key.endswith(("classifier.weight", "score.weight", "out_proj.weight")):
                return int(f.get_slice(key).get_shape()[0])
    raise ValueError(f"{str(adapter)!r}: a SEQ_CLS adapter without a saved head; give a run folder of loraplus train")
