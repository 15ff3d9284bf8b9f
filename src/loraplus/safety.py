"""Guards around a training run: LoRA initialisation check, non-finite loss stop, last complete checkpoint.

- ``check_lora_init(model)`` warns when a LoRA pair starts with both factors non-zero (PiSSA/OLoRA/LoftQ-style
  inits): the LoRA+ analysis assumes one factor starts at zero (Hayou et al. 2024, Sec. 3: b₀ = 0).
- ``NonFiniteLossCallback`` stops a ``transformers.Trainer`` run at the first NaN/inf training loss (or gradient),
  before the optimizer applies it and before any checkpoint of that step is written, with a
  ``NonFiniteLossError`` naming the step and the last good checkpoint.
- ``last_good_checkpoint(folder)``: the newest *complete* ``checkpoint-N`` (Hugging Face writes checkpoints in
  place, not atomically; a run killed while saving leaves a partial folder that ``--resume`` must skip).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from .groups import find_lora_pairs

__all__ = ["NonFiniteLossCallback", "NonFiniteLossError", "check_lora_init", "last_good_checkpoint"]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def check_lora_init(model: nn.Module) -> list[str]:
    """Warn if any trainable LoRA pair has both A and B non-zero; return the prefixes of those pairs.

    Call it right after injecting fresh adapters (not on a trained or resumed adapter, where both factors are
    non-zero by design). Standard LoRA starts with B = 0 (PEFT embedding LoRA: A = 0), so the model starts at the
    pretrained function; the ratio lr_B / lr_A of LoRA+ is derived under that assumption.
    Source: Hayou et al. 2024, Sec. 3 (b₀ = 0).

    Warns:
        UserWarning: naming how many pairs and the first few, when some pair starts with both factors non-zero.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    both: list[str] = []
    for pair in {id(p): p for p in find_lora_pairs(model).values()}.values():
        if pair.a_name is None or pair.b_name is None:
            continue
        a, b = params[pair.a_name], params[pair.b_name]
        if (a.requires_grad or b.requires_grad) and bool(a.detach().any()) and bool(b.detach().any()):
            both.append(pair.prefix or pair.a_name)
    if both:
        shown = ", ".join(both[:3]) + (f" and {len(both) - 3} more" if len(both) > 3 else "")
        warnings.warn(
            f"{len(both)} LoRA pair(s) start with both factors non-zero ({shown}), as with PiSSA/OLoRA-style "
            "initialisation: the LoRA+ ratio theory assumes one factor (B) starts at zero, so the paper's "
            "loraplus_lr_ratio defaults may not transfer; tune the ratio, or use the standard init (B = 0)",
            stacklevel=2,
        )
    return both


def last_good_checkpoint(folder: str | Path) -> Path | None:
    """The highest-numbered ``checkpoint-N`` in ``folder`` whose ``trainer_state.json`` reads as JSON, or None.

    The Trainer writes ``trainer_state.json`` after the weights, optimizer, scheduler and RNG states, so a
    checkpoint with a readable one was written to the end; a folder without it was cut short (a kill while saving).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return path
    return None


class NonFiniteLossError(ValueError):
    """A NaN or infinite training loss (or gradient); the message names the step and the last good checkpoint."""


class NonFiniteLossCallback(TrainerCallback):
    """Stop training at the first non-finite training loss or gradient, before it reaches the weights.

    Checks, each optimizer step: the loss of every training forward (a forward hook reads ``outputs.loss``), then
    the gradients of trainable parameters (``on_pre_optimizer_step``, after clipping, before ``optimizer.step``);
    and every logged training loss (``on_log``; set ``logging_nan_inf_filter=False`` so the Trainer does not hide
    NaN losses). Raising there stops the run before that step's checkpoint is saved, so every checkpoint on disk
    holds finite weights.

    Raises:
        NonFiniteLossError: "loss became nan at step 7; the last good checkpoint is checkpoint-6; ...".
    """

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []  # training losses since the last optimizer step (detached)
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._losses.clear()
        if model is not None and self._hook is None:
            self._hook = model.register_forward_hook(self._record_loss)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _record_loss(self, module, inputs, outputs) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
        if module.training and isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach().float().mean())  # checked once per step: no device sync here

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1  # global_step counts finished optimizer steps
        losses, self._losses = self._losses, []
        bad = _first_non_finite(losses)
        if bad is not None:
            self._stop(args, control, f"loss became {float(losses[bad])} at step {step}")
        if model is None:
            return
        named = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
        bad = _first_non_finite([g for _, g in named])
        if bad is not None:
            name, grad = named[bad]
            kind = "nan" if bool(torch.isnan(grad).any()) else "inf"
            self._stop(args, control, f"training diverged at step {step}: the gradient of {name} became {kind}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and not math.isfinite(loss):
            self._stop(args, control, f"loss became {loss} at step {state.global_step}")

    def _stop(self, args, control, what: str) -> None:
        control.should_save = False
        control.should_training_stop = True
        self._remove_hook()
        last = last_good_checkpoint(args.output_dir)
        kept = f"the last good checkpoint is {last.name}" if last else "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"{what}; {kept}; lower --learning-rate or --loraplus-lr-ratio and start over with --overwrite "
            "(--resume would restore the checkpoint's learning rates)"
        )


def _first_non_finite(tensors: list[torch.Tensor]) -> int | None:
    """Index of the first tensor holding a NaN or ±inf, or None; one device sync for the whole list."""
    if not tensors:
        return None
    device = tensors[0].device
    finite = torch.stack([torch.isfinite(t).all().to(device) for t in tensors])
    if bool(finite.all()):
        return None
    return int((~finite).nonzero()[0, 0])
