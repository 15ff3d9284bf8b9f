"""LoraPlusTrainer / LoraPlusTrainingArguments: every way the Trainer gets its optimizer keeps lr_B / lr_A = λ."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from loraplus import LoraPlusTrainer, LoraPlusTrainingArguments, create_loraplus_optimizer
from tiny_models import Classifier, EmbedLinear, _peft


class ClassifierWithLoss(Classifier):
    """``Classifier`` that takes a batch dict: x (batch, 8), labels (batch,) -> {"loss", "logits" (batch, 3)}."""

    def forward(self, x, labels=None):
        logits = super().forward(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def tiny_peft_classifier() -> nn.Module:
    """LoRA on fc1, fc2; trainable biases (bias="all") and head (modules_to_save): groups A, B, other, no_decay."""
    torch.manual_seed(0)
    return _peft(ClassifierWithLoss(), target_modules=["fc1", "fc2"], modules_to_save=["head"], bias="all")


class TinyDataset(torch.utils.data.Dataset):
    """32 rows of {"x": (8,), "labels": ()} with 3 classes, fixed seed."""

    def __init__(self, n: int = 32):
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class RecordLr(TrainerCallback):
    """Records ``{group name: lr}`` of the trainer's optimizer after every step (after the scheduler stepped)."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.steps.append({g["name"]: g["lr"] for g in optimizer.param_groups})


def arguments(tmp_path, cls=TrainingArguments, **overrides):
    options = dict(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4, max_steps=6,
        learning_rate=1e-3, save_strategy="no", logging_strategy="no", remove_unused_columns=False,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    options.update(overrides)
    return cls(**options)


def group_options(optimizer) -> dict[str, tuple[float, float]]:
    return {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}


# --------------------------------------------------------------------------- the scheduler keeps the ratio


def linear(k: int, warmup: int = 2, total: int = 6) -> float:
    """transformers' get_linear_schedule_with_warmup factor after k scheduler steps."""
    return k / warmup if k < warmup else (total - k) / (total - warmup)


def cosine(k: int, warmup: int = 2, total: int = 6) -> float:
    """transformers' get_cosine_schedule_with_warmup factor (half a cosine) after k scheduler steps."""
    return k / warmup if k < warmup else 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))


@pytest.mark.parametrize("scheduler, factor", [("linear", linear), ("cosine", cosine)])
def test_scheduler_keeps_lr_ratio_at_every_step(tmp_path, scheduler, factor):
    args = arguments(
        tmp_path, LoraPlusTrainingArguments, warmup_steps=2, lr_scheduler_type=scheduler, loraplus_lr_ratio=10,
        weight_decay=0.1,
    )  # fmt: skip
    record = RecordLr()
    trainer = LoraPlusTrainer(model=tiny_peft_classifier(), args=args, train_dataset=TinyDataset(), callbacks=[record])
    trainer.train()
    assert len(record.steps) == 6
    lr_a = [step["lora_A"] for step in record.steps]
    assert lr_a == pytest.approx([1e-3 * factor(k) for k in range(1, 7)], rel=1e-9, abs=1e-15)
    checked = 0
    for step in record.steps:
        assert set(step) == {"lora_A", "lora_B", "other", "no_decay"}
        assert step["other"] == step["no_decay"] == step["lora_A"]
        if step["lora_A"] > 0:
            assert step["lora_B"] / step["lora_A"] == pytest.approx(10.0, rel=1e-12)
            checked += 1
    assert checked == 5  # the last step ends at lr 0


# --------------------------------------------------------------------------- the ways a Trainer gets its optimizer


def test_plain_training_arguments_default_ratio_16(tmp_path):
    trainer = LoraPlusTrainer(model=tiny_peft_classifier(), args=arguments(tmp_path))
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert group_options(optimizer) == {
        "lora_A": (1e-3, 0.0),
        "lora_B": (0.016, 0.0),
        "other": (1e-3, 0.0),
        "no_decay": (1e-3, 0.0),
    }


