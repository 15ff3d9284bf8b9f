"""Multi-process runs (torchrun, ``accelerate launch``): which process may print and write, and DeepSpeed configs
that would undo LoRA+.

loraplus has no distributed code of its own: the Hugging Face Trainer and Accelerate start DDP/FSDP/DeepSpeed.
These helpers only read environment variables and config dicts (no torch import).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["check_deepspeed_config", "deepspeed_configs", "is_main_process", "process_rank"]

# DeepSpeed schedulers that keep the per-group lr ratio: WarmupCosineLR scales each group's own lr.
# WarmupLR, WarmupDecayLR, OneCycle and LRRangeTest broadcast one scalar lr to every group
# (deepspeed/runtime/lr_schedules.py, `_format_param`), and transformers fills `warmup_max_lr: auto` with a scalar.
_RATIO_KEEPING_DS_SCHEDULERS = frozenset({"WarmupCosineLR"})


def process_rank() -> int:
    """Global rank of this process: ``RANK`` as set by torchrun/accelerate launch, 0 in a single process.

    Read from the environment, so it is right before ``torch.distributed`` is initialised (the Trainer does that).
    """
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True in the process that prints results and writes files (rank 0, or the only process)."""
    return process_rank() == 0


def deepspeed_configs(trainer: Any) -> list[Mapping]:
    """The DeepSpeed config dicts a transformers ``Trainer`` holds; ``[]`` without DeepSpeed.

    transformers 5 hands DeepSpeed ``trainer.accelerator.state.deepspeed_plugin.hf_ds_config.config`` in
    ``deepspeed_init`` (at the start of ``train()``); ``TrainingArguments(deepspeed=...)`` also keeps it at
    ``trainer.args.hf_deepspeed_config.config``. Both are read: they are usually the same dict.
    """
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "deepspeed_plugin", None)
    holders = (
        getattr(plugin, "hf_ds_config", None),
        getattr(getattr(trainer, "args", None), "hf_deepspeed_config", None),
    )
    found = []
    for config in [getattr(h, "config", None) for h in holders] + [getattr(plugin, "deepspeed_config", None)]:
        if isinstance(config, Mapping) and not any(config is seen for seen in found):
            found.append(config)
    return found


def check_deepspeed_config(config: Mapping) -> None:
    """Raise if a DeepSpeed config would replace the LoRA+ optimizer or flatten its learning rates.

    An ``"optimizer"`` block makes transformers skip ``create_optimizer`` (it passes DeepSpeed a placeholder and
    DeepSpeed builds its own optimizer over one group), so the LoRA+ groups never exist. A ``"scheduler"`` block of
    a type that sets one lr for every group (all but ``WarmupCosineLR``) turns lr_B back into lr_A.

    Raises:
        ValueError: the config has an ``"optimizer"`` block, or a ``"scheduler"`` block other than WarmupCosineLR.
    """
    if "optimizer" in config:
        block = config["optimizer"]  # transformers checks for the key, whatever its value
        kind = block.get("type", "?") if isinstance(block, Mapping) else "?"
        raise ValueError(
            f"the DeepSpeed config sets an 'optimizer' block (type {kind!r}), which would replace the LoRA+ "
            "optimizer; remove it (loraplus builds the optimizer: choose it with TrainingArguments optim=..., "
            "its lr with learning_rate and loraplus_lr_ratio)"
        )
    scheduler = config.get("scheduler")
    if scheduler is not None:
        kind = scheduler.get("type", "?") if isinstance(scheduler, Mapping) else "?"
        if kind not in _RATIO_KEEPING_DS_SCHEDULERS:
            raise ValueError(
                f"the DeepSpeed config sets a 'scheduler' block of type {kind!r}, which gives every parameter group "
                "the same lr and so undoes lr_B = loraplus_lr_ratio * lr_A; remove it (the Trainer's "
                "lr_scheduler_type scales all groups alike) or use WarmupCosineLR"
            )
