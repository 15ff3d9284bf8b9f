"""Device, precision, quantisation and attention of a run, in transformers', PEFT's and bitsandbytes' own terms.

``RunHardware`` is what a run resolves from its options when it starts (``resolve_hardware``): the device, bf16 /
fp16 mixed precision (the Trainer's autocast; on CPU bf16 runs under CPU autocast, fp16 needs CUDA), 4- or 8-bit
loading of the base (bitsandbytes ``BitsAndBytesConfig``: nf4 with double quantisation and the precision's
compute dtype; PEFT's ``prepare_model_for_kbit_training``), and the attention implementation. LoRA parameters stay
float32 in every case (PEFT's adapters are created in float32 and the Trainer's autocast leaves parameters alone),
so the LoRA+ groups are the same as for a float model.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

__all__ = ["ATTENTION", "DEVICES", "RunHardware", "from_pretrained", "resolve_hardware"]

DEVICES = ("auto", "cpu", "cuda")
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass(frozen=True)
class RunHardware:
    """What a run uses. ``device``: ``"cpu"`` or ``"cuda"``; ``precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"``;
    ``quantization``: ``None``, ``"4bit"`` or ``"8bit"``; ``attn_implementation``: a transformers name."""

    device: str
    precision: str
    quantization: str | None
    attn_implementation: str

    def from_pretrained_kwargs(self) -> dict:
        """Keyword arguments of ``AutoModelFor*.from_pretrained``: attention, and the bitsandbytes config if any."""
        kwargs = {"attn_implementation": self.attn_implementation}
        if self.quantization is not None:
            from transformers import BitsAndBytesConfig

            compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=self.quantization == "4bit", load_in_8bit=self.quantization == "8bit",
                bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute,
            )  # fmt: skip
            kwargs["device_map"] = {"": 0}
        return kwargs


def from_pretrained(auto_class, path: str, hardware: RunHardware | None, **kwargs):
    """``auto_class.from_pretrained(path, **kwargs)`` with ``hardware``'s attention and quantization.

    An architecture without an sdpa attention (MPNet, in transformers 5) is loaded with ``"eager"`` when sdpa was
    asked for (the default), with a warning; any other attention it lacks is an error.
    """
    import logging

    extra = hardware.from_pretrained_kwargs() if hardware is not None else {}
    try:
        return auto_class.from_pretrained(path, **kwargs, **extra)
    except ValueError as err:
        if extra.get("attn_implementation") != "sdpa" or "scaled_dot_product_attention" not in str(err):
            raise
    logging.getLogger("loraplus").warning("%s has no sdpa attention in this transformers; using eager attention", path)
    return auto_class.from_pretrained(path, **kwargs, **{**extra, "attn_implementation": "eager"})


def resolve_hardware(cfg) -> RunHardware:
    """The run's ``RunHardware`` from ``cfg`` (``device``, ``bf16``, ``fp16``, ``load_in_4bit``, ``load_in_8bit``,
    ``attn_implementation``). bf16 by default on a CUDA GPU that supports it, else fp32.

    Raises:
        ValueError: ``device=cuda`` without CUDA; fp16 without CUDA; bf16 and fp16 together; 4/8-bit loading
            without CUDA or without bitsandbytes; flash attention that is not installed (each names the option).
    """
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ValueError("--device cuda: no CUDA GPU is visible to torch here (torch.cuda.is_available() is False)")
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu"
    if cfg.bf16 and cfg.fp16:
        raise ValueError("give --bf16 or --fp16, not both")
    if cfg.fp16 and device != "cuda":
        raise ValueError("--fp16 needs a CUDA GPU (fp16 mixed precision with a gradient scaler); on CPU use --bf16")
    if cfg.bf16 is None:
        precision = "fp16" if cfg.fp16 else "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    else:
        precision = "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "fp32"
    quantization = "4bit" if cfg.load_in_4bit else "8bit" if cfg.load_in_8bit else None
    if quantization and device != "cuda":
        raise ValueError(f"--load-in-{quantization} needs a CUDA GPU with bitsandbytes (its CPU backend is not used "
                         "here); drop the option to train the base in full precision")  # fmt: skip
    if quantization and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"--load-in-{quantization} needs bitsandbytes: pip install bitsandbytes")
    module = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}.get(cfg.attn_implementation)
    if module and importlib.util.find_spec(module) is None:
        raise ValueError(f"--attn-implementation {cfg.attn_implementation} needs the {module} package, which is not "
                         "installed (pip install flash-attn); use sdpa")  # fmt: skip
    return RunHardware(device, precision, quantization, cfg.attn_implementation)
