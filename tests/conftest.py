"""Shared fixtures: a tiny BERT classifier folder, a tiny Llama folder and a tiny labelled csv, all built in code
(no downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random

import pytest

WORDS = {
    "sport": "match goal team player coach league score win",
    "tech": "software chip data cloud phone computer network code",
    "money": "bank market price stock profit trade tax economy",
}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer BERT (hidden 32) with random weights and a WordPiece tokenizer, saved as safetensors."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws in WORDS.values() for w in ws.split()})
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def make_rows(n_per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short texts of 4-8 words drawn from a class's vocabulary, labelled with the class name."""
    rng = random.Random(seed)
    rows = []
    for label, words in WORDS.items():
        vocab = words.split()
        for _ in range(n_per_class):
            rows.append((" ".join(rng.choice(vocab) for _ in range(rng.randint(4, 8))), label))
    rng.shuffle(rows)
    return rows


@pytest.fixture
def tiny_csv(tmp_path):
    """A csv with columns text,label: 3 classes x 40 rows."""
    import csv

    path = tmp_path / "tiny.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(make_rows(40))
    return path


SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
PROMPT_WORDS = "classify this text as one of answer : , .".split()


def make_tokenizer(extra_words=()):
    """A lower-casing word-level tokenizer that adds BOS (``<s>``) like Llama's; EOS ``</s>``, pad ``<pad>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for ws in WORDS.values() for w in ws.split()} | set(WORDS) | set(PROMPT_WORDS) | set(extra_words))
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer Llama (hidden 32, tied embeddings) with random weights and the word-level tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder
