"""Hugging Face Trainer integration: ``LoraPlusTrainingArguments`` and ``LoraPlusTrainer``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import Trainer, TrainingArguments

from .distributed import check_deepspeed_config, deepspeed_configs
from .groups import LoraPlusConfig, build_groups
from .optim import _keep_embeddings_32bit, describe_groups, warn_if_adaptive

try:
    from transformers.trainer_optimizer import is_optimizer_factory
except ImportError:  # transformers without optimizer factories (Muon, Dion) calls every optimizer_cls with groups

    def is_optimizer_factory(optimizer_cls) -> bool:
        return False


__all__ = ["LoraPlusMixin", "LoraPlusTrainer", "LoraPlusTrainingArguments"]

logger = logging.getLogger("loraplus")


@dataclass
class LoraPlusTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the LoRA+ options.

    ``learning_rate`` is lr_A (and the lr of non-LoRA parameters); ``weight_decay`` applies to every decaying
    group (biases, norms and DoRA magnitudes never decay).
    """

    loraplus_lr_ratio: float = field(default=16.0, metadata={"help": "lr_B / lr_A (LoRA+ λ, > 0; 1 = plain LoRA)."})
    loraplus_lr_embedding: float | None = field(
        default=None,
        metadata={"help": "Absolute lr of embedding-LoRA factors; None treats them like any LoRA pair."},
    )
    loraplus_lr_other: float | None = field(
        default=None,
        metadata={"help": "Absolute lr of trainable non-LoRA tensors (heads, biases, norms); None gives them lr."},
    )

    def __post_init__(self):
        super().__post_init__()
        cfg = LoraPlusConfig(
            self.learning_rate, self.loraplus_lr_ratio, self.loraplus_lr_embedding, self.weight_decay,
            self.loraplus_lr_other,
        )  # fmt: skip
        self.loraplus_lr_ratio = cfg.loraplus_lr_ratio
        self.loraplus_lr_embedding = cfg.loraplus_lr_embedding
        self.loraplus_lr_other = cfg.loraplus_lr_other


class LoraPlusMixin:
    """LoRA+ parameter groups for any ``transformers.Trainer`` subclass: put it first in the bases.

    ::

        from trl import SFTTrainer
        class LoraPlusSFTTrainer(LoraPlusMixin, SFTTrainer):
            pass
        trainer = LoraPlusSFTTrainer(model=..., args=SFTConfig(learning_rate=2e-4), peft_config=LoraConfig(...),
                                     train_dataset=..., loraplus_lr_ratio=16)

    Only ``create_optimizer`` is overridden, so Accelerate, DeepSpeed and FSDP prepare the LoRA+ optimizer like
    any other, and every scheduler the Trainer builds scales all groups by the same factor (lr_B / lr_A stays λ).
    The LoRA+ options come from the keyword arguments ``loraplus_lr_ratio``, ``loraplus_lr_embedding`` and
    ``loraplus_lr_other`` if given, else from the same-named fields of ``args`` (``LoraPlusTrainingArguments``),
    else the defaults (ratio 16; embedding pairs and other tensors at lr_A). The keyword arguments are the way for
    trainers whose own config class cannot carry extra fields (TRL turns any ``TrainingArguments`` into its
    ``SFTConfig`` and would drop them). The optimizer class and its options come from ``args.optim``/
    ``args.optim_args`` or from ``optimizer_cls_and_kwargs=...``; as in ``Trainer``, an ``"lr"`` in those kwargs
    overrides ``learning_rate`` (it becomes lr_A). A ready optimizer passed as ``optimizers=(opt, sched)`` is used
    as given (build it with ``loraplus.create_loraplus_optimizer``).

    Raises:
        ValueError: a bad LoRA+ option (on construction); a DeepSpeed config with an ``"optimizer"`` block
            (DeepSpeed would build its own optimizer and ``create_optimizer`` would never run) or a scheduler that
            gives every group one lr; checked in ``__init__``, because ``train()`` hands DeepSpeed its config
            before any optimizer hook is reached.
    """

    def __init__(self, *args, loraplus_lr_ratio=None, loraplus_lr_embedding=None, loraplus_lr_other=None, **kwargs):
        super().__init__(*args, **kwargs)
        for config in deepspeed_configs(self):
            check_deepspeed_config(config)
        given = {"loraplus_lr_ratio": loraplus_lr_ratio, "loraplus_lr_embedding": loraplus_lr_embedding,
                 "loraplus_lr_other": loraplus_lr_other}  # fmt: skip
        defaults = {"loraplus_lr_ratio": 16.0, "loraplus_lr_embedding": None, "loraplus_lr_other": None}
        self.loraplus_options = {
            name: value if value is not None else getattr(self.args, name, defaults[name])
            for name, value in given.items()
        }
        self._loraplus_config(self.args.learning_rate)  # a bad option fails now, not at train()

    def _loraplus_config(self, lr) -> LoraPlusConfig:
        options = self.loraplus_options
        return LoraPlusConfig(
            lr, options["loraplus_lr_ratio"], options["loraplus_lr_embedding"], self.args.weight_decay,
            options["loraplus_lr_other"],
        )  # fmt: skip

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        args = self.args
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            source = f"optimizer_cls_and_kwargs=({getattr(optimizer_cls, '__name__', optimizer_cls)}, ...)"
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, opt_model)
            source = f"optim={args.optim!r}"
        optimizer_kwargs = dict(optimizer_kwargs)
        clash = sorted({"params", "model", "optimizer_dict"} & set(optimizer_kwargs))
        if clash or is_optimizer_factory(optimizer_cls):  # transformers calls a factory as cls()(model, **kwargs)
            raise ValueError(
                f"{source} builds its own parameter groups ({clash or 'an optimizer factory'}), which would drop "
                "the LoRA+ groups; use an optimizer that takes param groups (adamw_torch, adamw_torch_fused, sgd, ...)"
            )
        # As in Trainer: an "lr" in the optimizer kwargs (optimizer_cls_and_kwargs) is the base lr; else learning_rate.
        cfg = self._loraplus_config(optimizer_kwargs.get("lr", args.learning_rate))
        optimizer_kwargs["lr"] = cfg.lr
        warn_if_adaptive(optimizer_cls, cfg.loraplus_lr_ratio)
        groups = build_groups(opt_model, cfg)
        _keep_embeddings_32bit(opt_model, optimizer_cls, optimizer_kwargs)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        logger.info(
            "LoRA+ parameter groups (loraplus_lr_ratio=%g):\n%s", cfg.loraplus_lr_ratio, describe_groups(self.optimizer)
        )
        return self.optimizer


class LoraPlusTrainer(LoraPlusMixin, Trainer):
    """A ``transformers.Trainer`` whose optimizer uses LoRA+ groups (see ``LoraPlusMixin``); pair it with
    ``LoraPlusTrainingArguments`` or pass ``loraplus_lr_ratio=...``. With plain ``TrainingArguments`` and no
    keyword the ratio is 16."""
