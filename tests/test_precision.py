"""Training like a GPU user, on CPU: gradient accumulation, gradient checkpointing, bf16 autocast, gradient
clipping, the device/precision/quantisation options and their refusals; LoRA+ intact in each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraplus.config import TrainConfig
from loraplus.precision import resolve_hardware
from loraplus.tasks import get_task
from loraplus.train import build_trainer, run_train
from test_hf import RecordLr
from test_integrations import assert_ratio_every_step


def causal_config(model_dir, data, out, **overrides) -> TrainConfig:
    """A deterministic tiny causal-LM run: no dropout anywhere (Llama has none; LoRA dropout 0), no warm-up."""
    options = dict(task="causal-lm", model=str(model_dir), dataset=str(data), output_dir=str(out), learning_rate=1e-2,
                   loraplus_lr_ratio=8.0, max_steps=3, batch_size=8, eval_batch_size=16, max_length=32, eval_steps=3,
                   logging_steps=1, lora_dropout=0.0, warmup_ratio=0.0, save_checkpoints=False, seed=0)  # fmt: skip
    return TrainConfig(**{**options, **overrides})


def trained(cfg, callbacks=()):
    data = get_task(cfg.task).load_data(cfg)
    trainer, _, _ = build_trainer(cfg, cfg.model, Path(cfg.output_dir), data, callbacks)
    trainer.train()
    return trainer


def lora_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_accumulated_micro_batches_equal_one_large_batch(tiny_llama_dir, tiny_csv, tmp_path):
    """4 micro-batches of 2 accumulated = 1 batch of 8 (same examples in the same order): parameters within 1e-6."""
    record = RecordLr()
    lr = 1e-3  # Adam's first steps divide by sqrt(v): float32 rounding of near-zero gradients grows with lr
    big = trained(causal_config(tiny_llama_dir, tiny_csv, tmp_path / "a", batch_size=8, learning_rate=lr))
    small = trained(causal_config(tiny_llama_dir, tiny_csv, tmp_path / "b", batch_size=2, gradient_accumulation_steps=4,
                                  learning_rate=lr), [record])  # fmt: skip
    assert small.state.global_step == big.state.global_step == 3
    a, b = lora_params(big.model), lora_params(small.model)
    assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-6
    moved = max(p.abs().max().item() for n, p in a.items() if "lora_B" in n)  # B starts at 0
    assert moved > 1e-4  # the parameters moved far more than the tolerance
    assert len(record.steps) == 3
    assert_ratio_every_step(record.steps, 8.0)  # the linear schedule ends at lr 0: 2 of 3 steps checked


def gradients(model, batch, checkpointing: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama_dir, tiny_csv, tmp_path):
    cfg = causal_config(tiny_llama_dir, tiny_csv, tmp_path / "c", gradient_checkpointing=True)
    data = get_task(cfg.task).load_data(cfg)
    trainer, _, tokenized = build_trainer(cfg, cfg.model, tmp_path / "c", data)
    batch = trainer.data_collator([tokenized["train"][i] for i in range(4)])
    plain, checkpointed = gradients(trainer.model, batch, False), gradients(trainer.model, batch, True)
    assert set(plain) == set(checkpointed) and all(n.count("lora_") for n in plain)
    assert max((plain[n] - checkpointed[n]).abs().max().item() for n in plain) < 1e-6
    assert all(plain[n].abs().sum() > 0 for n in plain if "lora_B" in n)  # B = 0 at init, so B's gradients flow


def test_lora_b_moves_with_checkpointing_and_a_frozen_embedding(tiny_llama_dir, tiny_csv, tmp_path):
    """The failure seen elsewhere: reentrant checkpointing + frozen embeddings leave lora_B at zero. Here it moves."""
    out = tmp_path / "gc"
    run_train(causal_config(tiny_llama_dir, tiny_csv, out, gradient_checkpointing=True, max_steps=1))
    from safetensors.torch import load_file

    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())
    assert json.loads((out / "config.json").read_text())["config"]["gradient_checkpointing"] is True


def test_bf16_autocast_on_cpu_trains_with_float32_lora(tiny_llama_dir, tiny_csv, tmp_path):
    cfg = causal_config(tiny_llama_dir, tiny_csv, tmp_path / "bf16", bf16=True, max_steps=8, eval_steps=8)
    assert resolve_hardware(cfg).precision == "bf16"
    trainer = trained(cfg)
    assert trainer.args.bf16 is True
    assert all(p.dtype == torch.float32 for n, p in trainer.model.named_parameters() if "lora_" in n)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 8 and losses[-1] < losses[0]


class ClippedNorm(RecordLr):
    """Records the gradient norm of the trainable parameters right before each optimizer step (after clipping)."""

    def __init__(self):
        super().__init__()
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def test_max_grad_norm_bounds_the_norm(tiny_llama_dir, tiny_csv, tmp_path):
    clipped = ClippedNorm()
    trained(causal_config(tiny_llama_dir, tiny_csv, tmp_path / "clip", max_grad_norm=1e-3), [clipped])
    free = ClippedNorm()
    trained(causal_config(tiny_llama_dir, tiny_csv, tmp_path / "free", max_grad_norm=1e6), [free])
    assert len(clipped.norms) == 3 and max(clipped.norms) <= 1e-3 * (1 + 1e-5)
    assert min(free.norms) > 1e-2  # the unclipped norms are far above the bound


@pytest.mark.parametrize("options", [dict(gradient_accumulation_steps=2), dict(gradient_checkpointing=True),
                                     dict(bf16=True), dict(loraplus_lr_ratio=1.0)])  # fmt: skip
def test_no_empty_parameter_group_in_any_configuration(tiny_llama_dir, tiny_csv, tmp_path, options):
    trainer = trained(causal_config(tiny_llama_dir, tiny_csv, tmp_path / "g", max_steps=1, **options))
    groups = trainer.optimizer.param_groups
    assert [g["name"] for g in groups] == ["lora_A", "lora_B"] and all(g["params"] for g in groups)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without CUDA")
@pytest.mark.parametrize(
    "options, message",
    [
        (dict(fp16=True), r"--fp16 needs a CUDA GPU"),
        (dict(device="cuda"), r"--device cuda: no CUDA GPU is visible"),
        (dict(load_in_4bit=True), r"--load-in-4bit needs a CUDA GPU with bitsandbytes"),
        (dict(load_in_8bit=True), r"--load-in-8bit needs a CUDA GPU with bitsandbytes"),
        (dict(attn_implementation="flash_attention_2"), r"needs the flash_attn package"),
    ],
)
def test_what_this_machine_lacks_is_refused_before_anything_is_written(tiny_llama_dir, tiny_csv, tmp_path, options,
                                                                       message):  # fmt: skip
    cfg = causal_config(tiny_llama_dir, tiny_csv, tmp_path / "no", **options)
    with pytest.raises(ValueError, match=message):
        run_train(cfg)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(gradient_accumulation_steps=0), r"gradient_accumulation_steps must be a positive integer, got 0"),
        (dict(max_grad_norm=0), r"max_grad_norm must be > 0, got 0"),
        (dict(max_grad_norm=-1.0), r"max_grad_norm must be > 0, got -1.0"),
        (dict(device="tpu"), r"device must be one of auto, cpu, cuda, got 'tpu'"),
        (dict(attn_implementation="fast"), r"attn_implementation must be one of sdpa, eager, .*got 'fast'"),
        (dict(bf16=True, fp16=True), r"give --bf16 or --fp16, not both"),
        (dict(load_in_4bit=True, load_in_8bit=True), r"give --load-in-4bit or --load-in-8bit, not both"),
    ],
)
def test_bad_hardware_options_name_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_an_effective_batch_larger_than_the_data_is_refused(tiny_llama_dir, tiny_csv, tmp_path):
    cfg = causal_config(tiny_llama_dir, tiny_csv, tmp_path / "eb", batch_size=8, gradient_accumulation_steps=50)
    with pytest.raises(ValueError, match=r"the effective batch \(8 x 50 accumulation x 1 processes = 400\) is larger"):
        run_train(cfg)


def test_the_run_records_its_device_precision_and_effective_batch(tiny_llama_dir, tiny_csv, tmp_path):
    out = tmp_path / "rec"
    run_train(causal_config(tiny_llama_dir, tiny_csv, out, batch_size=4, gradient_accumulation_steps=2, max_steps=1,
                            threads=1))  # fmt: skip
    assert json.loads((out / "config.json").read_text())["hardware"] == {
        "device": "cpu", "precision": "fp32", "quantization": None, "attn_implementation": "sdpa", "processes": 1,
        "effective_batch_size": 8, "threads": 1, "threads_from": "option"}  # fmt: skip


def test_public_trainer_scales_a_classifier_loss_for_accumulation(tiny_bert_dir, tiny_csv, tmp_path):
    """``LoraPlusTrainer`` with a PEFT sequence classifier (whose loss ignores ``num_items_in_batch``): 4
    accumulated micro-batches of 2 log the loss of one batch of 8, not 4 times it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from loraplus import LoraPlusTrainer, LoraPlusTrainingArguments
    from loraplus.data import load_classification_data

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    train = load_classification_data(str(tiny_csv)).splits["train"].select(range(16))
    train = train.map(lambda b: tokenizer(b["text"], truncation=True, max_length=16), batched=True, remove_columns=["text"])

    def first_loss(batch: int, accumulation: int) -> float:
        torch.manual_seed(0)
        base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3, hidden_dropout_prob=0.0,
                                                                  attention_probs_dropout_prob=0.0)  # fmt: skip
        model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], lora_dropout=0.0))
        args = LoraPlusTrainingArguments(output_dir=str(tmp_path / f"b{batch}"), use_cpu=True, report_to="none",
                                         per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                                         max_steps=1, logging_steps=1, save_strategy="no", disable_tqdm=True,
                                         data_seed=0, seed=0)  # fmt: skip
        trainer = LoraPlusTrainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
        return next(row["loss"] for row in trainer.state.log_history if "loss" in row)

    one, accumulated = first_loss(8, 1), first_loss(2, 4)
    assert accumulated == pytest.approx(one, rel=1e-4)


def test_schedulers_that_need_options_the_cli_lacks_are_refused_up_front():
    with pytest.raises(ValueError, match=r"lr_scheduler_type 'warmup_stable_decay' needs lr_scheduler_kwargs "
                                         r"\(num_decay_steps\), which loraplus does not take; choose one of linear"):  # fmt: skip
        TrainConfig(lr_scheduler_type="warmup_stable_decay")
    with pytest.raises(ValueError, match=r"'cosine_with_min_lr' needs lr_scheduler_kwargs \(min_lr or min_lr_rate\)"):
        TrainConfig(lr_scheduler_type="cosine_with_min_lr")


def test_public_training_arguments_refuse_fp16_on_cpu(tmp_path):
    from loraplus import LoraPlusTrainingArguments

    with pytest.raises(ValueError, match=r"fp16=True needs a GPU .* it would silently train in float32"):
        LoraPlusTrainingArguments(output_dir=str(tmp_path), fp16=True, use_cpu=True)