def test_args_optim_adamw_torch_with_weight_decay(tmp_path):
    args = arguments(tmp_path, LoraPlusTrainingArguments, optim="adamw_torch", weight_decay=0.1, adam_beta2=0.99)
    optimizer = LoraPlusTrainer(model=tiny_peft_classifier(), args=args).create_optimizer()
    assert type(optimizer) is torch.optim.AdamW
    assert group_options(optimizer) == {
        "lora_A": (1e-3, 0.1),
        "lora_B": (0.016, 0.1),
        "other": (1e-3, 0.1),
        "no_decay": (1e-3, 0.0),
    }
    assert {g["betas"] for g in optimizer.param_groups} == {(0.9, 0.99)}


def test_optimizer_cls_and_kwargs_sgd(tmp_path):
    """As in a plain Trainer, an ``lr`` in the kwargs is the base lr (lr_A); λ still applies to B."""
    trainer = LoraPlusTrainer(
        model=tiny_peft_classifier(),
        args=arguments(tmp_path, LoraPlusTrainingArguments, loraplus_lr_ratio=8, weight_decay=0.1),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    )
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is torch.optim.SGD
    assert group_options(optimizer) == {
        "lora_A": (0.05, 0.1),
        "lora_B": (0.4, 0.1),
        "other": (0.05, 0.1),
        "no_decay": (0.05, 0.0),
    }
    assert {g["momentum"] for g in optimizer.param_groups} == {0.9}
    plain = Trainer(
        model=tiny_peft_classifier(), args=arguments(tmp_path),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    )  # fmt: skip
    assert {g["lr"] for g in plain.create_optimizer().param_groups} == {0.05}  # what Trainer does with that lr


def test_optimizer_cls_and_kwargs_without_lr_uses_learning_rate(tmp_path):
    trainer = LoraPlusTrainer(
        model=tiny_peft_classifier(), args=arguments(tmp_path), optimizer_cls_and_kwargs=(torch.optim.SGD, {})
    )
    assert group_options(trainer.create_optimizer())["lora_B"] == (0.016, 0.0)


def test_ready_optimizer_passed_to_plain_trainer_keeps_its_groups(tmp_path):
    model = tiny_peft_classifier()
    optimizer = create_loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=4, weight_decay=0.1)
    record = RecordLr()
    trainer = Trainer(
        model=model, args=arguments(tmp_path, max_steps=3, lr_scheduler_type="constant"),
        train_dataset=TinyDataset(), optimizers=(optimizer, None), callbacks=[record],
    )  # fmt: skip
    trainer.train()
    assert trainer.optimizer.optimizer is optimizer  # wrapped by Accelerate, not rebuilt
    assert record.steps == [{"lora_A": 1e-3, "lora_B": 4e-3, "other": 1e-3, "no_decay": 1e-3}] * 3
    assert group_options(optimizer)["other"] == (1e-3, 0.1)


def test_ready_optimizer_passed_to_loraplus_trainer_is_used_as_given(tmp_path):
    model = tiny_peft_classifier()
    optimizer = create_loraplus_optimizer(model, torch.optim.SGD, lr=0.1, loraplus_lr_ratio=2)
    args = arguments(tmp_path, LoraPlusTrainingArguments)
    trainer = LoraPlusTrainer(model=model, args=args, optimizers=(optimizer, None))
    assert trainer.create_optimizer() is optimizer
    assert group_options(optimizer)["lora_B"] == (0.2, 0.0)


@pytest.mark.parametrize("key", ["params", "model", "optimizer_dict"])
def test_optimizer_that_builds_its_own_params_raises(tmp_path, key):
    model = tiny_peft_classifier()
    own_params = (torch.optim.AdamW, {key: list(model.parameters())})
    trainer = LoraPlusTrainer(model=model, args=arguments(tmp_path), optimizer_cls_and_kwargs=own_params)
    with pytest.raises(ValueError, match=rf"builds its own parameter groups \(\['{key}'\]\)"):
        trainer.create_optimizer()


