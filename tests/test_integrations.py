"""Other training stacks keep lr_B / lr_A = λ: TRL's SFTTrainer, a plain PyTorch loop (the shipped example), and
PyTorch Lightning (``loraplus.lightning``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from loraplus import LoraPlusMixin, LoraPlusTrainingArguments, create_loraplus_optimizer

from conftest import make_rows
from test_hf import RecordLr, TinyDataset, tiny_peft_classifier

ROOT = Path(__file__).resolve().parents[1]


def lora_b(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


def assert_ratio_every_step(steps: list[dict[str, float]], ratio: float, *, min_checked: int = 2) -> None:
    """lr_B / lr_A = ``ratio`` at every step where lr_A > 0, and at least ``min_checked`` such steps."""
    checked = [step for step in steps if step["lora_A"] > 0]
    assert len(checked) >= min_checked, f"only {len(checked)} steps with lr_A > 0 among {len(steps)}"
    for step in checked:
        assert step["lora_B"] / step["lora_A"] == pytest.approx(ratio, rel=1e-12)


# --------------------------------------------------------------------------- TRL SFTTrainer


@pytest.fixture
def sft_setup(tiny_llama_dir, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from conftest import make_rows

    texts = [f"classify this text as one of sport , tech , money . {text} answer : {label}" for text, label in make_rows(8)]
    config = SFTConfig(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, max_length=32,
        report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    return {
        "model": AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
        "processing_class": AutoTokenizer.from_pretrained(tiny_llama_dir),
        "train_dataset": Dataset.from_dict({"text": texts}),
        "args": config,
        "peft_config": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    }


def test_trl_sft_trainer_with_the_mixin_keeps_the_ratio(sft_setup):
    from trl import SFTTrainer

    class LoraPlusSFTTrainer(LoraPlusMixin, SFTTrainer):
        pass

    record = RecordLr()
    trainer = LoraPlusSFTTrainer(**sft_setup, callbacks=[record], loraplus_lr_ratio=8)
    before = lora_b(trainer.model)
    trainer.train()
    assert {g["name"] for g in trainer.optimizer.param_groups} == {"lora_A", "lora_B"}
    assert_ratio_every_step(record.steps, 8.0)
    assert all(not torch.equal(before[n], p) for n, p in lora_b(trainer.model).items())  # B trained


def test_trl_sft_trainer_with_a_ready_loraplus_optimizer(sft_setup):
    from peft import get_peft_model
    from trl import SFTTrainer

    model = get_peft_model(sft_setup.pop("model"), sft_setup.pop("peft_config"))
    optimizer = create_loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=4)
    record = RecordLr()
    trainer = SFTTrainer(model=model, **sft_setup, optimizers=(optimizer, None), callbacks=[record])
    trainer.train()
    assert trainer.optimizer.optimizer is optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer is optimizer
    assert_ratio_every_step(record.steps, 4.0)


def test_trl_dpo_trainer_with_the_mixin_keeps_the_ratio_and_trains_b(tiny_llama_dir, tmp_path):
    """Preference training: LoRA+ reaches TRL's DPOTrainer through the mixin (lr_B / lr_A = λ at every step, B moves)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    class LoraPlusDPOTrainer(LoraPlusMixin, DPOTrainer):
        pass

    rows = {"prompt": [f"classify this text as one of sport , tech , money . {t} answer :" for t, _ in make_rows(4)]}
    rows["chosen"] = [f" {label}" for _, label in make_rows(4)]
    rows["rejected"] = [" money" if label != "money" else " tech" for _, label in make_rows(4)]
    args = DPOConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
                     max_length=48, report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no",
                     disable_tqdm=True, seed=0)  # fmt: skip
    record = RecordLr()
    trainer = LoraPlusDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), args=args,
        processing_class=AutoTokenizer.from_pretrained(tiny_llama_dir), train_dataset=Dataset.from_dict(rows),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        callbacks=[record], loraplus_lr_ratio=8,
    )  # fmt: skip
    before = lora_b(trainer.model)
    trainer.train()
    assert {g["name"] for g in trainer.optimizer.param_groups} == {"lora_A", "lora_B"}
    assert_ratio_every_step(record.steps, 8.0, min_checked=3)
    assert all(not torch.equal(before[n], p) for n, p in lora_b(trainer.model).items())  # B trained


