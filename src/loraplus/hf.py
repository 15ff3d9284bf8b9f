"""Hugging Face Trainer integration: ``LoraPlusTrainingArguments``, ``LoraPlusMixin``/``LoraPlusTrainer`` and the
feature-learning monitor's ``FeatureLearningCallback``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import Trainer, TrainerCallback, TrainingArguments

from .distributed import check_deepspeed_config, deepspeed_configs
from .groups import DEFAULT_LORAPLUS_LR_RATIO, LoraPlusConfig, resolve_config
from .monitor import FeatureLearningMonitor, check_every, preserved_rng, probe_from_dataloader
from .optim import build_optimizer

try:
    from transformers.trainer_optimizer import is_optimizer_factory
except ImportError:  # transformers without optimizer factories (Muon, Dion) calls every optimizer_cls with groups

    def is_optimizer_factory(optimizer_cls) -> bool:
        return False


__all__ = [
    "FeatureLearningCallback",
    "LoraPlusMixin",
    "LoraPlusTrainer",
    "LoraPlusTrainingArguments",
    "add_feature_learning_callback",
]

logger = logging.getLogger("loraplus")


_OPTION_HELP = {
    "loraplus_lr_ratio": "lr_B / lr_A (LoRA+ λ, > 0; 1 = plain LoRA).",
    "loraplus_lr_embedding": "Absolute lr of embedding-LoRA factors; None treats them like any LoRA pair.",
    "loraplus_lr_other": "Absolute lr of trainable non-LoRA tensors (heads, biases, norms); None gives them lr.",
}
_DEFAULTS = {f.name: f.default for f in fields(LoraPlusConfig)}


def _fp16_device() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


@dataclass
class LoraPlusTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the LoRA+ options (the fields of ``LoraPlusConfig``; ``weight_decay`` is
    TrainingArguments' own).

    ``learning_rate`` is lr_A (and the lr of non-LoRA parameters); ``weight_decay`` applies to every decaying
    group (biases, norms and DoRA magnitudes never decay).

    Raises:
        ValueError: a bad LoRA+ option, or ``fp16=True`` without a GPU (on construction).
    """

    loraplus_lr_ratio: float = field(default=DEFAULT_LORAPLUS_LR_RATIO, metadata={"help": _OPTION_HELP["loraplus_lr_ratio"]})
    loraplus_lr_embedding: float | None = field(default=None, metadata={"help": _OPTION_HELP["loraplus_lr_embedding"]})
    loraplus_lr_other: float | None = field(default=None, metadata={"help": _OPTION_HELP["loraplus_lr_other"]})

    def __post_init__(self):
        if self.fp16 and (self.use_cpu or not _fp16_device()):  # transformers accepts it and trains in float32
            raise ValueError("fp16=True needs a GPU (CUDA, XPU or MPS); on this CPU it would silently train in "
                             "float32: pass bf16=True (bf16 autocast on CPU) or neither")  # fmt: skip
        super().__post_init__()
        cfg = self.loraplus_config()
        self.loraplus_lr_ratio = cfg.loraplus_lr_ratio
        self.loraplus_lr_embedding = cfg.loraplus_lr_embedding
        self.loraplus_lr_other = cfg.loraplus_lr_other

    def loraplus_config(self) -> LoraPlusConfig:
        return LoraPlusConfig(self.loraplus_lr_ratio, self.loraplus_lr_embedding, self.loraplus_lr_other, self.weight_decay)

    @classmethod
    def from_loraplus_config(cls, config: LoraPlusConfig, **kwargs) -> "LoraPlusTrainingArguments":
        """Arguments carrying ``config`` (its weight decay becomes ``weight_decay``) and ``kwargs``."""
        return cls(**{**kwargs, "loraplus_lr_ratio": config.loraplus_lr_ratio, "weight_decay": config.weight_decay,
                      "loraplus_lr_embedding": config.loraplus_lr_embedding, "loraplus_lr_other": config.loraplus_lr_other})


