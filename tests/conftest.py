"""Shared fixtures: a tiny BERT classifier folder and a tiny labelled csv, both built in code (no downloads)."""

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