def test_trl_refuses_loraplus_training_arguments_instead_of_dropping_them(sft_setup, tmp_path):
    """SFTTrainer rebuilds a TrainingArguments subclass as SFTConfig: the LoRA+ fields fail loudly (TypeError)."""
    from trl import SFTTrainer

    sft_setup["args"] = LoraPlusTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(TypeError, match="loraplus_lr"):
        SFTTrainer(**sft_setup)


def test_mixin_keyword_beats_args_and_is_validated(tmp_path):
    from transformers import Trainer

    from test_hf import arguments

    class MyTrainer(LoraPlusMixin, Trainer):
        pass

    args = arguments(tmp_path, LoraPlusTrainingArguments, loraplus_lr_ratio=10)
    assert MyTrainer(model=tiny_peft_classifier(), args=args).loraplus_config.loraplus_lr_ratio == 10
    trainer = MyTrainer(model=tiny_peft_classifier(), args=args, loraplus_lr_ratio=3, loraplus_lr_other=5e-4)
    groups = {g["name"]: g["lr"] for g in trainer.create_optimizer().param_groups}
    assert groups == {"lora_A": 1e-3, "lora_B": pytest.approx(3e-3), "other": 5e-4, "no_decay": 5e-4}
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be > 0, got -2"):
        MyTrainer(model=tiny_peft_classifier(), args=args, loraplus_lr_ratio=-2)


# --------------------------------------------------------------------------- plain PyTorch loop (the example)


def test_plain_pytorch_loop_example_trains_with_loraplus(capsys):
    """The example as shipped, on the built-in minilm-l6 and bbc-news (a random tiny BERT learns nothing in 30
    steps), shortened: 20 steps of 8 at 32 tokens."""
    spec = importlib.util.spec_from_file_location("train_loop", ROOT / "examples" / "pytorch" / "train_loop.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--steps", "20", "--batch-size", "8", "--max-length", "32", "--lr", "2e-3"])
    groups = {g["name"]: g["initial_lr"] for g in result["optimizer"].param_groups}
    assert groups["lora_A"] == 2e-3 and groups["lora_B"] == pytest.approx(16 * 2e-3)
    losses = result["losses"]
    assert len(losses) == 20 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # ln 5 = 1.61 at the start
    assert result["test_accuracy"] > 0.4  # 5 balanced classes: chance is 0.2
    assert "test accuracy" in capsys.readouterr().out


# --------------------------------------------------------------------------- PyTorch Lightning


def test_lightning_configure_optimizers_keeps_the_ratio(tmp_path):
    import lightning as L

    from loraplus.lightning import loraplus_optimizers

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_peft_classifier()

        def training_step(self, batch, batch_idx):
            return self.model(batch["x"], batch["labels"])["loss"]

        def configure_optimizers(self):
            return loraplus_optimizers(self, lr=1e-3, loraplus_lr_ratio=8, weight_decay=0.1, warmup_steps=2,
                                       num_training_steps=self.trainer.estimated_stepping_batches)  # fmt: skip

    class Record(L.Callback):
        def __init__(self):
            self.steps = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.steps.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    module, record = Module(), Record()
    before = lora_b(module)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                        default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(TinyDataset(), batch_size=4))
    assert len(record.steps) == 6
    assert [s["lora_A"] for s in record.steps] == pytest.approx([1e-3 * f for f in (0.5, 1, 0.75, 0.5, 0.25, 0)])
    assert_ratio_every_step(record.steps, 8.0)
    decay = {g["name"]: g["weight_decay"] for g in trainer.optimizers[0].param_groups}
    assert decay == {"lora_A": 0.1, "lora_B": 0.1, "other": 0.1, "no_decay": 0.0}
    assert all(not torch.equal(before[n], p) for n, p in lora_b(module).items())


def test_lightning_helper_errors_and_constant_lr():
    from loraplus.lightning import loraplus_optimizers

    module = tiny_peft_classifier()
    assert set(loraplus_optimizers(module, lr=1e-3)) == {"optimizer"}
    with pytest.raises(ValueError, match=r"warmup_steps must be an integer in \[0, num_training_steps=5\), got 5"):
        loraplus_optimizers(module, lr=1e-3, num_training_steps=5, warmup_steps=5)
    with pytest.raises(ValueError, match="num_training_steps must be a positive integer, got 0"):
        loraplus_optimizers(module, lr=1e-3, num_training_steps=0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        loraplus_optimizers(nn.Linear(2, 2).requires_grad_(False), lr=1e-3)
