"""``--task sft``: every data format on a tiny chat Llama, checked by token id (which positions carry loss), packing
without cross-attention, the plain template, the bad inputs, and a whole run with generations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraplus.config import TrainConfig
from loraplus.tasks.sft import _SMOLLM2, PLAIN_TEMPLATE, SFTTask
from loraplus.train import build_trainer, run_train

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = ("system you are a helpful ai assistant named smollm , trained by hugging face user ### instruction : "
         "response add the numbers double it hi yo").split()  # fmt: skip


def make_chat_tokenizer(template: str | None):
    """Word-level, lower-casing; ChatML's markers as special tokens; EOS = ``<|im_end|>`` (as SmolLM2)."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(set(WORDS) | {str(i) for i in range(200)}))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<|im_end|>",
                                        pad_token="<pad>", unk_token="<unk>")  # fmt: skip
    if template:
        tokenizer.chat_template = template
    return tokenizer


def tiny_llama(folder, template):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_chat_tokenizer(template)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    """A tiny Llama whose tokenizer carries SmolLM2-Instruct's ChatML template (so the marked copy is used)."""
    return tiny_llama(tmp_path_factory.mktemp("chat-llama"), _SMOLLM2)


@pytest.fixture(scope="module")
def bare_llama(tmp_path_factory):
    """The same without a chat template."""
    return tiny_llama(tmp_path_factory.mktemp("bare-llama"), None)


def sums(n: int = 30) -> list[tuple[int, int]]:
    return [(i % 9 + 1, (3 * i) % 7 + 1) for i in range(n)]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_file(tmp_path, fmt: str):
    if fmt == "prompt-completion":
        rows = [{"prompt": f"add {a} {b}", "completion": str(a + b)} for a, b in sums()]
    elif fmt == "alpaca":
        rows = [{"instruction": "add the numbers", "input": f"{a} {b}", "output": str(a + b)} for a, b in sums()]
    elif fmt == "messages":
        rows = [{"messages": [{"role": "user", "content": f"add {a} {b}"}, {"role": "assistant", "content": str(a + b)},
                              {"role": "user", "content": "double it"}, {"role": "assistant", "content": str(2 * (a + b))}]}
                for a, b in sums()]  # fmt: skip
    else:  # sharegpt
        rows = [{"conversations": [{"from": "human", "value": f"add {a} {b}"}, {"from": "gpt", "value": str(a + b)}]}
                for a, b in sums()]  # fmt: skip
    return write_rows(tmp_path / f"{fmt}.jsonl", rows)


def sft_config(model_dir, data, out, **overrides) -> TrainConfig:
    options = dict(task="sft", model=str(model_dir), dataset=str(data), output_dir=str(out), max_steps=4, batch_size=4,
                   eval_batch_size=8, max_length=64, eval_steps=4, logging_steps=2, lora_dropout=0.0,
                   learning_rate=5e-3, eval_generate=2, max_new_tokens=4, seed=0)  # fmt: skip
    return TrainConfig(**{**options, **overrides})


def build(cfg):
    data = SFTTask().load_data(cfg)
    trainer, tokenizer, tokenized = build_trainer(cfg, cfg.model, Path(cfg.output_dir), data)
    return trainer, tokenizer, tokenized


