"""The LoRA+ optimizer: a drop-in for ``peft.optimizers.create_loraplus_optimizer``. Imports torch only."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from typing import Iterable

import torch
from torch import nn

from .groups import DEFAULT_LORAPLUS_LR_RATIO, LoraPlusConfig, as_float, build_groups, resolve_config

__all__ = ["build_optimizer", "create_loraplus_optimizer", "describe_groups", "warn_if_adaptive"]

logger = logging.getLogger("loraplus")

# Optimizers that estimate their own step size and use the group lr only as a multiplier of it (often 1.0):
# a ratio between groups still scales the steps, but the "lr" the user sets is not the lr the method assumes.
_ADAPTIVE = re.compile(r"prodigy|dadapt|d_adapt|dadaptation", re.IGNORECASE)


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    *,
    lr: float,
    loraplus_lr_ratio: float = DEFAULT_LORAPLUS_LR_RATIO,
    loraplus_lr_embedding: float | None = None,
    loraplus_lr_other: float | None = None,
    weight_decay: float | None = None,
    loraplus_weight_decay: float | None = None,
    config: LoraPlusConfig | None = None,
    **optimizer_kwargs,
) -> torch.optim.Optimizer:
    """Build ``optimizer_cls`` over the LoRA+ parameter groups of ``model``.

    The same call as PEFT's ``create_loraplus_optimizer(model=..., optimizer_cls=..., lr=..., loraplus_lr_ratio=...,
    loraplus_weight_decay=...)`` works. Differences from PEFT (see ``loraplus.groups``): biases, norm weights and
    DoRA magnitudes are not given lr·λ; ``weight_decay=`` is honoured; embedding LoRA factors get lr and lr·λ
    unless ``loraplus_lr_embedding`` is given; numbers are validated.

    Args:
        model: the model whose trainable parameters are optimised.
        optimizer_cls: any ``torch.optim.Optimizer`` subclass taking ``(param_groups, lr=..., **kwargs)``;
            default ``torch.optim.AdamW``.
        lr: lr of A factors and non-LoRA parameters (> 0); also the optimizer's default lr.
        loraplus_lr_ratio: λ = lr_B / lr (> 0, default 16).
        loraplus_lr_embedding: absolute lr of embedding-LoRA factors, or ``None`` (treat as any pair).
        loraplus_lr_other: absolute lr of heads, biases, norms and other non-LoRA tensors, or ``None`` (``lr``).
        weight_decay: decoupled weight decay (>= 0, default 0) of the decaying groups.
        loraplus_weight_decay: PEFT's name for ``weight_decay``; give one of the two, or equal values.
        config: a ready ``LoraPlusConfig`` instead of the LoRA+ keywords (give one or the other).
        **optimizer_kwargs: passed to ``optimizer_cls`` (``betas``, ``eps``, ``foreach``, ``fused``...).

    Returns:
        The optimizer; each of its ``param_groups`` carries a ``"name"``.

    Raises:
        ValueError: bad numbers, no trainable parameters, conflicting weight decays, ``config`` with keywords.
    """
    if weight_decay is not None and loraplus_weight_decay is not None and weight_decay != loraplus_weight_decay:
        raise ValueError(
            f"weight_decay={weight_decay!r} and loraplus_weight_decay={loraplus_weight_decay!r} disagree; give one"
        )
    decay = weight_decay if weight_decay is not None else loraplus_weight_decay
    cfg = resolve_config(
        config, loraplus_lr_ratio=loraplus_lr_ratio, loraplus_lr_embedding=loraplus_lr_embedding,
        loraplus_lr_other=loraplus_lr_other, weight_decay=0.0 if decay is None else decay,
    )  # fmt: skip
    return build_optimizer(model, optimizer_cls, lr, cfg, optimizer_kwargs)


def build_optimizer(model: nn.Module, optimizer_cls, lr: float, cfg: LoraPlusConfig, optimizer_kwargs: dict):
    """The one build sequence of every entry point: warn (adaptive optimizers) -> LoRA+ groups -> 32-bit
    embedding states (bitsandbytes 8-bit) -> ``optimizer_cls(groups, lr=lr, **optimizer_kwargs)`` -> log the table."""
    lr = as_float("lr", lr)
    warn_if_adaptive(optimizer_cls, cfg.loraplus_lr_ratio)
    groups = build_groups(model, lr, cfg)
    _keep_embeddings_32bit(model, optimizer_cls, optimizer_kwargs)
    optimizer = optimizer_cls(groups, **{**optimizer_kwargs, "lr": lr})
    logger.info("LoRA+ parameter groups (loraplus_lr_ratio=%g):\n%s", cfg.loraplus_lr_ratio, describe_groups(optimizer))
    return optimizer


def warn_if_adaptive(optimizer_cls, ratio: float) -> None:
    """Warn when ``optimizer_cls`` (Prodigy, D-Adaptation) sets its own step size, so λ is not lr_B / lr_A."""
    name = getattr(optimizer_cls, "__name__", "")
    if _ADAPTIVE.search(name):
        warnings.warn(
            f"{name} adapts its own step size: the per-group lr only scales it, so "
            f"loraplus_lr_ratio={ratio} is not the lr_B / lr_A of the LoRA+ paper",
            stacklevel=3,
        )


def _keep_embeddings_32bit(model: nn.Module, optimizer_cls: type, optimizer_kwargs: dict) -> None:
    """bitsandbytes 8-bit optimizers: keep embedding states in 32 bit (as PEFT and HF Trainer do)."""
    module_name = getattr(optimizer_cls, "__module__", "") or ""
    eight_bit = "8bit" in getattr(optimizer_cls, "__name__", "") or optimizer_kwargs.get("optim_bits") == 8
    if not module_name.startswith("bitsandbytes") or not eight_bit:
        return
    bitsandbytes = sys.modules["bitsandbytes"]  # imported already: optimizer_cls comes from it

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})


def describe_groups(groups: torch.optim.Optimizer | Iterable[dict]) -> str:
    """A text table of parameter groups: name, tensors, parameters, lr, weight decay.

    ``groups`` is an optimizer (or anything with ``param_groups``) or a list of group dicts
    (``loraplus_param_groups``). lr is the group's base lr: ``initial_lr`` once a scheduler has set it.
    """
    rows = groups.param_groups if hasattr(groups, "param_groups") else list(groups)
    lines = [f"{'group':<18} {'tensors':>7} {'parameters':>12} {'lr':>10} {'weight_decay':>12}"]
    for i, g in enumerate(rows):
        numel = sum(p.numel() for p in g["params"])
        lines.append(
            f"{g.get('name', f'group{i}'):<18} {len(g['params']):>7} {numel:>12,} {g.get('initial_lr', g['lr']):>10.3g} {g.get('weight_decay', 0.0):>12.3g}"
        )
    return "\n".join(lines)