def test_optimizer_factory_raises(tmp_path):
    """transformers calls a non-Optimizer ``optimizer_cls`` as a factory, ``cls()(model, **kwargs)``: no groups."""

    class Factory:
        def __call__(self, model, **kwargs):
            return torch.optim.AdamW(model.parameters(), **kwargs)

    args = arguments(tmp_path)
    trainer = LoraPlusTrainer(model=tiny_peft_classifier(), args=args, optimizer_cls_and_kwargs=(Factory, {}))
    with pytest.raises(ValueError, match="builds its own parameter groups"):
        trainer.create_optimizer()


def test_bnb_8bit_via_trainer_keeps_embeddings_32_bit(tmp_path, monkeypatch):
    """HF's ``adamw_bnb_8bit`` passes bitsandbytes' AdamW with optim_bits=8; embeddings must stay 32-bit."""
    calls = []
    manager = types.SimpleNamespace(register_module_override=lambda *a: calls.append(a))
    bnb = types.ModuleType("bitsandbytes")
    bnb.optim = types.SimpleNamespace(GlobalOptimManager=types.SimpleNamespace(get_instance=lambda: manager))
    monkeypatch.setitem(sys.modules, "bitsandbytes", bnb)

    class AdamW(torch.optim.AdamW):
        __module__ = "bitsandbytes.optim.adamw"

        def __init__(self, params, lr=1e-3, optim_bits=32, **kwargs):
            super().__init__(params, lr=lr, **kwargs)

    torch.manual_seed(0)
    model = _peft(EmbedLinear(), target_modules=["emb", "out"])
    args = arguments(tmp_path)
    trainer = LoraPlusTrainer(model=model, args=args, optimizer_cls_and_kwargs=(AdamW, {"optim_bits": 8}))
    assert isinstance(trainer.create_optimizer(), AdamW)
    assert calls == [(model.base_model.model.emb.base_layer, "weight", {"optim_bits": 32})]


# --------------------------------------------------------------------------- LoraPlusTrainingArguments


def test_training_arguments_validate_and_convert(tmp_path):
    args = arguments(tmp_path, LoraPlusTrainingArguments, loraplus_lr_ratio="8", loraplus_lr_embedding="1e-6")
    assert (args.loraplus_lr_ratio, args.loraplus_lr_embedding) == (8.0, 1e-6)
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be > 0, got -2.0"):
        arguments(tmp_path, LoraPlusTrainingArguments, loraplus_lr_ratio=-2.0)
    with pytest.raises(ValueError, match="loraplus_lr_embedding must be finite, got nan"):
        arguments(tmp_path, LoraPlusTrainingArguments, loraplus_lr_embedding=float("nan"))


def test_training_arguments_from_command_line(tmp_path):
    parser = HfArgumentParser(LoraPlusTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--loraplus_lr_ratio", "8", "--loraplus_lr_embedding", "1e-6", "--use_cpu"]
    )
    assert (args.loraplus_lr_ratio, args.loraplus_lr_embedding) == (8.0, 1e-6)
    (default,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path)])
    assert (default.loraplus_lr_ratio, default.loraplus_lr_embedding) == (16.0, None)


def test_trainer_warns_that_an_adaptive_optimizer_ignores_the_ratio(tmp_path):
    """Prodigy-like classes set their own step size: the Trainer path warns as create_loraplus_optimizer does."""
    import warnings

    import torch
    from transformers import TrainingArguments

    from loraplus import LoraPlusTrainer
    from tiny_models import TINY_MODELS

    class Prodigy(torch.optim.AdamW):
        pass

    model = TINY_MODELS["peft_linear"].build()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = LoraPlusTrainer(model=model, args=args, optimizer_cls_and_kwargs=(Prodigy, {"lr": 1.0}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.create_optimizer()
    assert any("Prodigy adapts its own step size" in str(w.message) for w in caught)
