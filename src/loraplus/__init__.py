"""loraplus: LoRA+ (Hayou, Ghosh, Yu, ICML 2024) for PEFT, Hugging Face and plain PyTorch.

The core (``loraplus_param_groups``, ``create_loraplus_optimizer``, ``describe_groups``) imports torch only;
``LoraPlusTrainer``, ``LoraPlusMixin`` and ``LoraPlusTrainingArguments`` load transformers on first use.
"""

from .groups import DEFAULT_LORAPLUS_LR_RATIO, LoraPair, LoraPlusConfig, find_lora_pairs, loraplus_param_groups
from .optim import create_loraplus_optimizer, describe_groups

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LORAPLUS_LR_RATIO",
    "FeatureLearningMonitor",
    "LoraPair",
    "LoraPlusConfig",
    "LoraPlusMixin",
    "LoraPlusTrainer",
    "LoraPlusTrainingArguments",
    "create_loraplus_optimizer",
    "describe_groups",
    "find_lora_pairs",
    "loraplus_param_groups",
]


def __getattr__(name: str):
    if name in ("LoraPlusMixin", "LoraPlusTrainer", "LoraPlusTrainingArguments"):
        from . import hf

        return getattr(hf, name)
    if name == "FeatureLearningMonitor":
        from .monitor import FeatureLearningMonitor

        return FeatureLearningMonitor
    raise AttributeError(f"module 'loraplus' has no attribute {name!r}")
