"""PyTorch Lightning: ``configure_optimizers`` with LoRA+ groups (optional extra ``loraplus[lightning]``).

::

    import lightning as L
    from loraplus.lightning import loraplus_optimizers

    class Classifier(L.LightningModule):
        def __init__(self, peft_model):
            super().__init__()
            self.model = peft_model  # any module holding LoRA pairs (PEFT, torchtune, loralib, kohya, ...)

        def configure_optimizers(self):
            return loraplus_optimizers(self, lr=1e-3, loraplus_lr_ratio=16, warmup_steps=10,
                                       num_training_steps=self.trainer.estimated_stepping_batches)

This module does not import Lightning: the return value is Lightning's documented ``configure_optimizers`` dict;
the schedule is transformers' ``get_linear_schedule_with_warmup`` (the Trainer's default).
"""

from __future__ import annotations

import torch
from torch import nn

from .groups import DEFAULT_LORAPLUS_LR_RATIO, LoraPlusConfig
from .optim import create_loraplus_optimizer

__all__ = ["loraplus_optimizers"]


def loraplus_optimizers(
    module: nn.Module,
    *,
    lr: float,
    loraplus_lr_ratio: float = DEFAULT_LORAPLUS_LR_RATIO,
    loraplus_lr_embedding: float | None = None,
    loraplus_lr_other: float | None = None,
    weight_decay: float = 0.0,
    config: LoraPlusConfig | None = None,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    num_training_steps: int | None = None,
    warmup_steps: int = 0,
    **optimizer_kwargs,
) -> dict:
    """What ``LightningModule.configure_optimizers`` returns, for LoRA+ (lr_B = loraplus_lr_ratio · lr).

    Args:
        module: the LightningModule (or any module) whose trainable parameters are optimised; LoRA pairs are
            found by structure and name as in ``create_loraplus_optimizer``.
        lr: lr_A and the lr of non-LoRA trainable tensors (> 0). loraplus_lr_ratio: λ (> 0, default 16).
        loraplus_lr_embedding, loraplus_lr_other: absolute lrs of embedding-LoRA factors and of non-LoRA tensors
            (default ``None``: as in ``create_loraplus_optimizer``).
        weight_decay: decoupled weight decay (>= 0, default 0); biases, norms, DoRA magnitudes never decay.
        config: a ready ``LoraPlusConfig`` instead of the four LoRA+ keywords (give one or the other).
        optimizer_cls: default ``torch.optim.AdamW``; **optimizer_kwargs go to it.
        num_training_steps: with it, a per-step schedule: linear warm-up from 0 over ``warmup_steps``, then linear
            decay to 0 at ``num_training_steps`` (transformers' ``get_linear_schedule_with_warmup``) (the same factor for every group, so lr_B / lr_A stays λ); without it,
            a constant lr.
        warmup_steps: steps of linear warm-up (>= 0, < num_training_steps).

    Returns:
        ``{"optimizer": opt}`` or ``{"optimizer": opt, "lr_scheduler": {"scheduler": ..., "interval": "step"}}``.

    Raises:
        ValueError: see ``create_loraplus_optimizer``; ``warmup_steps``/``num_training_steps`` out of range.
    """
    optimizer = create_loraplus_optimizer(
        module, optimizer_cls, lr=lr, loraplus_lr_ratio=loraplus_lr_ratio, loraplus_lr_embedding=loraplus_lr_embedding,
        loraplus_lr_other=loraplus_lr_other, weight_decay=weight_decay, config=config, **optimizer_kwargs,
    )  # fmt: skip
    if num_training_steps is None:
        return {"optimizer": optimizer}
    total, warmup = num_training_steps, warmup_steps
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        raise ValueError(f"num_training_steps must be a positive integer, got {num_training_steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < total:
        raise ValueError(f"warmup_steps must be an integer in [0, num_training_steps={total}), got {warmup_steps!r}")

    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
