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


__all__ = ["LoraPlusTrainer", "LoraPlusTrainingArguments"]

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


class LoraPlusTrainer(Trainer):
    """A ``transformers.Trainer`` whose optimizer uses LoRA+ groups.

    Only ``create_optimizer`` is overridden, so Accelerate, DeepSpeed and FSDP prepare the LoRA+ optimizer like
    any other, and every scheduler the Trainer builds scales all groups by the same factor (lr_B / lr_A stays λ).
    The optimizer class and its options come from ``args.optim``/``args.optim_args`` or from
    ``Trainer(optimizer_cls_and_kwargs=...)``; as in ``Trainer``, an ``"lr"`` in those kwargs overrides
    ``learning_rate`` (it becomes lr_A). With plain ``TrainingArguments`` the ratio defaults to 16.
    A ready optimizer passed as ``Trainer(optimizers=(opt, sched))`` is used as given (build it with
    ``loraplus.create_loraplus_optimizer``).

    Raises:
        ValueError: a DeepSpeed config with an ``"optimizer"`` block (DeepSpeed would build its own optimizer and
            ``create_optimizer`` would never run) or a scheduler that gives every group one lr; checked here, in
            ``__init__``, because ``train()`` hands DeepSpeed its config before any optimizer hook is reached.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for config in deepspeed_configs(self):
            check_deepspeed_config(config)

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
        cfg = LoraPlusConfig(
            optimizer_kwargs.get("lr", args.learning_rate),
            getattr(args, "loraplus_lr_ratio", 16.0),
            getattr(args, "loraplus_lr_embedding", None),
            args.weight_decay,
            getattr(args, "loraplus_lr_other", None),
        )
        optimizer_kwargs["lr"] = cfg.lr
        warn_if_adaptive(optimizer_cls, cfg.loraplus_lr_ratio)
        groups = build_groups(opt_model, cfg)
        _keep_embeddings_32bit(opt_model, optimizer_cls, optimizer_kwargs)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        logger.info(
            "LoRA+ parameter groups (loraplus_lr_ratio=%g):\n%s", cfg.loraplus_lr_ratio, describe_groups(self.optimizer)
        )
        return self.optimizer