_MEAN_LOSS_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice", "ForQuestionAnswering")


def _mean_loss_head(model) -> bool:
    """The model (under its PEFT wrapper) is a head whose loss is a plain batch mean that ignores
    ``num_items_in_batch``, though its ``forward`` takes ``**kwargs``: the Trainer would then skip its
    gradient-accumulation scaling, and log (and step with) a loss ``gradient_accumulation_steps`` times too large."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__.endswith(_MEAN_LOSS_HEADS)


class LoraPlusMixin:
    """LoRA+ parameter groups for any ``transformers.Trainer`` subclass: put it first in the bases.

    ::

        from trl import SFTTrainer
        class LoraPlusSFTTrainer(LoraPlusMixin, SFTTrainer):
            pass
        trainer = LoraPlusSFTTrainer(model=..., args=SFTConfig(learning_rate=2e-4), peft_config=LoraConfig(...),
                                     train_dataset=..., loraplus_lr_ratio=16)

    ``create_optimizer`` is overridden, so Accelerate, DeepSpeed and FSDP prepare the LoRA+ optimizer like
    any other, and every scheduler the Trainer builds scales all groups by the same factor (lr_B / lr_A stays λ).
    Two Trainer faults are fixed on the way: ``evaluate`` leaves the training's random numbers alone (so how often a
    run is evaluated does not change its training losses), and a classification head under PEFT (whose loss
    ignores ``num_items_in_batch``) gets the Trainer's gradient-accumulation scaling (``model_accepts_loss_kwargs``
    set to False; else the loss and gradients are ``gradient_accumulation_steps`` times too large).
    The LoRA+ options come from ``loraplus_config=LoraPlusConfig(...)``, or the keyword arguments
    ``loraplus_lr_ratio``, ``loraplus_lr_embedding`` and ``loraplus_lr_other``, else from the same-named fields of
    ``args`` (``LoraPlusTrainingArguments``), else the defaults (ratio 16; embedding pairs and other tensors at
    lr_A); weight decay is ``args.weight_decay`` unless ``loraplus_config`` is given. The keyword arguments are the
    way for trainers whose own config class cannot carry extra fields (TRL turns any ``TrainingArguments`` into
    its ``SFTConfig`` and would drop them). The optimizer class and its options come from ``args.optim``/
    ``args.optim_args`` or from ``optimizer_cls_and_kwargs=...``; as in ``Trainer``, an ``"lr"`` in those kwargs
    overrides ``learning_rate`` (it becomes lr_A). A ready optimizer passed as ``optimizers=(opt, sched)`` is used
    as given (build it with ``loraplus.create_loraplus_optimizer``).

    Raises:
        ValueError: a bad LoRA+ option, or ``loraplus_config`` with LoRA+ keywords (on construction); a DeepSpeed
            config with an ``"optimizer"`` block (DeepSpeed would build its own optimizer and ``create_optimizer``
            would never run) or a scheduler that gives every group one lr; checked in ``__init__``, because
            ``train()`` hands DeepSpeed its config before any optimizer hook is reached.
    """

    def __init__(self, *args, loraplus_config: LoraPlusConfig | None = None, loraplus_lr_ratio=None,
                 loraplus_lr_embedding=None, loraplus_lr_other=None, **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        for config in deepspeed_configs(self):
            check_deepspeed_config(config)
        given = {"loraplus_lr_ratio": loraplus_lr_ratio, "loraplus_lr_embedding": loraplus_lr_embedding,
                 "loraplus_lr_other": loraplus_lr_other}  # fmt: skip
        if loraplus_config is not None:
            passed = sorted(name for name, value in given.items() if value is not None)
            if passed:
                raise ValueError(f"give loraplus_config= or the LoRA+ keywords, not both (got {', '.join(passed)})")
            self.loraplus_config = resolve_config(loraplus_config)
        else:
            options = {name: value if value is not None else getattr(self.args, name, _DEFAULTS[name])
                       for name, value in given.items()}  # fmt: skip
            self.loraplus_config = LoraPlusConfig(**options, weight_decay=self.args.weight_decay)
        if self.model_accepts_loss_kwargs and _mean_loss_head(self.model):
            self.model_accepts_loss_kwargs = False

    def evaluate(self, *args, **kwargs):
        """``Trainer.evaluate``, drawing no random numbers from the training stream: the torch (CPU and CUDA),
        ``random`` and numpy states are restored afterwards (creating the evaluation's DataLoader iterator draws a
        seed), so the training losses do not depend on how often the run is evaluated."""
        with preserved_rng(self.model):
            return super().evaluate(*args, **kwargs)

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
        lr = optimizer_kwargs.pop("lr", args.learning_rate)
        self.optimizer = build_optimizer(opt_model, optimizer_cls, lr, self.loraplus_config, optimizer_kwargs)
        return self.optimizer


class LoraPlusTrainer(LoraPlusMixin, Trainer):
    """A ``transformers.Trainer`` whose optimizer uses LoRA+ groups (see ``LoraPlusMixin``); pair it with
    ``LoraPlusTrainingArguments`` or pass ``loraplus_lr_ratio=...``. With plain ``TrainingArguments`` and no
    keyword the ratio is 16."""


class FeatureLearningCallback(TrainerCallback):
    """Run a ``FeatureLearningMonitor`` inside ``transformers.Trainer`` (real optimizer steps only).

    Snapshots in ``on_pre_optimizer_step``, measures in ``on_optimizer_step``; the latest aggregate goes into the
    next training log as ``fl/delta_A``, ``fl/delta_B``, ``fl/log10_ratio``, ``fl/step`` (so into
    ``state.log_history``; reporters such as TensorBoard see it if this callback runs before them, which
    ``add_feature_learning_callback(trainer)`` arranges). ``probe_inputs=None``: the first ``probe_size``
    training examples, collated. ``save_json``: write ``<output_dir>/feature_learning.json`` at train end.
    """

    def __init__(self, probe_inputs=None, *, every: int = 10, probe_size: int = 8, save_json: bool = True):
        self.probe_inputs, self.every, self.probe_size = probe_inputs, check_every(every), probe_size
        self.save = save_json
        self.monitor: FeatureLearningMonitor | None = None
        self._unlogged: dict | None = None  # the latest sampled step's aggregate, not yet logged

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.monitor = FeatureLearningMonitor(model, every=self.every)
        probe = self.probe_inputs
        if probe is None:
            with preserved_rng(model):
                probe = probe_from_dataloader(train_dataloader, self.probe_size)
        self.monitor.set_probe(probe)
        self.monitor.steps_seen = state.global_step

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.monitor.before_step(state.global_step + 1)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._unlogged = self.monitor.after_step() or self._unlogged

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._unlogged is None or logs is None or not ({"loss", "train_loss"} & set(logs)):
            return
        rec = self._unlogged
        values = {"fl/delta_A": rec["delta_A"], "fl/delta_B": rec["delta_B"], "fl/step": rec["step"]}
        if rec["log10_ratio"] is not None:
            values["fl/log10_ratio"] = rec["log10_ratio"]
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
        self._unlogged = None

    def on_train_end(self, args, state, control, **kwargs):
        if self.save and self.monitor is not None and state.is_world_process_zero:
            self.monitor.save_json(Path(args.output_dir) / "feature_learning.json")


def add_feature_learning_callback(
    trainer, probe_inputs=None, *, every: int = 10, probe_size: int = 8, save_json: bool = True
) -> FeatureLearningCallback:
    """Add a ``FeatureLearningCallback`` to ``trainer`` ahead of its reporters, so that TensorBoard and the other
    ``report_to`` integrations receive the ``fl/*`` values; returns the callback (its ``.monitor`` after training)."""
    callback = FeatureLearningCallback(probe_inputs, every=every, probe_size=probe_size, save_json=save_json)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
