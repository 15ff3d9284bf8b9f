"""``LoraPlusSFTTrainer``: TRL's ``SFTTrainer`` with the LoRA+ optimizer (``LoraPlusMixin``). Imports trl, so the
instruction-tuning task loads it only when a run starts."""

from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from ..hf import LoraPlusMixin

__all__ = ["LoraPlusSFTTrainer", "SFTConfig"]


class LoraPlusSFTTrainer(LoraPlusMixin, SFTTrainer):
    """``trl.SFTTrainer`` whose optimizer has the LoRA+ groups; give the options as ``loraplus_config=`` or the
    ``loraplus_*`` keywords (TRL rebuilds any ``TrainingArguments`` as ``SFTConfig``, dropping extra fields)."""