def loss_tokens(trainer, tokenizer, index: int = 0) -> tuple[list[str], list[str]]:
    """(all tokens, tokens that carry loss) of training example ``index`` as the Trainer's collator gives it."""
    batch = trainer.data_collator([trainer.train_dataset[index]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    return tokenizer.convert_ids_to_tokens(ids.tolist()), tokenizer.convert_ids_to_tokens(ids[labels != -100].tolist())


def first_example(trainer, tokenizer) -> list[str]:
    return tokenizer.convert_ids_to_tokens(trainer.train_dataset[0]["input_ids"])


@pytest.mark.parametrize("fmt", ["prompt-completion", "alpaca", "sharegpt"])
def test_single_turn_formats_put_loss_on_the_answer_only(chat_llama, tmp_path, fmt):
    trainer, tokenizer, _ = build(sft_config(chat_llama, data_file(tmp_path, fmt), tmp_path / "run"))
    tokens, loss = loss_tokens(trainer, tokenizer)
    assert tokens[:2] == ["<|im_start|>", "system"] and tokens[-4:-2] == ["<|im_start|>", "assistant"]
    assert loss == [tokens[-2], "<|im_end|>"] and tokens[-2].isdigit()  # the sum, then the end of the turn


def test_every_assistant_turn_of_a_chat_carries_loss(chat_llama, tmp_path):
    trainer, tokenizer, _ = build(sft_config(chat_llama, data_file(tmp_path, "messages"), tmp_path / "run"))
    tokens, loss = loss_tokens(trainer, tokenizer)
    answers = [tokens[i + 2] for i in range(len(tokens) - 2) if tokens[i : i + 2] == ["<|im_start|>", "assistant"]]
    assert len(answers) == 2 and int(answers[1]) == 2 * int(answers[0])
    assert loss == [answers[0], "<|im_end|>", answers[1], "<|im_end|>"]


def test_train_on_prompt_puts_loss_on_every_token(chat_llama, tmp_path):
    cfg = sft_config(chat_llama, data_file(tmp_path, "messages"), tmp_path / "run", train_on_prompt=True)
    trainer, tokenizer, _ = build(cfg)
    tokens, loss = loss_tokens(trainer, tokenizer)
    assert loss == tokens


def test_a_model_without_a_template_gets_the_plain_one(bare_llama, tmp_path):
    with pytest.warns(UserWarning, match="no chat template: using the plain"):
        trainer, tokenizer, _ = build(sft_config(bare_llama, data_file(tmp_path, "messages"), tmp_path / "run"))
    assert tokenizer.chat_template == PLAIN_TEMPLATE
    tokens, loss = loss_tokens(trainer, tokenizer)
    assert tokens[:3] == ["###", "instruction", ":"]
    assert [t for t in loss if t != "<|im_end|>"] == [t for t in loss if t.isdigit()] and len(loss) == 4


def test_packed_examples_do_not_attend_to_each_other(chat_llama, tmp_path):
    cfg = sft_config(chat_llama, data_file(tmp_path, "prompt-completion"), tmp_path / "run", packing=True,
                     max_length=128)  # fmt: skip
    trainer, tokenizer, _ = build(cfg)
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) >= 2 and "attention_mask" not in batch  # several examples in one row, padding-free
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        second = batch["input_ids"][0, starts[1] : starts[2] if len(starts) > 2 else None]
        alone = model(input_ids=second[None], use_cache=False).logits[0]
    assert torch.allclose(packed[starts[1] : starts[1] + len(second)], alone, atol=1e-5)


def test_examples_without_room_for_an_answer_are_dropped_and_counted(chat_llama, tmp_path):
    rows = [{"prompt": "add " + " ".join(["1"] * 40), "completion": "2"}] * 1 + [
        {"prompt": f"add {a} {b}", "completion": str(a + b)} for a, b in sums()]  # fmt: skip
    cfg = sft_config(chat_llama, write_rows(tmp_path / "long.jsonl", rows), tmp_path / "run", max_length=40)
    trainer, _, tokenized = build(cfg)
    lengths = trainer.loraplus_task_summary["lengths"]
    assert sum(s["dropped_no_answer_room"] for s in lengths.values()) == 1
    assert sum(len(split) for split in tokenized.values()) == len(rows) - 1


def test_max_length_too_short_for_every_prompt_is_refused(chat_llama, tmp_path):
    cfg = sft_config(chat_llama, data_file(tmp_path, "alpaca"), tmp_path / "run", max_length=10)
    with pytest.raises(ValueError, match="max_length=10 leaves no answer token in any example of the 'train' split"):
        build(cfg)


def test_messages_with_a_template_lacking_markers_is_refused(chat_llama, tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    cfg = sft_config(chat_llama, data_file(tmp_path, "messages"), tmp_path / "run", chat_template=str(template))
    with pytest.raises(ValueError, match=r"needs a chat template with \{% generation %\} markers.*--train-on-prompt"):
        build(cfg)


def test_a_template_that_fails_names_the_example(chat_llama, tmp_path):
    template = tmp_path / "bad.jinja"
    template.write_text("{{ raise_exception('no') }}")
    cfg = sft_config(chat_llama, data_file(tmp_path, "alpaca"), tmp_path / "run", chat_template=str(template))
    with pytest.raises(ValueError, match="the chat template failed on example 0 of the 'train' split"):
        build(cfg)


@pytest.mark.parametrize("option", [{"packing": True}, {"train_on_prompt": True}, {"format": "alpaca"}])
def test_sft_options_are_refused_for_other_tasks(option):
    with pytest.raises(ValueError, match="applies to --task sft only"):
        TrainConfig(**option)


def test_a_whole_sft_run_writes_metrics_and_generations(chat_llama, tmp_path):
    cfg = sft_config(chat_llama, data_file(tmp_path, "alpaca"), tmp_path / "run", max_steps=8, eval_steps=8)
    metrics = run_train(cfg)
    assert metrics["test"]["perplexity"] == pytest.approx(torch.tensor(metrics["test"]["loss"]).exp().item(), rel=1e-6)
    assert metrics["generation"]["test"]["num_examples"] == 2 and 0 <= metrics["generation"]["test"]["rougeL"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"split", "prompt", "reference", "output"}
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["reference"].isdigit()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["chat_template"] == "the model's own, with generation markers added"
    assert saved["labels"] is None and (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    assert [r["step"] for r in history if "eval_loss" in r] == [8]  # the last step's validation is reused, not rerun


def test_generate_reloads_the_run_and_repeats_its_greedy_output(chat_llama, tmp_path, capsys):
    """`loraplus generate` on the run folder gives the same greedy reply as the run's own end-of-run generation."""
    from loraplus.cli import main
    from loraplus.generate import GenerateCommand

    cfg = sft_config(chat_llama, data_file(tmp_path, "alpaca"), tmp_path / "run", max_steps=8, eval_steps=8)
    run_train(cfg)
    first = json.loads((tmp_path / "run" / "generations.jsonl").read_text().splitlines()[0])
    message = first["prompt"][0]["content"]
    result = GenerateCommand(adapter=str(tmp_path / "run"), prompt=message, max_new_tokens=4).run()
    assert result["output"] == first["output"]
    assert main(["generate", "--adapter", str(tmp_path / "run"), "--max-new-tokens", "4", message]) == 0
    assert capsys.readouterr().out.endswith(first["output"] + "\n")


def test_generate_refuses_a_classification_run_and_a_folder_without_adapter(tiny_bert_dir, tiny_csv, tmp_path):
    from loraplus.generate import GenerateCommand

    run = tmp_path / "cls"
    run_train(TrainConfig(model=str(tiny_bert_dir), dataset=str(tiny_csv), output_dir=str(run), max_steps=2,
                          batch_size=8, max_length=16, target_modules=("query", "value"), eval_steps=2))  # fmt: skip
    with pytest.raises(ValueError, match="is a SEQ_CLS adapter, not a causal LM.s .* it cannot generate text"):
        GenerateCommand(adapter=str(run), prompt="hi").run()
    empty = tmp_path / "unfinished"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds no adapter/ and no model weights"):
        GenerateCommand(adapter=str(empty), prompt="hi").run()
    with pytest.raises(ValueError, match="give the prompt"):
        GenerateCommand(adapter=str(run), prompt=" ")


def test_a_merged_sft_run_keeps_its_chat_template_and_replies_the_same(bare_llama, tmp_path):
    """merge saves the run's tokenizer (the plain template it trained with); generate on the merged folder repeats
    the run's greedy reply."""
    from loraplus.adapters import MergeCommand
    from loraplus.generate import GenerateCommand

    with pytest.warns(UserWarning, match="no chat template"):
        run_train(sft_config(bare_llama, data_file(tmp_path, "alpaca"), tmp_path / "run", max_steps=8, eval_steps=8))
    MergeCommand(adapter=str(tmp_path / "run"), out=str(tmp_path / "merged")).run()
    first = json.loads((tmp_path / "run" / "generations.jsonl").read_text().splitlines()[0])
    message = first["prompt"][0]["content"]
    merged = GenerateCommand(adapter=str(tmp_path / "merged"), prompt=message, max_new_tokens=4).run()
    assert merged["source"].startswith("model ") and merged["output"] == first["output"]
